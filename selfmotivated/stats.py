"""Paired comparisons of two models evaluated on the same questions.

Two accuracies measured on the same questions are not independent: comparing their separate Wilson intervals
wastes most of the evidence, because only the questions where the two models disagree carry any. Here:

- the difference of accuracies (a - b) with a paired bootstrap 95% interval: resample the questions with
  replacement, both models' verdicts on a question together (Efron & Tibshirani 1993, ch. 13);
- the exact two-sided McNemar test (McNemar 1947): under "no difference" each discordant question (right for
  one model only) is equally likely to favour either, so a_only ~ Binomial(a_only + b_only, 1/2).

`compare_models(RUN)` applies both to every pair of model rows of a run (RUN/eval/<model>/<dataset>/), matched
by question id. numpy only (no scipy).
"""

from __future__ import annotations

import json
from itertools import combinations
from pathlib import Path
from typing import Mapping

N_RESAMPLES = 10_000
# Pair names put the later, more-trained row first ("sml_vs_sft"): the difference reads as what it added.
# Rows not listed (new control rows) come after sml_best_of_n and sml and before sft, by name.
ROW_ORDER = ("sml_best_of_n", "sml", "ppo_checker", "sft_round2", "sft", "base_few_shot", "base")


def mcnemar_exact(a_only: int, b_only: int) -> float:
    """Two-sided exact McNemar p-value from the discordant counts: P(X <= min) * 2 for X ~ Bin(n, 1/2),
    n = a_only + b_only, capped at 1. Exact integer sums, so any n is fine."""
    if a_only < 0 or b_only < 0:
        raise ValueError(f"discordant counts must be >= 0, got {a_only} and {b_only}")
    n = a_only + b_only
    if n == 0:
        return 1.0
    tail, term = 0, 1  # term = C(n, i), built up from C(n, i - 1): one small step each, not a fresh comb
    for i in range(min(a_only, b_only) + 1):
        if i:
            term = term * (n - i + 1) // i
        tail += term
    # int / int is correctly rounded in Python even when 2**n is far beyond a float.
    return min(1.0, 2 * tail / 2**n)


def paired_bootstrap_ci(a: list[bool], b: list[bool], n_resamples: int = N_RESAMPLES, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    """Percentile interval of mean(a) - mean(b) over `n_resamples` paired resamples of the questions.

    Each question falls in one of three kinds (right for a only, b only, or both/neither), and a resample's
    difference is (#a_only - #b_only) / n, so drawing the three counts from a multinomial is the same
    distribution as resampling question indices, at a cost independent of n."""
    import numpy as np

    if len(a) != len(b):
        raise ValueError(f"paired vectors differ in length: {len(a)} and {len(b)}")
    n = len(a)
    if n == 0:
        raise ValueError("no questions to compare")
    a_only = sum(1 for x, y in zip(a, b) if x and not y)
    b_only = sum(1 for x, y in zip(a, b) if y and not x)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.array([a_only, b_only, n - a_only - b_only]) / n, size=n_resamples)
    diffs = (counts[:, 0] - counts[:, 1]) / n
    tail = (1 - level) / 2
    low, high = np.quantile(diffs, [tail, 1 - tail])
    return float(low), float(high)


def compare_pair(a: Mapping[str, bool], b: Mapping[str, bool], n_resamples: int = N_RESAMPLES,
                 seed: int = 0) -> dict:
    """Both tests on the questions two models share (question id -> correct). `n` is how many they share;
    `only_in_a`/`only_in_b` count questions one model has and the other lacks (left out)."""
    shared = [q for q in a if q in b]
    if not shared:
        raise ValueError("the two models share no question id")
    x = [bool(a[q]) for q in shared]
    y = [bool(b[q]) for q in shared]
    n = len(shared)
    a_only = sum(1 for i, j in zip(x, y) if i and not j)
    b_only = sum(1 for i, j in zip(x, y) if j and not i)
    low, high = paired_bootstrap_ci(x, y, n_resamples, seed)
    return {"diff": (a_only - b_only) / n, "ci95": [low, high], "p": mcnemar_exact(a_only, b_only), "n": n,
            "a_only": a_only, "b_only": b_only, "accuracy_a": sum(x) / n, "accuracy_b": sum(y) / n,
            "only_in_a": len(a) - n, "only_in_b": len(b) - n}


def _read_jsonl(path: Path) -> list[dict]:
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a last line torn by an interrupted run: that question is not done
    return rows


def per_question(folder: Path) -> dict[str, bool] | None:
    """question id -> correct of one evaluation folder: `predictions.jsonl` (sml eval) or `rerank.jsonl`
    (best-of-N: the reward model's pick), None when it has neither."""
    if (folder / "predictions.jsonl").is_file():
        return {str(r["id"]): bool(r["correct"]) for r in _read_jsonl(folder / "predictions.jsonl")
                if "id" in r and "correct" in r}
    if (folder / "rerank.jsonl").is_file():
        return {str(r["id"]): bool(r["best_correct"]) for r in _read_jsonl(folder / "rerank.jsonl")
                if "id" in r and "best_correct" in r}
    return None


