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
    ppo/metrics.jsonl, ppo/run.json       one row per PPO iteration (+ eval rows), status   ppo.trainer
"""

from __future__ import annotations

import base64
import datetime
import html
import itertools
import json
import logging
import math
import statistics
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)

PUBLISHED_FILE = Path(__file__).parent / "resources" / "published.json"

# Rows of the accuracy table, in order: run-folder key -> what the model is.
MODELS = {
    "base": "base, zero-shot CoT",
    "base_few_shot": "base, few-shot CoT",
    "sft": "SFT on self-generated rationales",
    "sml": "SML (SFT + reward model + PPO)",
    "sml_best_of_n": "SML + best-of-N (reward model picks)",
}
BEST_OF_N = "sml_best_of_n"


@dataclass
class ReportConfig:
    """`sml report`: a report of one run folder, or a comparison of several."""

    runs: list[str] = field(default_factory=list, metadata={
        "help": "run folders: one gives RUN/report.md and RUN/report.html; several give a comparison",
        "cli": False})  # positional on the command line: `sml report RUN [RUN ...]`
    out: str | None = field(default=None, metadata={
        "help": "output folder (default: the run folder itself; for a comparison, <first run>/compare)"})
    published: list[str] = field(default_factory=lambda: ["gpt2_124m_fine_tune_cot", "random"], metadata={
        "help": "published rows shown beside ours (keys of selfmotivated/resources/published.json)"})
    max_kl: float = field(default=20.0, metadata={
        "help": "flag a KL blow-up when KL(policy || SFT) per sequence exceeds this many nats"})
    entropy_drop: float = field(default=0.5, metadata={
        "help": "flag an entropy collapse when the policy's entropy ends below this fraction of its start"})
    min_entropy: float = field(default=0.05, metadata={
        "help": "flag an entropy collapse when the entropy ends below this many nats per token"})
    length_drop: float = field(default=0.5, metadata={
        "help": "flag a length collapse when responses end shorter than this fraction of their start length"})
    accuracy_drop: float = field(default=0.03, metadata={
        "help": "flag reward hacking when test accuracy falls this much (a fraction) below its best while "
                "the reward-model score rises"})
    plots: bool = field(default=True, metadata={
        "help": "draw the PNG plots (off: tables and text only, faster)"})

    def __post_init__(self):
        self.runs = [str(r) for r in self.runs]
        self.published = list(self.published)
        if not self.runs:
            raise ValueError("report needs at least one run folder")
        for name in ("entropy_drop", "length_drop"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"{name} must be between 0 and 1, got {getattr(self, name)}")


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


# ----------------------------------------------------------------------------------------------------
# Reading a run folder (tolerant: a missing or unreadable file becomes a note, never an exception)


@dataclass
class Run:
    path: Path
    name: str
    summary: dict = field(default_factory=dict)
    stages: dict = field(default_factory=dict)  # stage -> {status, seconds, fingerprint}
    config: dict = field(default_factory=dict)  # the resolved pipeline config
    datasets: list = field(default_factory=list)
    accuracy: dict = field(default_factory=dict)  # model key -> dataset -> cell (accuracy, ci95, n, ...)
    lengths: dict = field(default_factory=dict)  # model key -> dataset -> [(new_tokens, finish_reason)]
    answers: dict = field(default_factory=dict)  # model key -> dataset -> [(prediction, gold)] (test outputs)
    rationales: dict | None = None  # rationale_stats
    reward: dict | None = None  # reward/run.json
    best_of_n: dict = field(default_factory=dict)  # dataset -> rerank metrics (+ "config")
    rerank_scores: list = field(default_factory=list)  # (score, correct) of best-of-N samples
    ppo_log: list = field(default_factory=list)
    ppo_run: dict | None = None
    missing: list = field(default_factory=list)
    notes: list = field(default_factory=list)  # files that could not be read


def _read_json(path: Path, notes: list):
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as err:
        notes.append(f"could not read {path}: {err}")
        return None


def _read_jsonl(path: Path, notes: list) -> list[dict]:
    """Rows of a JSONL file; bad lines (a last line cut by a crash) are skipped and counted in a note."""
    if not path.is_file():
        return []
    rows, bad = [], 0
    for line in path.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError:
            bad += 1
            continue
        if isinstance(row, dict):
            rows.append(row)
    if bad:
        notes.append(f"{path}: skipped {bad} unreadable line(s)")
    return rows


def _num(value) -> float | None:
    """A finite number, or None (missing keys, text, NaN all read as 'not available')."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _get(data, *keys, default=None):
    for k in keys:
        if not isinstance(data, dict) or k not in data:
            return default
        data = data[k]
    return data


def _cell(metrics: dict, source: str) -> dict:
    """One accuracy cell from a metrics dict; with only n and accuracy known, the CI is computed (Wilson)."""
    from .evaluate import accuracy_ci95

    acc, n = _num(metrics.get("accuracy")), _num(metrics.get("n"))
    ci = metrics.get("ci95")
    if not (isinstance(ci, (list, tuple)) and len(ci) == 2 and all(_num(c) is not None for c in ci)):
        ci = accuracy_ci95(round(acc * n), int(n)) if acc is not None and n else None
    return {"accuracy": acc, "ci95": list(ci) if ci else None, "n": int(n) if n is not None else None,
            "n_no_answer": _num(metrics.get("n_no_answer")), "source": source}


def load_run(run_dir: str | Path) -> Run:
    """Everything the report needs from one run folder; absent parts are listed in `run.missing`."""
    path = Path(run_dir)
    run = Run(path=path, name=path.resolve().name)
    run.summary = _read_json(path / "summary.json", run.notes) or {}
    if not run.summary:
        run.missing.append("summary.json (the pipeline writes it at the end; the run is going on or stopped "
                           "part-way): numbers below come from the stage folders")
    # The pipeline keeps stages.json and config.yaml up to date from the start, summary.json only at the end.
    stages = run.summary.get("stages") or _read_json(path / "stages.json", run.notes)
    run.stages = stages if isinstance(stages, dict) else {}
    # config.yaml first: the same settings as summary.json's copy, and the file a results folder annotates.
    config = _read_yaml(path / "config.yaml", run.notes) or run.summary.get("config")
    run.config = config if isinstance(config, dict) else {}
    # accuracy: summary.json first, then each evaluation folder for what the summary lacks
    models = _get(run.summary, "models", default={})
    for key, per_dataset in (models.items() if isinstance(models, dict) else []):
        for dataset, metrics in (per_dataset.items() if isinstance(per_dataset, dict) else []):
            if isinstance(metrics, dict):
                run.accuracy.setdefault(key, {})[dataset] = _cell(metrics, "summary.json")
    for model_dir in sorted(p for p in (path / "eval").glob("*") if p.is_dir()):
        for ds_dir in sorted(p for p in model_dir.glob("*") if p.is_dir()):
            _load_eval_folder(run, model_dir.name, ds_dir)
    listed = [d for d in _get(run.summary, "datasets", default=[]) or [] if isinstance(d, str)]
    run.datasets = listed + sorted({d for cells in run.accuracy.values() for d in cells} - set(listed))
    for key, label in MODELS.items():
        if not run.accuracy.get(key):
            why = _not_configured(run, key)
            run.missing.append(f"{label}: not configured in this run ({why})" if why
                               else f"{label}: no evaluation (eval/{key}/)")
    _load_stages(run)
    return run


def _not_configured(run: Run, key: str) -> str | None:
    """Why a row has no numbers by design (the pipeline config turned it off), or None."""
    if key == "base_few_shot" and run.config.get("few_shot_baseline") is False:
        return "few_shot_baseline is off"
    skipped = _get(run.stages, "best_of_n", "status") == "skipped"
    if key == BEST_OF_N and (run.config.get("best_of_n") == 0 or skipped):
        return "best_of_n is 0"
    return None


