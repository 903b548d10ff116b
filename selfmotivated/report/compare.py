"""Several run folders side by side: ablations, seeds, datasets."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

from .blocks import (
    Bullets, Heading, Image, Para, Table, fmt_cell, _has, _model_keys, num, _published_cells,
    _published_label, _published_shown, _published_sources,
)
from .config import ReportConfig
from .plots import compare_plot
from .runs import MODELS, Run, _get
from .signals import failure_signatures, _thresholds
from .answer_classes import spoken
from .single import habit_rows, ppo_overview


def _flatten(data, prefix: str = "") -> dict:
    if not isinstance(data, dict):
        return {prefix: data}
    out = {}
    for k, v in data.items():
        out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
    return out


def compare_report(runs: list[Run], published: dict, config: ReportConfig,
                   plot_dir: Path) -> tuple[str, list]:
    """The title and blocks of a side-by-side comparison of runs (ablations, seeds)."""
    datasets = list(dict.fromkeys(d for r in runs for d in r.datasets))
    blocks = (_compare_runs(runs) + _compare_accuracy(runs, datasets, published, config)
              + _compare_paired(runs) + _compare_training(runs, config))
    blocks.append(Heading(1, "Plots"))
    path = compare_plot(runs, datasets, plot_dir / "accuracy_compare.png") if config.plots else None
    blocks.append(Image(path, "Test accuracy by run, per dataset; error bars: 95% Wilson interval") if path
                  else Para("No accuracy plot (no accuracy yet, or plots off).", "note"))
    blocks.append(Heading(1, "What to look at"))
    items = []
    for d in datasets:
        diffs = [(r.name, 100 * (r.accuracy["sml"][d]["accuracy"] - r.accuracy["sft"][d]["accuracy"]))
                 for r in runs
                 if _has(r.accuracy.get("sml", {}).get(d)) and _has(r.accuracy.get("sft", {}).get(d))]
        if diffs:
            each = ", ".join(f"{n} {v:+.1f}" for n, v in diffs)
            mean = statistics.fmean(v for _, v in diffs)
            items.append(f"SML minus SFT-only on {d}: {each} points (mean {mean:+.1f}; positive in "
                         f"{sum(v > 0 for _, v in diffs)} of {len(diffs)} runs).")
    for r in runs:
        for d in r.datasets:  # a row answering by habit: its accuracy measures the habit, not reasoning
            habits = habit_rows(r, d)
            if habits:
                said = "; ".join(f"{MODELS.get(k, k)} {spoken(top)} in {count} of {n}, against {gold:.0%} of "
                                 "the gold answers" for k, (top, count, n, gold) in habits)
                items.append(f"{r.name}, {d}: answers by habit ({said}): these rows' accuracy mostly measures "
                             "how often the habit matches the gold.")
        items += [f"{r.name}: {s.message}" for s in failure_signatures(r.ppo_log, **_thresholds(config))]
    blocks.append(Bullets(items) if items else Para("Nothing to compare yet.", "note"))
    blocks.append(Heading(1, "Missing"))
    for r in runs:
        gaps = r.missing + r.notes
        blocks += [Heading(2, r.name), Bullets(gaps) if gaps else Para("Nothing missing.")]
    return f"Self-motivated Learning: comparison of {len(runs)} runs", blocks


def _shown_path(path: Path) -> str:
    """Relative to the working folder where it lies below it (committed reports then name no home folder)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path.resolve())


def _compare_runs(runs: list[Run]) -> list:
    """Which runs, and the settings in which their recorded configs differ."""
    rows = [[r.name, _shown_path(r.path), r.config.get("model") or "n/a", ", ".join(r.datasets) or "n/a",
             _stages_done(r), _ppo_status(r)]
            for r in runs]
    header = ["run", "folder", "base model", "datasets", "stages done", "PPO"]
    blocks = [Heading(1, "Runs"), Table(header, rows)]
    flat = [_flatten(r.config) for r in runs]
    keys = sorted({k for f in flat for k in f})
    differ = [k for k in keys
              if len({json.dumps(f.get(k, "(absent)"), sort_keys=True, default=str) for f in flat}) > 1]
    if not differ:
        return blocks + [Para("The recorded configs do not differ (seeds of one setting, or configs not "
                              "recorded).", "note")]
    shown = 60  # a comparison of unrelated runs could list hundreds
    rows = [[k] + [_short(f.get(k, "(absent)")) for f in flat] for k in differ[:shown]]
    blocks += [Para("Settings that differ between the runs (from each run's config):"),
               Table(["setting"] + [r.name for r in runs], rows)]
    if len(differ) > shown:
        blocks.append(Para(f"... and {len(differ) - shown} more.", "note"))
    return blocks


