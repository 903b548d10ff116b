"""Reading a run folder: what each file of a run folder holds, tolerant of missing and unreadable files."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

PUBLISHED_FILE = Path(__file__).parent.parent / "resources" / "published.json"


# Rows of the accuracy table, in order: run-folder key -> what the model is.
MODELS = {
    "base": "base, zero-shot CoT",
    "base_few_shot": "base, few-shot CoT",
    "sft": "SFT on self-generated rationales",
    "sml": "SML (SFT + reward model + PPO)",
    "ppo_checker": "PPO against the answer checker (verifiable-reward control)",
    "sft_round2": "SFT round 2 (expert iteration on its own correct samples)",
    "sml_best_of_n": "SML + best-of-N (reward model picks)",
}
BEST_OF_N = "sml_best_of_n"
# Rows a run has only when its config lists them in `controls` (pipeline.CONTROLS): off by default, so a run
# without them lacks nothing.
CONTROLS = ("ppo_checker", "sft_round2")
# The model rows a refused stage leaves without numbers: PPO's gate refusing leaves no SML policy, and the
# pipeline then evaluates no row built on it.
REFUSED_ROWS = {"ppo": ("sml", BEST_OF_N), "ppo_checker": ("ppo_checker",)}
STAGE_NAMES = {"ppo": "PPO", "ppo_checker": "PPO against the checker"}  # as the report's sentences name them


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
    checker_log: list = field(default_factory=list)  # ppo_checker/metrics.jsonl: PPO against the checker
    # "ppo" / "ppo_checker" -> [(iteration, [(prediction, gold)])] from <stage>/eval/step-N/predictions.jsonl
    ppo_eval_answers: dict = field(default_factory=dict)
    checker_run: dict | None = None
    refused: dict = field(default_factory=dict)  # stage -> the gate's reason (PPO refused to start)
    validity: dict | None = None  # reward/validity.json (else summary.json's reward_validity)
    validity_rows: list = field(default_factory=list)  # reward/validity_samples.jsonl: {id, score, correct,
    #                                                      finished, prediction}, rows with a score and a verdict
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
    from ..evaluate import accuracy_ci95

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
    # Folder names back to dataset names (a file path or hub id is stored under a safe folder name).
    from ..data import dataset_folder

    known = [d for d in _get(run.summary, "datasets", default=[]) or [] if isinstance(d, str)]
    known += [d for per in (models.values() if isinstance(models, dict) else []) if isinstance(per, dict)
              for d in per]
    names = {dataset_folder(d): d for d in known}
    for model_dir in sorted(p for p in (path / "eval").glob("*") if p.is_dir()):
        for ds_dir in sorted(p for p in model_dir.glob("*") if p.is_dir()):
            _load_eval_folder(run, model_dir.name, ds_dir, names.get(ds_dir.name, ds_dir.name))
    listed = [d for d in _get(run.summary, "datasets", default=[]) or [] if isinstance(d, str)]
    run.datasets = listed + sorted({d for cells in run.accuracy.values() for d in cells} - set(listed))
    run.refused = _refusals(run)
    for key, label in MODELS.items():
        if not run.accuracy.get(key):
            why, refused = _not_configured(run, key), refused_stage(run, key)
            if key in CONTROLS and why:
                continue  # a control the run did not ask for is not missing
            if refused:
                run.missing.append(f"{label}: no model, its stage was refused (stage {refused} below)")
            else:
                run.missing.append(f"{label}: not configured in this run ({why})" if why
                                   else f"{label}: no evaluation (eval/{key}/)")
    _load_stages(run)
    return run


def _refusals(run: Run) -> dict:
    """stage -> reason, for stages whose gate refused to run (summary.json's "refused", else stages.json)."""
    out = {}
    for stage, info in run.stages.items():
        if _get(info, "status") == "refused":
            out[stage] = str(_get(info, "reason", default="") or "no reason recorded")
    listed = run.summary.get("refused")
    if isinstance(listed, dict):
        out.update({str(k): str(v) for k, v in listed.items()})
    return out


def refused_stage(run: Run, key: str) -> str | None:
    """The refused stage that left model row `key` without numbers (reason: run.refused[stage]), or None."""
    return next((stage for stage, rows in REFUSED_ROWS.items() if key in rows and stage in run.refused), None)


def controls_configured(run: Run) -> list[str]:
    """The control rows the run's config asked for (`controls:`); runs from before controls have none."""
    listed = run.config.get("controls")
    return [c for c in listed if c in CONTROLS] if isinstance(listed, (list, tuple)) else []


def _not_configured(run: Run, key: str) -> str | None:
    """Why a row has no numbers by design (the pipeline config turned it off), or None."""
    if key in CONTROLS and key not in controls_configured(run):
        return f"controls does not list {key}"
    if key == "base_few_shot" and run.config.get("few_shot_baseline") is False:
        return "few_shot_baseline is off"
    skipped = _get(run.stages, "best_of_n", "status") == "skipped"
    if key == BEST_OF_N and (run.config.get("best_of_n") == 0 or skipped):
        return "best_of_n is 0"
    return None


def _load_eval_folder(run: Run, key: str, folder: Path, dataset: str) -> None:
    """eval/<key>/<dataset folder>/: response lengths, best-of-N metrics, and the accuracy cell if still missing."""
    notes = run.notes
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
        from ..evaluate import summarize

        run.accuracy.setdefault(key, {})[dataset] = {**_cell(summarize(rows), "predictions.jsonl"),
                                                     "partial": True}
        run.missing.append(f"eval/{key}/{dataset}: evaluation unfinished ({len(rows)} predictions, no "
                           "metrics.json); its cell is marked *")


def _why_absent(run: Run, stage: str) -> str:
    """Why a stage's output is not in the folder: it has not run, or it ran and the folder is a copy
    without it (results keep only small files)."""
    names = {"generate": "rationale", "ppo": "PPO", "ppo_checker": "ppo_checker (PPO against the checker)"}
    name = names.get(stage, stage)
    if stage in run.refused:
        return f"the {name} stage was refused by its gate: {run.refused[stage]}"
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
    validity = _read_json(path / "reward" / "validity.json", notes)
    if not isinstance(validity, dict):  # a results copy may keep only the summary's subset
        validity = run.summary.get("reward_validity")
        validity = {**validity, "source": "summary.json"} if isinstance(validity, dict) and validity else None
    run.validity = validity
    for row in _read_jsonl(path / "reward" / "validity_samples.jsonl", notes):
        if _num(row.get("score")) is not None and isinstance(row.get("correct"), bool):
            run.validity_rows.append({"id": str(row.get("id")), "score": float(row["score"]),
                                      "correct": row["correct"], "finished": row.get("finished") is not False,
                                      "prediction": row.get("prediction")})
    run.ppo_log = _read_jsonl(path / "ppo" / "metrics.jsonl", notes)
    run.ppo_run = _read_json(path / "ppo" / "run.json", notes)
    if not run.ppo_log and "ppo" not in run.refused:  # a refusal is listed once, with the stages
        missing.append(f"PPO log (ppo/metrics.jsonl): {_why_absent(run, 'ppo')}")
    if run.ppo_run is None:
        if run.ppo_log:
            missing.append("PPO record (ppo/run.json): PPO is running or was killed before it finished")
    elif run.ppo_run.get("status") != "finished":
        missing.append(f"PPO: stage status '{run.ppo_run.get('status', 'unknown')}', not finished")
    run.checker_log = _read_jsonl(path / "ppo_checker" / "metrics.jsonl", notes)
    run.checker_run = _read_json(path / "ppo_checker" / "run.json", notes)
    if "ppo_checker" in controls_configured(run) and not run.checker_log and "ppo_checker" not in run.refused:
        missing.append("ppo_checker's PPO log (ppo_checker/metrics.jsonl): "
                       f"{_why_absent(run, 'ppo_checker')}")
    for stage in ("ppo", "ppo_checker"):
        steps = []
        for folder in sorted((path / stage / "eval").glob("step-*")):
            rows = _read_jsonl(folder / "predictions.jsonl", notes)
            if rows and folder.name[5:].isdigit():
                steps.append((int(folder.name[5:]), [(r.get("prediction"), r.get("gold")) for r in rows]))
        if steps:
            run.ppo_eval_answers[stage] = steps
    for stage, info in run.stages.items():
        status = _get(info, "status", default="unknown")
        if status == "refused":
            missing.append(f"stage {stage}: refused by its gate: {run.refused.get(stage, 'no reason')}")
        elif status == "running":
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
    from ..rationales import STORE_NAME, RankConfig, rationale_stats

    for folder in (path, path / "rationales"):
        if (folder / STORE_NAME).is_file():
            rank = None
            rank_values = config.get("rank")
            if isinstance(rank_values, dict) and rank_values:  # the run's own tier rules
                try:
                    from ..config import build_config

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


def _pick_before_after(run: Run) -> tuple[str | None, str | None, list[str]]:
    """The model before PPO (sft, else base) and after (sml), and the datasets both were evaluated on."""
    after = "sml" if run.lengths.get("sml") else None
    before = next((k for k in ("sft", "base") if run.lengths.get(k)), None)
    if not (before and after):
        return before, after, []
    return before, after, [d for d in run.lengths[after] if d in run.lengths[before]]