def _load_eval_folder(run: Run, key: str, folder: Path) -> None:
    """eval/<key>/<dataset>/: response lengths, best-of-N metrics, and the accuracy cell if still missing."""
    dataset, notes = folder.name, run.notes
    rows = _read_jsonl(folder / "predictions.jsonl", notes)
    if rows:
        run.lengths.setdefault(key, {})[dataset] = [
            (r["new_tokens"], r.get("finish_reason")) for r in rows if _num(r.get("new_tokens")) is not None]
        run.answers.setdefault(key, {})[dataset] = [(r.get("prediction"), r.get("gold")) for r in rows]
    rerank = _read_json(folder / "rerank_metrics.json", notes)
    if isinstance(rerank, dict) and isinstance(rerank.get("metrics"), dict):
        run.best_of_n[dataset] = {**rerank["metrics"], "config": rerank.get("config") or {}}
        run.rerank_scores += _rerank_scores(folder / "rerank.jsonl", notes)
    if dataset in run.accuracy.get(key, {}):
        return
    metrics = _read_json(folder / "metrics.json", notes)
    if isinstance(metrics, dict):
        run.accuracy.setdefault(key, {})[dataset] = _cell(metrics, "metrics.json")
    elif dataset in run.best_of_n:
        m = run.best_of_n[dataset]
        run.accuracy.setdefault(key, {})[dataset] = _cell(
            {"accuracy": m.get("best_of_n_accuracy"), "n": m.get("n_questions")}, "rerank_metrics.json")
    elif rows and all("correct" in r and "prediction" in r for r in rows):
        # An evaluation stopped part-way: the predictions so far, no metrics.json yet.
        from .evaluate import summarize

        run.accuracy.setdefault(key, {})[dataset] = {**_cell(summarize(rows), "predictions.jsonl"),
                                                     "partial": True}
        run.missing.append(f"eval/{key}/{dataset}: evaluation unfinished ({len(rows)} predictions, no "
                           "metrics.json); its cell is marked *")


def _why_absent(run: Run, stage: str) -> str:
    """Why a stage's output is not in the folder: it has not run, or it ran and the folder is a copy
    without it (results keep only small files)."""
    name = {"generate": "rationale", "ppo": "PPO"}.get(stage, stage)
    if _get(run.stages, stage, "status") == "done":
        return f"the {name} stage ran (stages.json) but its output is not in this folder"
    return f"the {name} stage has not run"


def _load_stages(run: Run) -> None:
    """Rationale statistics, the reward model record, the PPO log, and the status of every stage."""
    path, notes, missing = run.path, run.notes, run.missing
    run.rationales = _load_rationale_stats(path, run.config, notes)
    if run.rationales is None:
        missing.append(f"rationale store (rationales.sqlite): {_why_absent(run, 'generate')}")
    run.reward = _read_json(path / "reward" / "run.json", notes)
    if run.reward is None:
        missing.append(f"reward model (reward/run.json): {_why_absent(run, 'reward')}")
    elif run.reward.get("status") != "finished":
        missing.append(f"reward model: stage status '{run.reward.get('status', 'unknown')}', not finished")
    if not run.rerank_scores:  # the reward stage's own best-of-N, when the pipeline ran none
        run.rerank_scores = _rerank_scores(path / "reward" / "best_of_n" / "rerank.jsonl", notes)
    run.ppo_log = _read_jsonl(path / "ppo" / "metrics.jsonl", notes)
    run.ppo_run = _read_json(path / "ppo" / "run.json", notes)
    if not run.ppo_log:
        missing.append(f"PPO log (ppo/metrics.jsonl): {_why_absent(run, 'ppo')}")
    if run.ppo_run is None:
        if run.ppo_log:
            missing.append("PPO record (ppo/run.json): PPO is running or was killed before it finished")
    elif run.ppo_run.get("status") != "finished":
        missing.append(f"PPO: stage status '{run.ppo_run.get('status', 'unknown')}', not finished")
    for stage, info in run.stages.items():
        status = _get(info, "status", default="unknown")
        if status == "running":
            missing.append(f"stage {stage}: started, not finished (running now, or stopped part-way)")
        elif status not in ("done", "skipped"):  # skipped: the config asks for nothing in this stage
            missing.append(f"stage {stage}: status '{status}'")


def _rerank_scores(path: Path, notes: list) -> list[tuple[float, bool]]:
    out = []
    for row in _read_jsonl(path, notes):
        scores, correct = row.get("scores"), row.get("correct")
        if isinstance(scores, list) and isinstance(correct, list):
            out += [(s, bool(c)) for s, c in zip(scores, correct) if _num(s) is not None]
    return out


def _read_yaml(path: Path, notes: list) -> dict:
    if not path.is_file():
        return {}
    try:
        import yaml

        data = yaml.safe_load(path.read_text())
    except (OSError, ValueError) as err:  # yaml.YAMLError is a ValueError subclass
        notes.append(f"could not read {path}: {err}")
        return {}
    return data if isinstance(data, dict) else {}


def _load_rationale_stats(path: Path, config: dict, notes: list) -> dict | None:
    from .rationales import STORE_NAME, RankConfig, rationale_stats

    for folder in (path, path / "rationales"):
        if (folder / STORE_NAME).is_file():
            rank = None
            rank_values = config.get("rank")
            if isinstance(rank_values, dict) and rank_values:  # the run's own tier rules
                try:
                    from .config import build_config

                    rank = build_config(RankConfig, rank_values, "the run config's rank section")
                except ValueError as err:
                    notes.append(f"rank settings of the run config not usable ({err}); default tiers used")
            # A store being written, or of another schema, must not cost the rest of the report.
            try:
                return rationale_stats(folder, rank)
            except Exception as err:  # noqa: BLE001
                notes.append(f"could not read the rationale store in {folder}: {err}")
                return None
    # Without the store (a results folder keeps only small files): the statistics the rank stage wrote
    # beside its export, or those of `sml rationales export`.
    for stats_path in (path / "ranked" / "stats.json", path / "rationales" / "stats.json"):
        if stats_path.is_file():
            stats = _read_json(stats_path, notes)
            if isinstance(stats, dict) and "tiers" in stats:
                return stats
    return None


def load_published() -> dict:
    """Published accuracies (%): {"sources": {...}, "rows": {key: {label, source, accuracy}}}."""
    return json.loads(PUBLISHED_FILE.read_text())


def label_runs(runs: list[Run]) -> None:
    """Short distinct names for a comparison: the folder name, with its parent where two names clash."""
    names = [r.path.resolve().name for r in runs]
    for r, name in zip(runs, names):
        r.name = f"{r.path.resolve().parent.name}/{name}" if names.count(name) > 1 else name
    seen: dict = {}
    for r in runs:
        seen[r.name] = seen.get(r.name, 0) + 1
        if seen[r.name] > 1:
            r.name = f"{r.name} ({seen[r.name]})"


# ----------------------------------------------------------------------------------------------------
# Failure signatures of PPO (METHOD.md stage 4), read from the log after the fact


@dataclass
class Signal:
    name: str  # reward_hacking | kl_blowup | entropy_collapse | length_collapse | nan | guard
    step: int | None
    message: str


def _series(rows: list[dict], key: str) -> list[tuple[int, float]]:
    out = []
    for r in rows:
        step, value = _num(r.get("step")), _num(r.get(key))
        if step is not None and value is not None:
            out.append((int(step), value))
    return out