def _compare_accuracy(runs: list[Run], datasets: list[str], published: dict, config: ReportConfig) -> list:
    """One table per dataset: a row per model, a column per run, and the mean and spread over runs."""
    blocks = [Heading(1, "Test accuracy")]
    note = "Accuracy in %, ± half the width of the 95% Wilson interval, n test questions."
    model_keys = list(dict.fromkeys(k for r in runs for k in _model_keys(r)))
    owners = {d: [r for r in runs if d in r.datasets] for d in datasets}
    if len(runs) > 1 and all(len(o) == 1 for o in owners.values()):
        return blocks + [Para(note, "note")] + _across_datasets(owners, model_keys, published, config)
    blocks.append(Para(note + " 'mean ± sd' is over the runs that have the cell (the spread between runs, e.g. "
                       "seeds).", "note"))
    for d in datasets:
        rows, styles = [], []
        for key in model_keys:
            cells = [r.accuracy.get(key, {}).get(d) for r in runs]
            values = [100 * c["accuracy"] for c in cells if _has(c)]
            if values:
                spread = "n/a"
                if len(values) > 1:
                    spread = f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"
                rows.append([MODELS.get(key, key)] + [fmt_cell(c) for c in cells] + [spread])
                styles.append("")
        for key in _published_shown(config, published, [d]):  # the same reference under every run
            rows.append([_published_label(published["rows"][key], published)]
                        + _published_cells(key, published, [d]) * len(runs) + [""])
            styles.append("published")
        blocks += [Heading(2, d), Table(["model"] + [r.name for r in runs] + ["mean ± sd"], rows, styles)]
    shown = _published_shown(config, published, datasets)
    if shown:
        blocks.append(_published_sources(shown, published))
    return blocks


def _across_datasets(owners: dict[str, list[Run]], model_keys: list[str], published: dict,
                     config: ReportConfig) -> list:
    """Runs on different datasets (one run each): one table, a row per model and a column per dataset, as
    papers lay out their results."""
    datasets = list(owners)
    rows, styles = [], []
    for key in model_keys:
        cells = [owners[d][0].accuracy.get(key, {}).get(d) for d in datasets]
        if any(_has(c) for c in cells):
            rows.append([MODELS.get(key, key)] + [fmt_cell(c) for c in cells])
            styles.append("")
    shown = _published_shown(config, published, datasets)
    for key in shown:
        rows.append([_published_label(published["rows"][key], published)] + _published_cells(key, published, datasets))
        styles.append("published")
    header = ["model"] + [d if owners[d][0].name == d else f"{d} ({owners[d][0].name})" for d in datasets]
    blocks = [Table(header, rows, styles),
              Para("Each dataset comes from one run (its column names the run where the name differs). "
                   "Rows marked 'published' are figures from the papers named, not our runs.", "note")]
    if shown:
        blocks.append(_published_sources(shown, published))
    return blocks


def _compare_paired(runs: list[Run]) -> list:
    """Each run's paired tests of its model rows: a comparison across runs is only as sound as those within."""
    from .paired import paired_blocks

    blocks = []
    for r in runs:
        found = paired_blocks(r)
        if found:
            blocks += [Heading(2, r.name), *found]
    return [Heading(1, "Paired comparisons within each run"), *blocks] if blocks else []


def _compare_training(runs: list[Run], config: ReportConfig) -> list:
    from .validity import _answer_figures

    rows = []
    for r in runs:
        o = ppo_overview(r)
        v = _answer_figures(r, r.validity or {})
        found = {s.name for s in failure_signatures(r.ppo_log, **_thresholds(config))}
        rows.append([r.name, num(_get(r.reward, "metrics", "heldout", "pairwise_accuracy")),
                     num(_get(r.validity, "auroc")), num(_get(r.validity, "within_question_auroc")),
                     num(_get(v, "answer_prior_within_question_auroc")),
                     o["iterations"] or "n/a",
                     num(_get(o, "score", "first")) + " -> " + num(_get(o, "score", "last")),
                     num(_get(o, "kl", "last")), num(_get(o, "entropy", "last")),
                     ", ".join(sorted(found)) or "none"])
    return [Heading(1, "Reward model and PPO"),
            Table(["run", "RM held-out pairwise acc.", "RM validity AUROC", "within a question",
                   "within, stated answer only", "PPO iterations",
                   "PPO score first -> last", "KL last",
                   "entropy last", "failure signatures"], rows)]


def _ppo_status(run: Run) -> str:
    if "ppo" in run.refused:
        return "refused by its gate"
    return ppo_overview(run)["status"] or ("not run" if not run.ppo_log else "n/a")


def _stages_done(run: Run) -> str:
    stages = {k: v for k, v in run.stages.items() if _get(v, "status") != "skipped"}
    if not stages:
        return "n/a"
    return f"{sum(_get(i, 'status') == 'done' for i in stages.values())} of {len(stages)}"


def _short(value, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."