def row_order(keys) -> list[str]:
    """Model rows ordered as pair names read (see ROW_ORDER)."""
    known = [k for k in ROW_ORDER if k in keys]
    extra = sorted(k for k in keys if k not in ROW_ORDER)
    head = [k for k in known if k in ("sml_best_of_n", "sml")]
    return head + extra + [k for k in known if k not in head]


def compare_rows(rows: Mapping[str, Mapping[str, bool]], n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """{"<a>_vs_<b>": compare_pair(...)} for every pair of rows (row name -> question id -> correct)."""
    ordered = row_order(list(rows))
    out = {}
    for a, b in combinations(ordered, 2):
        try:
            out[f"{a}_vs_{b}"] = compare_pair(rows[a], rows[b], n_resamples, seed)
        except ValueError:
            continue  # no shared question (say, one model evaluated on another subset): nothing to compare
    return out


def eval_rows(run_dir: str | Path, dataset: str) -> dict[str, dict[str, bool]]:
    """Model row -> question id -> correct, for every RUN/eval/<row>/<dataset folder>/ with per-question results."""
    from .data import dataset_folder

    rows = {}
    for model_dir in sorted(p for p in Path(run_dir, "eval").glob("*") if p.is_dir()):
        folder = model_dir / dataset_folder(dataset)
        verdicts = per_question(folder) if folder.is_dir() else None
        if verdicts:
            rows[model_dir.name] = verdicts
    return rows


def compare_models(run_dir: str | Path, dataset: str | None = None, n_resamples: int = N_RESAMPLES,
                   seed: int = 0) -> dict:
    """Every pair of evaluated model rows of a run on one test dataset (default: the run's first, from
    summary.json, or the only one evaluated), matched by question id:
    {"sml_vs_sft": {"diff", "ci95", "p", "n", "a_only", "b_only", ...}, ...}."""
    run_dir = Path(run_dir)
    if dataset is None:
        datasets = run_datasets(run_dir)
        if not datasets:
            return {}
        dataset = datasets[0]
    return compare_rows(eval_rows(run_dir, dataset), n_resamples, seed)


def run_datasets(run_dir: str | Path) -> list[str]:
    """The run's test datasets: summary.json's list, else every dataset folder under RUN/eval/."""
    run_dir = Path(run_dir)
    try:
        listed = json.loads((run_dir / "summary.json").read_text()).get("datasets") or []
    except (OSError, ValueError):
        listed = []
    from .data import dataset_folder

    named = {dataset_folder(d) for d in listed}
    found = sorted({p.name for p in run_dir.glob("eval/*/*") if p.is_dir()} - named)
    return list(listed) + found


def compare_all(run_dir: str | Path, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """{dataset: compare_models(run_dir, dataset)} for every test dataset of the run that has any pair."""
    out = {}
    for dataset in run_datasets(run_dir):
        pairs = compare_models(run_dir, dataset, n_resamples, seed)
        if pairs:
            out[dataset] = pairs
    return out


def compare_eval_dirs(a: str | Path, b: str | Path, n_resamples: int = N_RESAMPLES, seed: int = 0) -> dict:
    """Two evaluation folders (predictions.jsonl or rerank.jsonl) of the same questions, or two run folders
    (every dataset both evaluated: each row of A against each row of B)."""
    a, b = Path(a), Path(b)
    one, two = per_question(a), per_question(b)
    if one is not None and two is not None:
        return {f"{a.name}_vs_{b.name}" if a.name != b.name else "a_vs_b": compare_pair(one, two, n_resamples, seed)}
    if one is not None or two is not None:
        raise ValueError("compare two evaluation folders (predictions.jsonl/rerank.jsonl) or two run folders")
    out = {}
    for dataset in run_datasets(a):
        rows_a, rows_b = eval_rows(a, dataset), eval_rows(b, dataset)
        for ka, va in rows_a.items():
            for kb, vb in rows_b.items():
                try:
                    out.setdefault(dataset, {})[f"A.{ka}_vs_B.{kb}"] = compare_pair(va, vb, n_resamples, seed)
                except ValueError:
                    continue
    if not out:
        raise ValueError(f"no evaluated questions in common between {a} and {b}")
    return out


def format_comparisons(comparisons: Mapping[str, dict]) -> str:
    """One line per pair, for a person."""
    lines = []
    for name, c in comparisons.items():
        lines.append(f"{name:<32} diff {100 * c['diff']:+6.1f} pts  95% CI [{100 * c['ci95'][0]:+.1f}, "
                     f"{100 * c['ci95'][1]:+.1f}]  McNemar p={c['p']:.3g}  n={c['n']} "
                     f"(only a right {c['a_only']}, only b right {c['b_only']})")
    return "\n".join(lines)