def _ends(values: list[float]) -> tuple[float, float]:
    """Mean of the first and of the last tenth (at least one value): one noisy batch is not a trend."""
    k = max(1, len(values) // 10)
    return statistics.fmean(values[:k]), statistics.fmean(values[-k:])


WATCHED = ("ppo/score_mean", "ppo/reward_mean", "ppo/kl", "ppo/entropy", "losses/policy", "losses/value")


def failure_signatures(rows: list[dict], max_kl: float = 20.0, entropy_drop: float = 0.5,
                       min_entropy: float = 0.05, length_drop: float = 0.5,
                       accuracy_drop: float = 0.03) -> list[Signal]:
    """The failure signatures seen in a PPO log (rows of ppo/metrics.jsonl):

    reward_hacking   test accuracy fell more than `accuracy_drop` below its best while the reward-model
                     score (mean over the iterations within half an evaluation interval) rose above its
                     value at the best
    kl_blowup        KL(policy || reference) per sequence above `max_kl` nats
    entropy_collapse entropy ended below `entropy_drop` x its start, or below `min_entropy`
    length_collapse  mean rollout length ended below `length_drop` x its start
    nan              a non-finite reward, KL, entropy or loss
    guard            the trainer's own guard stopped the run or rolled it back (its note is quoted)
    """
    signals = []
    for key in WATCHED:
        bad = [r for r in rows if isinstance(r.get(key), float) and not math.isfinite(r[key])]
        if bad:
            step = bad[0].get("step")
            signals.append(Signal("nan", step, f"non-finite value: {key} is {bad[0][key]} at step {step}"))
            break

    hacking = _reward_hacking(_series(rows, "ppo/score_mean"), _series(rows, "eval/accuracy"), accuracy_drop)
    if hacking:
        signals.append(hacking)

    kl = _series(rows, "ppo/kl")
    over = [(s, v) for s, v in kl if v > max_kl]
    if over:
        step, value = over[0]
        signals.append(Signal("kl_blowup", step, (
            f"KL blow-up: KL to the SFT model reached {value:.2f} nats per sequence at step {step} "
            f"(threshold {max_kl}); peak {max(v for _, v in kl):.2f}")))

    entropy = [v for _, v in _series(rows, "ppo/entropy")]
    if len(entropy) >= 2:
        first, last = _ends(entropy)
        if last < min_entropy or (first > 0 and last < entropy_drop * first):
            signals.append(Signal("entropy_collapse", None, (
                f"entropy collapse: policy entropy fell from {first:.3f} to {last:.3f} nats per token "
                f"(flagged below {entropy_drop:.0%} of the start or below {min_entropy})")))

    length = [v for _, v in _series(rows, "rollout/response_length")]
    if len(length) >= 2:
        first, last = _ends(length)
        if first > 0 and last < length_drop * first:
            signals.append(Signal("length_collapse", None, (
                f"length collapse: mean response length fell from {first:.1f} to {last:.1f} tokens "
                f"(flagged below {length_drop:.0%} of the start)")))

    for r in rows:
        if r.get("guard/stop") or r.get("guard/rollback"):
            what = "stopped the run" if r.get("guard/stop") else "rolled back"
            note = r.get("note", "no note")
            step = r.get("step")
            signals.append(Signal("guard", step, f"the PPO guard {what} at step {step}: {note}"))
    return signals


def _reward_hacking(scores: list, evals: list, accuracy_drop: float) -> Signal | None:
    """The first evaluation whose accuracy is more than `accuracy_drop` below the best so far while the
    reward-model score around it is above the score around that best."""
    if len(evals) < 2 or not scores:
        return None
    spacing = min((b - a for (a, _), (b, _) in itertools.pairwise(evals) if b > a), default=1)
    half = max(1, spacing // 2)

    def score_near(step: int) -> float | None:
        near = [v for s, v in scores if step - half < s <= step + half]
        return statistics.fmean(near) if near else None

    best_step, best_acc = evals[0]
    for step, acc in evals[1:]:
        if acc < best_acc - accuracy_drop:
            now, then = score_near(step), score_near(best_step)
            if now is not None and then is not None and now > then:
                return Signal("reward_hacking", step, (
                    f"reward hacking: accuracy fell to {100 * acc:.1f}% at step {step} from its best "
                    f"{100 * best_acc:.1f}% (step {best_step}) while the reward-model score rose from "
                    f"{then:.3f} to {now:.3f}"))
        if acc > best_acc:
            best_step, best_acc = step, acc
    return None


def _thresholds(config: ReportConfig) -> dict:
    return {"max_kl": config.max_kl, "entropy_drop": config.entropy_drop, "min_entropy": config.min_entropy,
            "length_drop": config.length_drop, "accuracy_drop": config.accuracy_drop}


# ----------------------------------------------------------------------------------------------------
# Blocks: the report's content, rendered to Markdown and to HTML


@dataclass
class Heading:
    level: int
    text: str


@dataclass
class Para:
    text: str
    style: str = ""  # "" | "note" | "warn"


@dataclass
class Table:
    header: list
    rows: list
    row_styles: list | None = None  # "" or "published" per row


@dataclass
class Bullets:
    items: list


@dataclass
class Code:
    text: str
    summary: str = ""  # HTML shows it folded under this line


@dataclass
class Image:
    path: Path
    caption: str


def render_markdown(title: str, blocks: list, base: Path) -> str:
    def esc(text) -> str:
        return str(text).replace("|", "\\|").replace("\n", " ")

    out = [f"# {title}", ""]
    for b in blocks:
        if isinstance(b, Heading):
            out += ["#" * (b.level + 1) + " " + b.text, ""]
        elif isinstance(b, Para):
            prefix = {"warn": "> **Warning:** ", "note": "> "}.get(b.style, "")
            out += [prefix + b.text, ""]
        elif isinstance(b, Table):
            out.append("| " + " | ".join(esc(h) for h in b.header) + " |")
            out.append("|" + "|".join("---" for _ in b.header) + "|")
            out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in b.rows]
            out.append("")
        elif isinstance(b, Bullets):
            out += [f"- {item}" for item in b.items] + [""]
        elif isinstance(b, Code):
            if b.summary:
                out += [b.summary, ""]
            out += ["```", b.text, "```", ""]
        elif isinstance(b, Image):
            rel = Path(b.path).relative_to(base) if Path(b.path).is_relative_to(base) else Path(b.path)
            out += [f"![{b.caption}]({rel.as_posix()})", "", f"*{b.caption}*", ""]
    return "\n".join(out)


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; max-width: 1150px; margin: 2em auto;
       padding: 0 1em; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #ddd; padding-bottom: .3em; }
h2 { margin-top: 1.8em; border-bottom: 1px solid #eee; padding-bottom: .2em; }
table { border-collapse: collapse; margin: .8em 0; font-size: .92em; }
th, td { border: 1px solid #ccc; padding: .3em .6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
th { background: #f2f2f2; }
tr:nth-child(even) td { background: #fafafa; }
tr.published td { color: #555; font-style: italic; background: #f4f7fb; }
p.note { color: #555; font-size: .92em; }
p.warn { background: #fff4e5; border-left: 4px solid #f0a020; padding: .4em .8em; }
figure { margin: 1em 0; }
figure img { max-width: 100%; border: 1px solid #eee; }
figcaption { color: #555; font-size: .9em; }
pre { background: #f6f8fa; padding: .8em; overflow-x: auto; font-size: .85em; }
"""


def render_html(title: str, blocks: list) -> str:
    """One self-contained page: inline CSS, images as data: URIs, no external asset."""
    e = html.escape
    out = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{e(title)}</title>",
           f"<style>{_CSS}</style></head><body>", f"<h1>{e(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            out.append(f"<h{b.level + 1}>{e(b.text)}</h{b.level + 1}>")
        elif isinstance(b, Para):
            text = e(b.text)
            if b.style == "warn":
                text = "<strong>Warning:</strong> " + text
            out.append(f'<p class="{b.style}">{text}</p>' if b.style else f"<p>{text}</p>")
        elif isinstance(b, Table):
            styles = b.row_styles or [""] * len(b.rows)
            out.append("<table><thead><tr>" + "".join(f"<th>{e(str(h))}</th>" for h in b.header)
                       + "</tr></thead><tbody>")
            for row, style in zip(b.rows, styles):
                cls = f' class="{style}"' if style else ""
                out.append(f"<tr{cls}>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>")
            out.append("</tbody></table>")
        elif isinstance(b, Bullets):
            out.append("<ul>" + "".join(f"<li>{e(str(i))}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Code):
            pre = f"<pre>{e(b.text)}</pre>"
            out.append(f"<details><summary>{e(b.summary)}</summary>{pre}</details>" if b.summary else pre)
        elif isinstance(b, Image):
            data = base64.b64encode(Path(b.path).read_bytes()).decode("ascii")
            out.append(f'<figure><img src="data:image/png;base64,{data}" alt="{e(b.caption)}">'
                       f"<figcaption>{e(b.caption)}</figcaption></figure>")
    out.append("</body></html>")
    return "\n".join(out) + "\n"


# ----------------------------------------------------------------------------------------------------
# Formatting


def pct(x) -> str:
    """A fraction as a percentage with one decimal, or n/a."""
    x = _num(x)
    return "n/a" if x is None else f"{100 * x:.1f}"


def num(x, digits: int = 3) -> str:
    x = _num(x)
    return "n/a" if x is None else f"{x:.{digits}f}"


def fmt_cell(cell: dict | None) -> str:
    """'41.3 ±4.1 (n=150)': accuracy in %, ± half the width of the 95% interval, number of questions."""
    if not cell or cell.get("accuracy") is None:
        return "n/a"
    text = pct(cell["accuracy"])
    ci = cell.get("ci95")
    if ci:
        text += f" ±{100 * (ci[1] - ci[0]) / 2:.1f}"
    if cell.get("n") is not None:
        text += f" (n={cell['n']})"
    return text + ("*" if cell.get("partial") else "")


def fmt_seconds(s) -> str:
    s = _num(s)
    if s is None:
        return "n/a"
    if s < 60:
        return f"{s:.1f} s"
    h, rest = divmod(round(s), 3600)
    m, sec = divmod(rest, 60)
    return f"{h}h {m:02d}m {sec:02d}s" if h else f"{m}m {sec:02d}s"


def _published_label(row: dict, published: dict) -> str:
    source = published["sources"].get(row.get("source"), {})
    return f"{row['label']}, published ({source.get('short', row.get('source', '?'))})"


def _published_sources(keys: list[str], published: dict) -> Para:
    """The full reference of each source behind the published rows shown."""
    used = dict.fromkeys(published["rows"][k]["source"] for k in keys)
    parts = []
    for name in used:
        src = published["sources"].get(name, {})
        parts.append(f"{src.get('short', name)}: {src.get('citation', '')}; figures from "
                     f"{src.get('where', '?')}. {src.get('note', '')}")
    return Para("Published rows: " + " ".join(parts), "note")


def _model_keys(run: Run) -> list[str]:
    return list(MODELS) + sorted(k for k in run.accuracy if k not in MODELS)


def _overlap(a: dict, b: dict) -> bool | None:
    if not (a.get("ci95") and b.get("ci95")):
        return None
    return a["ci95"][0] <= b["ci95"][1] and b["ci95"][0] <= a["ci95"][1]


# ----------------------------------------------------------------------------------------------------
# Plots (matplotlib's object API on an Agg canvas: no pyplot, no global figure state, no display needed)

COLORS = {"base": "#a0a0a0", "base_few_shot": "#5f5f5f", "sft": "#4c72b0", "sml": "#dd8452",
          "sml_best_of_n": "#55a868"}
SHORT = {"base": "base\nzero-shot", "base_few_shot": "base\nfew-shot", "sft": "SFT", "sml": "SML",
         "sml_best_of_n": "SML\nbest-of-N"}
_PUBLISHED_STYLES = [("black", "-"), ("#7b3294", ":"), ("#008837", "-.")]


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _bar_values(cell: dict | None) -> tuple[float, float, float] | None:
    """(accuracy %, distance down to the CI's low end, up to its high end) for error bars."""
    if not cell or cell.get("accuracy") is None:
        return None
    y = 100 * cell["accuracy"]
    lo, hi = cell.get("ci95") or (cell["accuracy"], cell["accuracy"])
    return y, max(0.0, y - 100 * lo), max(0.0, 100 * hi - y)


def accuracy_plot(run: Run, published: dict, published_keys: list[str], path: Path) -> Path | None:
    """Grouped bars: one group per dataset, one bar per model, 95% CI error bars; published rows as lines.
    Many datasets wrap onto several rows of panels, so the figure stays readable at page width."""
    keys = [k for k in _model_keys(run) if any(_bar_values(c) for c in run.accuracy.get(k, {}).values())]
    datasets = [d for d in run.datasets if any(_bar_values(run.accuracy.get(k, {}).get(d)) for k in keys)]
    if not keys or not datasets:
        return None
    m = len(keys)
    group = 0.42 * m + 0.6  # inches per dataset group
    per_row = max(1, min(len(datasets), int(14 / group)))
    chunks = [datasets[i:i + per_row] for i in range(0, len(datasets), per_row)]
    fig, axes = _figure(max(9.0, 1.6 + per_row * group), 4.4 * len(chunks) + 1.2, len(chunks), 1)
    width = 0.8 / m
    bars = [_bar_values(run.accuracy[k].get(d)) for k in keys for d in datasets]
    top = max([y + h for y, _, h in filter(None, bars)]
              + [v for k in published_keys for d, v in published["rows"][k]["accuracy"].items()
                 if v is not None and d in datasets] + [1.0])
    for ax, chunk in zip(axes[:, 0], chunks):
        for i, key in enumerate(keys):
            xs, ys, lo, hi = [], [], [], []
            for j, d in enumerate(chunk):
                v = _bar_values(run.accuracy[key].get(d))
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v[0]), lo.append(v[1]), hi.append(v[2])
            ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=3, color=COLORS.get(key, f"C{i}"),
                   label=MODELS.get(key, key) if ax is axes[0, 0] else None,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
            if m * len(chunk) <= 40:  # value labels stay legible up to about this many bars
                for x, y, h in zip(xs, ys, hi):
                    ax.text(x, y + h + 0.8, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
        for k, key in enumerate(published_keys):
            row = published["rows"][key]
            color, style = _PUBLISHED_STYLES[k % len(_PUBLISHED_STYLES)]
            if key == "random":
                color, style = "#888888", "--"
            label = f"{row['label']} (published)" if ax is axes[0, 0] else None
            for j, d in enumerate(chunk):
                v = row["accuracy"].get(d)
                if v is not None:
                    # zorder: over the bars, the point is to see which bars clear the line
                    ax.hlines(v, j - 0.45, j + 0.45, colors=color, linestyles=style, linewidth=1.8,
                              label=label, zorder=3)
                    label = None  # one legend entry per row
        rotate = len(chunk) > 3
        ax.set_xticks(range(len(chunk)), chunk, rotation=20 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_xlim(-0.5, per_row - 0.5)  # the same bar width on every row
        ax.set_ylim(0, min(105.0, top * 1.12 + 4))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Test accuracy by stage (error bars: 95% Wilson interval)")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(fig, path)


def _smooth(values: list[float]) -> list[float]:
    """Trailing moving average over about a twentieth of the run (at least 3 points)."""
    w = max(3, len(values) // 20)
    return [statistics.fmean(values[max(0, i - w + 1): i + 1]) for i in range(len(values))]


def ppo_plot(rows: list[dict], path: Path, accuracy_label: str = "test accuracy") -> Path | None:
    """2x2 against the iteration: reward-model score (and reward after the KL penalty), KL, entropy,
    accuracy on PPO's evaluation questions (`accuracy_label` names them)."""
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("ppo/score_mean", "reward-model score", "Reward", 1.0),
        ("ppo/kl", "KL(policy || SFT), nats per sequence", "KL to the SFT model", 1.0),
        ("ppo/entropy", "entropy, nats per token", "Policy entropy", 1.0),
        ("eval/accuracy", f"{accuracy_label} (%)", accuracy_label[0].upper() + accuracy_label[1:], 100.0),
    ]
    if not any(_series(rows, key) for key, *_ in panels):
        return None
    fig, axes = _figure(10.5, 7.2, 2, 2)
    events = [(r.get("step"), "stop" if r.get("guard/stop") else "rollback") for r in rows
              if (r.get("guard/stop") or r.get("guard/rollback")) and _num(r.get("step")) is not None]
    for ax, (key, ylabel, title, scale) in zip(axes.flat, panels):
        series = _series(rows, key)
        lines = [(series, "reward-model score" if key == "ppo/score_mean" else None, "C0")]
        if key == "ppo/score_mean":
            lines.append((_series(rows, "ppo/reward_mean"), "score - beta * KL", "C1"))
        for data, label, color in lines:
            if not data:
                continue
            steps, values = [s for s, _ in data], [scale * v for _, v in data]
            if key == "eval/accuracy" or len(values) < 25:
                marker = "o" if key == "eval/accuracy" else None
                ax.plot(steps, values, marker=marker, markersize=4, color=color, label=label)
            else:  # raw values faint, a moving average on top
                ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
                smooth_label = f"{label} (moving average)" if label else None
                ax.plot(steps, _smooth(values), color=color, label=smooth_label)
        for step, kind in events:
            ax.axvline(step, color="red", linestyle=":", linewidth=1)
        if not series:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if key == "ppo/score_mean" and series:
            ax.legend(fontsize=8)
    note = "  (red dotted lines: the guard stopped or rolled back)" if events else ""
    fig.suptitle("PPO training curves" + note)
    return _save(fig, path)


def reward_score_plot(run: Run, path: Path) -> Path | None:
    """Held-out scores per tier (box from the stored quantiles) and best-of-N scores by answer correctness."""
    by_tier = _get(run.reward, "metrics", "heldout", "score_by_tier") or {}
    stats = []
    for tier in sorted(by_tier, key=lambda t: float(t) if str(t).lstrip("-").isdigit() else 0):
        d = by_tier[tier]
        values = [_num(_get(d, k)) for k in ("p10", "p50", "p90", "min", "max", "mean")]
        if all(v is not None for v in values):
            p10, p50, p90, lo, hi, mean = values
            stats.append({"label": f"tier {tier}\n(n={_get(d, 'n', default='?')})", "q1": p10, "med": p50,
                          "q3": p90, "whislo": lo, "whishi": hi, "mean": mean, "fliers": []})
    scores = run.rerank_scores
    if not stats and not scores:
        return None
    panels = [p for p in ("tiers", "rerank") if (p == "tiers" and stats) or (p == "rerank" and scores)]
    fig, axes = _figure(5.2 * len(panels) + 0.6, 4.4, 1, len(panels))
    for ax, panel in zip(axes[0], panels):
        if panel == "tiers":
            ax.bxp(stats, showmeans=True, patch_artist=True,
                   boxprops={"facecolor": "#c6dbef"}, medianprops={"color": "#08519c", "linewidth": 2})
            ax.set_title("Held-out rationales: score by tier\n(box 10th-90th percentile, line median, "
                         "whiskers min-max, triangle mean)", fontsize=9)
            ax.set_ylabel("reward-model score")
            ax.set_xlabel("tier (higher is better)")
        else:
            right = [s for s, c in scores if c]
            wrong = [s for s, c in scores if not c]
            lo, hi = min(s for s, _ in scores), max(s for s, _ in scores)
            bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
            if right:
                ax.hist(right, bins=bins, alpha=0.55, color="#55a868",
                        label=f"correct answer (n={len(right)})")
            if wrong:
                ax.hist(wrong, bins=bins, alpha=0.55, color="#c44e52", label=f"wrong answer (n={len(wrong)})")
            ax.set_title("Best-of-N test samples: score by correctness", fontsize=9)
            ax.set_xlabel("reward-model score")
            ax.set_ylabel("samples")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward-model scores")
    return _save(fig, path)


def length_plot(run: Run, path: Path) -> Path | None:
    """Test response lengths before PPO (SFT, else base) and after (SML); the rollout length during PPO."""
    from matplotlib.ticker import MaxNLocator

    before, after, common = _pick_before_after(run)
    shown = [k for k in (before, after) if k]
    rollout = _series(run.ppo_log, "rollout/response_length")
    if not shown and not rollout:
        return None
    panels = (["test"] if shown else []) + (["rollout"] if rollout else [])
    fig, axes = _figure(5.4 * len(panels) + 0.6, 4.2, 1, len(panels))
    for ax, panel in zip(axes[0], panels):
        if panel == "test":
            data = {}
            for key in shown:
                sets = common or list(run.lengths[key])
                data[key] = [t for d in sets for t, _ in run.lengths[key].get(d, [])]
            every = [t for v in data.values() for t in v]
            lo, hi = (min(every), max(every)) if every else (0, 1)
            bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
            for key, values in data.items():
                if values:
                    cut = sum(f == "length" for d in (common or list(run.lengths[key]))
                              for _, f in run.lengths[key].get(d, []))
                    ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=COLORS.get(key, "C0"),
                            edgecolor=COLORS.get(key, "C0"), linewidth=1.5,
                            label=f"{MODELS.get(key, key)}: mean {statistics.fmean(values):.0f}, "
                                  f"{100 * cut / len(values):.0f}% cut at the limit")
            ax.set_title("Test answers: response length" + (f" ({', '.join(common)})" if common else ""),
                         fontsize=9)
            ax.set_xlabel("new tokens per answer")
            ax.set_ylabel("answers")
            ax.legend(fontsize=7)
        else:
            steps, values = [s for s, _ in rollout], [v for _, v in rollout]
            ax.plot(steps, values, color="#dd8452", alpha=0.4 if len(values) >= 25 else 1)
            if len(values) >= 25:
                ax.plot(steps, _smooth(values), color="#dd8452", label="moving average")
                ax.legend(fontsize=8)
            ax.set_ylim(0, 1.1 * max(values))  # from zero: a steady length looks steady, a collapse like one
            ax.set_title("PPO rollouts: mean response length", fontsize=9)
            ax.set_xlabel("PPO iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
    fig.suptitle("Response length before and after PPO")
    return _save(fig, path)


def compare_plot(runs: list[Run], datasets: list[str], path: Path) -> Path | None:
    """One panel per dataset: models on the x axis, one bar per run, 95% CI error bars."""
    datasets = [d for d in datasets if any(_bar_values(r.accuracy.get(k, {}).get(d)) for r in runs
                                           for k in r.accuracy)]
    if not datasets:
        return None
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = _figure(4.6 * ncols, 3.8 * nrows + 0.6, nrows, ncols)
    width = 0.8 / len(runs)
    for ax, d in zip(axes.flat, datasets):
        keys = [k for k in dict.fromkeys(k for r in runs for k in _model_keys(r))
                if any(_bar_values(r.accuracy.get(k, {}).get(d)) for r in runs)]
        for i, r in enumerate(runs):
            xs, ys, lo, hi = [], [], [], []
            for j, key in enumerate(keys):
                v = _bar_values(r.accuracy.get(key, {}).get(d))
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v[0]), lo.append(v[1]), hi.append(v[2])
            ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=2, color=f"C{i}",
                   label=r.name if d == datasets[0] else None, error_kw={"elinewidth": 1})
        ax.set_xticks(range(len(keys)), [SHORT.get(k, k) for k in keys], fontsize=8)
        ax.set_title(d)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle("Test accuracy by run (error bars: 95% Wilson interval)")
    fig.legend(loc="outside lower center", ncols=min(4, len(runs)), fontsize=8, frameon=False)
    return _save(fig, path)


# ----------------------------------------------------------------------------------------------------
# One run


def single_report(run: Run, published: dict, config: ReportConfig, plot_dir: Path) -> tuple[str, list]:
    """The title and blocks of one run's report."""
    blocks: list = []
    sections = [
        ("Run", _header_section),
        ("Test accuracy", _accuracy_section),
        ("Rationales", _rationale_section),
        ("Reward model", _reward_section),
        ("PPO", _ppo_section),
        ("Plots", _plots_section),
        ("What to look at", _facts_section),
        ("Missing", _missing_section),
    ]
    for title, build in sections:
        blocks.append(Heading(1, title))
        try:
            blocks += build(run, published, config, plot_dir)
        except Exception as err:  # one broken part must not cost the rest of the report
            log.exception("report section %r failed", title)
            blocks.append(Para(f"this section could not be built: {type(err).__name__}: {err}", "warn"))
    model = run.summary.get("model") or run.config.get("model") or "unknown model"
    return f"Self-motivated Learning report: {run.name} ({model})", blocks


def _header_section(run: Run, published, config, plot_dir) -> list:
    s, folder = run.summary, run.path.resolve()
    rows = [
        ["run folder", str(folder)],
        ["base model", s.get("model") or run.config.get("model") or "n/a"],
        ["training dataset", s.get("dataset") or run.config.get("dataset") or "n/a"],
        ["test datasets", ", ".join(run.datasets) or "n/a"],
        ["run started (config.yaml written)", _mtime(run.path / "config.yaml")],
        ["summary written", _mtime(run.path / "summary.json")],
        ["report written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")],
    ]
    if s.get("command"):
        command = s["command"]
        rows.append(["command", " ".join(command) if isinstance(command, list) else str(command)])
    elif (run.path / "config.yaml").is_file():
        rows.append(["command to rerun or resume", f"sml run {folder / 'config.yaml'} --out {folder}"])
    blocks = [Table(["run", ""], rows)]
    if run.stages:
        total = sum(_num(_get(i, "seconds")) or 0 for i in run.stages.values())
        blocks.append(Table(
            ["stage", "status", "time", "fingerprint"],
            [[name, _get(i, "status", default="n/a"), fmt_seconds(_get(i, "seconds")),
              _get(i, "fingerprint", default="n/a")] for name, i in run.stages.items()]
            + [["total", "", fmt_seconds(total), ""]]))
    else:
        blocks.append(Para("No stage record (neither summary.json nor stages.json lists stages).", "note"))
    if run.config:
        source = "config.yaml" if (run.path / "config.yaml").is_file() else "summary.json"
        blocks.append(Code(json.dumps(run.config, indent=2, default=str),
                           f"Resolved pipeline config (from {source}):"))
    return blocks


def _mtime(path: Path) -> str:
    if not path.is_file():
        return "n/a"
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _published_shown(config: ReportConfig, published: dict, datasets: list[str]) -> list[str]:
    """The configured published rows that report a figure for at least one of these datasets."""
    return [k for k in config.published
            if any(published["rows"][k]["accuracy"].get(d) is not None for d in datasets)]


def _published_cells(key: str, published: dict, datasets: list[str]) -> list[str]:
    acc = published["rows"][key]["accuracy"]
    return [num(acc.get(d), 1) if acc.get(d) is not None else "-" for d in datasets]


def _accuracy_section(run: Run, published, config, plot_dir) -> list:
    if not run.accuracy:
        return [Para("No evaluation results yet.", "warn")]
    datasets = run.datasets
    rows = [[MODELS.get(k, k)] + [fmt_cell(run.accuracy.get(k, {}).get(d)) for d in datasets]
            for k in _model_keys(run)]
    styles = [""] * len(rows)
    shown = _published_shown(config, published, datasets)
    for key in shown:
        rows.append([_published_label(published["rows"][key], published)]
                    + _published_cells(key, published, datasets))
        styles.append("published")
    blocks = [
        Table(["model"] + datasets, rows, styles),
        Para("Accuracy in % on each test split; ± is half the width of the 95% Wilson interval (the "
             "interval itself is ci95 in summary.json, not symmetric around the accuracy); n is the number "
             "of test questions. Rows marked 'published' are figures from the papers named, not our runs: "
             "'-' where the paper reports none. A cell marked * comes from an unfinished evaluation.",
             "note"),
    ]
    if shown:
        blocks.append(_published_sources(shown, published))
    else:
        blocks.append(Para("No published figures for these datasets (published.json covers the 12 Reasoning "
                           "Teachers datasets).", "note"))
    no_answer = [[MODELS.get(k, k)] + [_no_answer(run.accuracy.get(k, {}).get(d)) for d in datasets]
                 for k in _model_keys(run) if run.accuracy.get(k)]
    if any(c != "n/a" for row in no_answer for c in row[1:]):
        blocks += [Para("Share of test answers with no final answer the checker could read (%):"),
                   Table(["model"] + datasets, no_answer)]
    if run.best_of_n:
        rows = [[d, m.get("n_questions", "n/a"), m.get("n_samples", "n/a"),
                 pct(m.get("first_sample_accuracy")), pct(m.get("majority_vote_accuracy")),
                 pct(m.get("best_of_n_accuracy")), pct(m.get("oracle_accuracy")),
                 _get(m, "config", "policy") or "n/a"] for d, m in run.best_of_n.items()]
        blocks += [Para("Best-of-N with the reward model (accuracy %): the first sample, the majority vote, "
                        "the reward model's pick, and whether any sample is right (oracle: an upper bound "
                        "for any reranker):"),
                   Table(["dataset", "questions", "N", "first", "majority", "reward-model pick", "oracle",
                          "policy"], rows)]
    return blocks


def _no_answer(cell: dict | None) -> str:
    if not cell or cell.get("n_no_answer") is None or not cell.get("n"):
        return "n/a"
    return f"{100 * cell['n_no_answer'] / cell['n']:.1f}"


def _rationale_section(run: Run, published, config, plot_dir) -> list:
    st = run.rationales
    if not st:
        return [Para(f"No rationale store or statistics in this run folder: {_why_absent(run, 'generate')}.", "warn")]
    tiers = sorted({t for s in [st, *st.get("by_dataset", {}).values()] for t in s.get("tiers", {})},
                   key=lambda t: int(t) if str(t).lstrip("-").isdigit() else 0, reverse=True)

    def line(name: str, s: dict) -> list:
        return ([name, s.get("n_questions", "n/a"), s.get("n_rationales", "n/a")]
                + [s.get("tiers", {}).get(t, 0) for t in tiers]
                + [s.get("n_pairs", "n/a"), s.get("n_sft", "n/a"), pct(s.get("share_questions_top_tier")),
                   pct(s.get("share_questions_with_pair")), pct(s.get("leak_rate"))])

    by_dataset = st.get("by_dataset", {})
    rows = [line(d, s) for d, s in by_dataset.items()]
    if len(by_dataset) != 1:
        rows.append(line("all", st))
    blocks = [
        Table(["dataset", "questions", "rationales"] + [f"tier {t}" for t in tiers]
              + ["pairs", "SFT rows", "questions with a top-tier rationale %", "questions with a pair %",
                 "leak rate %"], rows),
        Para(f"Tiers are higher-is-better (top tier {st.get('top_tier', 'n/a')}: the SFT set); the reward "
             f"model trains on every (higher, lower) pair of one question. Duplicates skipped: "
             f"{st.get('n_duplicates_skipped', 'n/a')}; excluded by the tier rules: "
             f"{st.get('n_excluded', 'n/a')}; leaked hints filtered: {st.get('n_leaks_filtered', 'n/a')}.",
             "note"),
    ]
    words = st.get("mean_words", {})
    if words:
        blocks.append(Para(f"Mean rationale length ({st.get('length_unit', 'words')}): "
                           + ", ".join(f"tier {t}: {w}" for t, w in words.items()) + "."))
    outcomes = st.get("outcomes", {})
    if outcomes:
        blocks.append(Table(["kind/outcome", "rationales"], [[k, v] for k, v in outcomes.items()]))
    return blocks


def _reward_section(run: Run, published, config, plot_dir) -> list:
    rec = run.reward
    if not rec:
        return [Para(f"No reward model record (reward/run.json): {_why_absent(run, 'reward')}.", "warn")]
    metrics = rec.get("metrics") or {}
    held = metrics.get("heldout") or {}
    start = metrics.get("heldout_start") or {}
    accuracy = (f"{num(held.get('pairwise_accuracy'))} on {held.get('n_pairs', 'n/a')} pairs of "
                f"{held.get('n_questions', 'n/a')} questions")
    blocks = [Table(["reward model", ""], [
        ["status", rec.get("status", "n/a")],
        ["held-out pairwise accuracy", accuracy],
        ["before training", num(start.get("pairwise_accuracy"))],
        ["held-out loss", num(held.get("val_loss"), 4)],
        ["training steps", metrics.get("steps", "n/a")],
        ["training time", fmt_seconds(metrics.get("train_seconds"))],
    ])]
    if not held:
        blocks.append(Para("No held-out evaluation in the record (val_fraction=0, or training did not reach "
                           "one).", "warn"))
    by_gap = held.get("accuracy_by_tier_gap") or {}
    if by_gap:
        rows = [[g, num(_get(v, "accuracy")), _get(v, "n_pairs", default="n/a")] for g, v in by_gap.items()]
        blocks += [Para("Held-out pairwise accuracy by tier gap (a tie counts half; chance is 0.5):"),
                   Table(["tier gap", "accuracy", "pairs"], rows)]
    by_tiers = held.get("accuracy_by_tiers") or {}
    if by_tiers:
        blocks.append(Table(["better > worse tier", "accuracy"], [[k, num(v)] for k, v in by_tiers.items()]))
    by_tier = held.get("score_by_tier") or {}
    if by_tier:
        quantities = ("mean", "std", "p10", "p50", "p90")
        rows = [[t, _get(d, "n", default="n/a")] + [num(_get(d, k)) for k in quantities]
                for t, d in by_tier.items()]
        blocks += [Para("Held-out reward-model scores by tier:"),
                   Table(["tier", "n", "mean", "sd", "p10", "median", "p90"], rows)]
    bon = metrics.get("best_of_n")
    if isinstance(bon, dict):
        blocks.append(Para(
            f"Best-of-{bon.get('n_samples', 'N')} on {bon.get('n_questions', 'n/a')} "
            f"{bon.get('dataset') or ''} test questions with the reward stage's policy: reward-model pick "
            f"{pct(bon.get('best_of_n_accuracy'))}%, first sample {pct(bon.get('first_sample_accuracy'))}%, "
            f"majority vote {pct(bon.get('majority_vote_accuracy'))}%, oracle "
            f"{pct(bon.get('oracle_accuracy'))}%."))
    return blocks


_PPO_ROWS = (  # key in the log, name in ppo_overview, label, digits
    ("ppo/score_mean", "score", "reward-model score", 3),
    ("ppo/reward_mean", "reward", "reward (score - beta * KL)", 3),
    ("ppo/kl", "kl", "KL to the SFT model (nats per sequence)", 3),
    ("ppo/entropy", "entropy", "entropy (nats per token)", 3),
    ("rollout/response_length", "length", "rollout response length (tokens)", 1),
)


def ppo_overview(run: Run) -> dict:
    """First/last/min/max of the PPO log's main series and the test accuracies, for tables and facts."""
    rows = run.ppo_log
    out: dict = {"iterations": len(_series(rows, "ppo/score_mean"))}
    for key, name, _, _ in _PPO_ROWS:
        values = [v for _, v in _series(rows, key)]
        if values:
            out[name] = {"first": values[0], "last": values[-1], "max": max(values), "min": min(values)}
    evals = _series(rows, "eval/accuracy")
    if evals:
        out["accuracy"] = {"first": evals[0], "best": max(evals, key=lambda e: e[1]), "last": evals[-1]}
    out["status"] = (run.ppo_run or {}).get("status")
    out["result"] = (run.ppo_run or {}).get("result") or {}
    return out


def ppo_accuracy_label(run: Run) -> str:
    """What PPO's periodic accuracy measured: the test split, or training questions PPO held out."""
    split = _get(run.config, "ppo", "eval_split", default="test")
    return "held-out training accuracy" if split == "heldout" else f"{split} accuracy"


def _ppo_section(run: Run, published, config, plot_dir) -> list:
    if not run.ppo_log:
        return [Para(f"No PPO log (ppo/metrics.jsonl): {_why_absent(run, 'ppo')}.", "warn")]
    o = ppo_overview(run)
    rows = [[label] + [num(o[name][k], digits) for k in ("first", "last", "min", "max")]
            for _, name, label, digits in _PPO_ROWS if name in o]
    if "accuracy" in o:
        first, best, last = (o["accuracy"][k] for k in ("first", "best", "last"))
        rows.append([f"{ppo_accuracy_label(run)} (%)", f"{pct(first[1])} (step {first[0]})",
                     f"{pct(last[1])} (step {last[0]})", "", f"{pct(best[1])} (step {best[0]})"])
    status = o["status"] or "n/a (no ppo/run.json)"
    blocks = [Para(f"{o['iterations']} iterations logged; status: {status}."),
              Table(["", "first", "last", "min", "max"], rows)]
    signal = _get(o, "result", "signal")
    if signal:
        message = _get(o, "result", "message", default="")
        blocks.append(Para(f"The PPO guard stopped the run [{signal}]: {message}", "warn"))
    return blocks


def _plots_section(run: Run, published, config, plot_dir) -> list:
    if not config.plots:
        return [Para("Plots were not drawn (plots off).", "note")]
    made = [
        (accuracy_plot(run, published, config.published, plot_dir / "accuracy.png"),
         "Test accuracy by stage and dataset; error bars: 95% Wilson interval; published: lines"),
        (ppo_plot(run.ppo_log, plot_dir / "ppo_curves.png", ppo_accuracy_label(run)),
         f"PPO: reward-model score, KL to the SFT model, entropy and {ppo_accuracy_label(run)} by iteration"),
        (reward_score_plot(run, plot_dir / "reward_scores.png"),
         "Reward-model scores: held-out rationales by tier, and best-of-N test samples by correctness"),
        (length_plot(run, plot_dir / "response_length.png"),
         "Response length before and after PPO (test outputs), and during PPO (rollouts)"),
    ]
    blocks = [Image(path, caption) for path, caption in made if path is not None]
    if len(blocks) < len(made):
        blocks.append(Para(f"{len(made) - len(blocks)} plot(s) left out: no data for them yet.", "note"))
    return blocks


def _pick_before_after(run: Run) -> tuple[str | None, str | None, list[str]]:
    """The model before PPO (sft, else base) and after (sml), and the datasets both were evaluated on."""
    after = "sml" if run.lengths.get("sml") else None
    before = next((k for k in ("sft", "base") if run.lengths.get(k)), None)
    if not (before and after):
        return before, after, []
    return before, after, [d for d in run.lengths[after] if d in run.lengths[before]]


def _mean_length(run: Run, key: str, datasets: list[str]) -> tuple[float, float]:
    """Mean new tokens and the share cut at max_new_tokens, over the datasets given (which must have rows)."""
    rows = [r for d in datasets for r in run.lengths.get(key, {}).get(d, [])]
    return statistics.fmean(t for t, _ in rows), sum(f == "length" for _, f in rows) / len(rows)


# What the "what to look at" section compares: (model, against, wording when higher, when lower)
_COMPARISONS = (
    ("sml", "sft", "SML beats SFT-only", "SML is below SFT-only"),
    ("sft", "base", "SFT beats the base model (zero-shot CoT)",
     "SFT is below the base model (zero-shot CoT)"),
    (BEST_OF_N, "sml", "best-of-N beats SML's greedy answer", "best-of-N is below SML's greedy answer"),
)


def _has(cell: dict | None) -> bool:
    return bool(cell) and cell.get("accuracy") is not None


def _accuracy_facts(run: Run, published: dict) -> list[str]:
    items, acc = [], run.accuracy
    for a, b, up, down in _COMPARISONS:
        for d in run.datasets:
            ca, cb = acc.get(a, {}).get(d), acc.get(b, {}).get(d)
            if not (_has(ca) and _has(cb)):
                continue
            diff = 100 * (ca["accuracy"] - cb["accuracy"])
            overlap = _overlap(ca, cb)
            ci = "" if overlap is None else ("; the 95% intervals overlap, so the difference may be noise"
                                             if overlap else "; the 95% intervals do not overlap")
            if diff == 0:
                items.append(f"{MODELS[a]} and {MODELS[b]} tie on {d} at {pct(ca['accuracy'])}%.")
            else:
                items.append(f"{up if diff > 0 else down} on {d} by {abs(diff):.1f} points "
                             f"({pct(cb['accuracy'])} -> {pct(ca['accuracy'])}){ci}.")
    rows = published["rows"]
    for d in run.datasets:
        ours, ref = acc.get("sml", {}).get(d), rows["gpt2_124m_fine_tune_cot"]["accuracy"].get(d)
        if _has(ours) and ref is not None:
            side = "above" if 100 * ours["accuracy"] > ref else "at or below"
            items.append(f"SML on {d} ({pct(ours['accuracy'])}%) is {side} the published GPT-2 124M "
                         f"Fine-tune-CoT ({ref:.1f}%, Ho et al. 2023, with a text-davinci-002 teacher).")
        chance = rows["random"]["accuracy"].get(d)
        cells = [(k, acc.get(k, {}).get(d)) for k in _model_keys(run)]
        below = [f"{MODELS.get(k, k)} {pct(c['accuracy'])}" for k, c in cells
                 if _has(c) and chance and 100 * c["accuracy"] < chance]
        if below:
            items.append(f"Below the random baseline on {d} ({chance:.1f}%): {'; '.join(below)}.")
        silent = [f"{MODELS.get(k, k)} {100 * c['n_no_answer'] / c['n']:.0f}%" for k, c in cells
                  if c and c.get("n_no_answer") and c.get("n") and c["n_no_answer"] / c["n"] > 0.1]
        if silent:
            items.append(f"No readable final answer on many {d} questions ({'; '.join(silent)}): check the "
                         "answer format and max_new_tokens before reading these accuracies as reasoning.")
        habits = [(k, f) for k in _model_keys(run) if (f := favourite_answer(run.answers.get(k, {}).get(d, [])))]
        if habits:
            said = "; ".join(f"{MODELS.get(k, k)} answers {top} in {count} of its {n} answers ({count / n:.0%}; "
                             f"{gold:.0%} of the gold answers are {top})" for k, (top, count, n, gold) in habits)
            items.append(f"A favourite answer on {d}: {said}. Such a model answers by habit: its accuracy there "
                         "mostly measures how often the habit matches the gold, not its reasoning.")
    return items


def favourite_answer(pairs: list, max_labels: int = 10, min_answers: int = 20) -> tuple | None:
    """(answer, times given, answers given, its share of the gold answers) when one answer dominates a model's
    (prediction, gold) pairs on a task with few possible answers (choice letters, yes/no), else None.
    Dominates: its share of the answers is more than halfway from its share of the gold answers to all."""
    golds = Counter(str(g) for _, g in pairs if g is not None)
    answered = Counter(str(p) for p, _ in pairs if p is not None)
    n = sum(answered.values())
    if n < min_answers or not golds or len(golds) > max_labels:
        return None
    top, count = answered.most_common(1)[0]
    gold_share = golds.get(top, 0) / sum(golds.values())
    if count / n <= (1 + gold_share) / 2:
        return None
    return top, count, n, gold_share


def _data_facts(run: Run, config: ReportConfig) -> list[str]:
    """Rationales, reward model and test response lengths."""
    items = []
    st = run.rationales
    if st:
        share = _num(st.get("share_questions_with_pair"))
        items.append(f"The rationale stage wrote {st.get('n_rationales', 'n/a')} rationales for "
                     f"{st.get('n_questions', 'n/a')} questions, giving {st.get('n_pairs', 'n/a')} "
                     f"reward-model pairs and {st.get('n_sft', 'n/a')} SFT rows; {pct(share)}% of questions "
                     "have a pair.")
        if share is not None and share < 0.5:
            items.append("Fewer than half of the questions have a pair: the reward model learns from a "
                         "narrow slice of the data (more samples per question, or a higher temperature, "
                         "give more).")
    pa = _num(_get(run.reward, "metrics", "heldout", "pairwise_accuracy"))
    if pa is not None:
        start = _num(_get(run.reward, "metrics", "heldout_start", "pairwise_accuracy"))
        before = f" (from {start:.3f} before training)" if start is not None else ""
        items.append(f"The reward model ranks {pa:.3f} of held-out pairs right{before}; chance is 0.5.")
        if pa <= 0.5:
            items.append("The reward model ranks held-out pairs no better than chance: PPO against it optimises "
                         "noise, or worse, the opposite of correctness.")
        elif pa < 0.6:
            items.append("The reward model is barely better than chance: PPO against it has little signal.")
    before, after, common = _pick_before_after(run)
    if common:
        lb, fb = _mean_length(run, before, common)
        la, fa = _mean_length(run, after, common)
        items.append(f"Mean test response length {lb:.1f} tokens ({MODELS.get(before, before)}) -> "
                     f"{la:.1f} (SML) on {', '.join(common)}; cut at max_new_tokens: {100 * fb:.0f}% -> "
                     f"{100 * fa:.0f}%.")
        if lb > 0 and la < config.length_drop * lb:
            items.append(f"Length collapse on the test sets: SML's answers are {la / lb:.0%} as long as "
                         "before PPO.")
    return items


def _ppo_facts(run: Run) -> list[str]:
    o, items = ppo_overview(run), []
    if "score" in o:
        items.append(f"Over {o['iterations']} PPO iterations the reward-model score went "
                     f"{o['score']['first']:.3f} -> {o['score']['last']:.3f}.")
    if "kl" in o:
        items.append(f"KL to the SFT model went {o['kl']['first']:.3f} -> {o['kl']['last']:.3f} nats per "
                     f"sequence (peak {o['kl']['max']:.3f}).")
    if "entropy" in o:
        items.append(f"Policy entropy went {o['entropy']['first']:.3f} -> {o['entropy']['last']:.3f} "
                     "nats per token.")
    if "accuracy" in o:
        first, best, last = (o["accuracy"][k] for k in ("first", "best", "last"))
        label = ppo_accuracy_label(run)
        items.append(f"{label[0].upper() + label[1:]} during PPO: {pct(first[1])}% at step {first[0]}, best {pct(best[1])}% "
                     f"at step {best[0]}, last {pct(last[1])}% at step {last[0]}.")
    return items


def facts(run: Run, published: dict, config: ReportConfig) -> tuple[list[str], list[Signal]]:
    """Plain statements computed from the run, and the PPO failure signatures found in its log."""
    items = _accuracy_facts(run, published) + _data_facts(run, config)
    signals = []
    if run.ppo_log:
        items += _ppo_facts(run)
        signals = failure_signatures(run.ppo_log, **_thresholds(config))
        if not any(s.name != "guard" for s in signals):
            items.append("No failure signature in the PPO log (reward rising while accuracy falls, KL "
                         "blow-up, entropy collapse, length collapse, NaN).")
    return items, signals


def _facts_section(run: Run, published, config, plot_dir) -> list:
    items, signals = facts(run, published, config)
    blocks = [Para(s.message, "warn") for s in signals]
    blocks.append(Bullets(items) if items else Para("Nothing to compare yet.", "note"))
    return blocks


def _missing_section(run: Run, published, config, plot_dir) -> list:
    blocks = [Bullets(run.missing) if run.missing else Para("Nothing missing: every stage left its results.")]
    if run.notes:
        blocks += [Para("Files that could not be read:", "warn"), Bullets(run.notes)]
    return blocks


# ----------------------------------------------------------------------------------------------------
# Several runs


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
              + _compare_training(runs, config))
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
             _stages_done(r), ppo_overview(r)["status"] or ("not run" if not r.ppo_log else "n/a")]
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


def _compare_training(runs: list[Run], config: ReportConfig) -> list:
    rows = []
    for r in runs:
        o = ppo_overview(r)
        found = {s.name for s in failure_signatures(r.ppo_log, **_thresholds(config))}
        rows.append([r.name, num(_get(r.reward, "metrics", "heldout", "pairwise_accuracy")),
                     o["iterations"] or "n/a",
                     num(_get(o, "score", "first")) + " -> " + num(_get(o, "score", "last")),
                     num(_get(o, "kl", "last")), num(_get(o, "entropy", "last")),
                     ", ".join(sorted(found)) or "none"])
    return [Heading(1, "Reward model and PPO"),
            Table(["run", "RM held-out pairwise acc.", "PPO iterations", "RM score first -> last", "KL last",
                   "entropy last", "failure signatures"], rows)]


def _stages_done(run: Run) -> str:
    stages = {k: v for k, v in run.stages.items() if _get(v, "status") != "skipped"}
    if not stages:
        return "n/a"
    return f"{sum(_get(i, 'status') == 'done' for i in stages.values())} of {len(stages)}"


def _short(value, width: int = 60) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= width else text[: width - 3] + "..."


__all__ = ["MODELS", "ReportConfig", "Signal", "facts", "failure_signatures", "fmt_cell", "load_published",
           "load_run", "make_report", "run_report"]
