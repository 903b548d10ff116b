"""Stage 5 (`sml report`): one readable report of a run folder, or a side-by-side comparison of several.

    make_report(["runs/a"])                        # runs/a/report.md, runs/a/report.html, runs/a/plots/*.png
    make_report(["runs/a", "runs/b"], "runs/cmp")  # runs/cmp/report.md, ...: ablations and seeds side by side

Every part of a run folder may be absent (a stage not run yet, a run stopped part-way): the report shows what
exists, says what is missing, and prints "n/a" for a number it cannot find. The report is built once as a list
of blocks (heading, paragraph, table, list, image, code) and rendered twice, to Markdown and to one
self-contained HTML file (inline CSS, plots as base64 PNG), so the two cannot disagree.

What is read, and who writes it:
    summary.json                          accuracy per model and dataset, stages, config    pipeline
    eval/<model>/<dataset>/metrics.json   and predictions.jsonl (response lengths)          evaluate.run_eval
    eval/sml_best_of_n/<dataset>/         rerank_metrics.json, rerank.jsonl                 reward.run_rerank
    rationales.sqlite                     counts per tier, pairs, leaks (rationale_stats)   rationales
    reward/run.json                       held-out pairwise accuracy, per tier gap, scores  reward
    reward/validity.json, validity_samples.jsonl   AUROC of the score vs the checker   validity
    ppo/metrics.jsonl, ppo/run.json       one row per PPO iteration (+ eval rows), status   ppo.trainer
    ppo_checker/metrics.jsonl, run.json   the same, PPO against the answer checker          ppo.trainer
    stages.json, summary.json "refused"   why PPO's gate refused (no SML row then)          pipeline

The modules, in the order the work flows: `config` (ReportConfig), `runs` (reading a run folder), `signals`
(PPO's failure signatures), `blocks` (the blocks, their Markdown and HTML, number formatting), `plots`,
`validity` and `ppo_signals` (the reward validity and PPO optimisation-signal parts), `paired` (paired tests),
`single` (one run's report), `compare` (several runs side by side).
"""

from __future__ import annotations

from pathlib import Path

from .blocks import Image, fmt_cell, render_html, render_markdown
from .compare import compare_report
from .config import ReportConfig
from .runs import MODELS, Run, label_runs, load_published, load_run
from .signals import Signal, failure_signatures, _thresholds
from .answer_classes import favourite_answer
from .single import facts, single_report

__all__ = ["MODELS", "ReportConfig", "Run", "Signal", "facts", "failure_signatures", "favourite_answer", "fmt_cell",
           "load_published", "load_run", "make_report", "run_report"]


def make_report(run_dirs: list[str], out: str | None = None, **settings) -> dict:
    """Write the report of one run folder, or the comparison of several; returns the paths written."""
    return run_report(ReportConfig(runs=list(run_dirs), out=out, **settings))


def run_report(config: ReportConfig) -> dict:
    """Read the run folders; write report.md, report.html and plots/*.png; return paths, gaps, flags."""
    published = load_published()
    unknown = [k for k in config.published if k not in published["rows"]]
    if unknown:
        raise ValueError(f"unknown published row(s) {unknown}; known: {sorted(published['rows'])}")
    for r in config.runs:
        if not Path(r).is_dir():
            raise FileNotFoundError(f"run folder not found: {r}")
    runs = [load_run(r) for r in config.runs]
    if len(runs) == 1:
        out = Path(config.out) if config.out else runs[0].path
        title, blocks = single_report(runs[0], published, config, out / "plots")
        return _write(out, title, blocks, runs, config)
    label_runs(runs)
    out = Path(config.out) if config.out else runs[0].path / "compare"
    title, blocks = compare_report(runs, published, config, out / "plots")
    return _write(out, title, blocks, runs, config)


def _write(out: Path, title: str, blocks: list, runs: list, config: ReportConfig) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    md_path, html_path = out / "report.md", out / "report.html"
    md_path.write_text(render_markdown(title, blocks, out))
    html_path.write_text(render_html(title, blocks))
    plots = [str(b.path) for b in blocks if isinstance(b, Image)]
    return {
        "markdown": str(md_path),
        "html": str(html_path),
        "plots": plots,
        "missing": {r.name: r.missing for r in runs},
        "signals": {r.name: [s.message for s in failure_signatures(r.ppo_log, **_thresholds(config))]
                    for r in runs},
    }
