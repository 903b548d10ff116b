"""The paired comparisons of a run's model rows (stats.py), as a table beside the accuracy table."""

from __future__ import annotations

from ..stats import compare_models
from .blocks import Para, Table
from .runs import MODELS, Run


def run_comparisons(run: Run) -> dict:
    """dataset -> {"<a>_vs_<b>": stats}: summary.json's (a results folder keeps no per-question files), else
    computed from the evaluation folders."""
    summary = run.summary or {}
    by_dataset = summary.get("comparisons_by_dataset")
    if isinstance(by_dataset, dict) and by_dataset:
        return by_dataset
    if isinstance(summary.get("comparisons"), dict) and summary["comparisons"] and run.datasets:
        return {run.datasets[0]: summary["comparisons"]}
    out = {}
    for dataset in run.datasets:
        try:
            pairs = compare_models(run.path, dataset)
        except (OSError, ValueError, KeyError):
            continue
        if pairs:
            out[dataset] = pairs
    return out


def _split(name: str) -> tuple[str, str]:
    a, _, b = name.partition("_vs_")
    return a, b


def _pts(x: float) -> str:
    return f"{100 * x:+.1f}"


def paired_blocks(run: Run) -> list:
    comparisons = run_comparisons(run)
    if not comparisons:
        return []
    rows = []
    for dataset, pairs in comparisons.items():
        for name, c in pairs.items():
            a, b = _split(name)
            p = c.get("p")
            rows.append([f"{MODELS.get(a, a)} vs {MODELS.get(b, b)}", dataset, _pts(c["diff"]),
                         f"{_pts(c['ci95'][0])} to {_pts(c['ci95'][1])}",
                         "n/a" if p is None else (f"{p:.3g}" + (" *" if p < 0.05 else "")),
                         str(c.get("a_only", "n/a")), str(c.get("b_only", "n/a")), str(c.get("n", "n/a"))])
    return [
        Para("Paired comparisons on the same test questions (matched by question id): the difference in "
             "accuracy points (first model minus second), its 95% paired bootstrap interval (10,000 resamples of "
             "the questions), and the exact McNemar p-value from the questions only one of the two got right "
             "(* p < 0.05). Two Wilson intervals that overlap can still hide a clear paired difference, and only "
             "the discordant questions carry evidence:"),
        Table(["comparison", "dataset", "difference (pts)", "95% CI", "McNemar p", "only first right",
               "only second right", "n"], rows),
    ]
