"""How well the automatic tiers and the reward model agree with people's labels: pure functions, no I/O.

- Cohen's kappa (Cohen 1960): kappa = (p_o - p_e) / (1 - p_e), with p_o the observed agreement and p_e the
  agreement expected from the two raters' marginal shares alone. None where it is undefined (p_e = 1: both
  raters used one and the same category throughout).
- AUROC of a score against a yes/no label: the Mann-Whitney form, the share of (positive, negative) pairs
  whose positive scores higher, a tie counting one half. None without both a positive and a negative.

Tier against label. The rank's tiers and a person's three labels line up as: the top tier claims sound
reasoning, the bottom tier a wrong rationale, a tier between them a right answer that its reasoning does
not support (with the default rules 3 / 2 / 1: free correct and gold-hinted consistent / gold-hinted
inconsistent and free unsupported / wrong). A rationale left out of the rank (tier None) has its own row
in the confusion table and counts in no kappa. Every label counts once: a rationale two people labelled
gives two (tier, label) observations.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from itertools import combinations
from typing import Hashable, Iterable, Sequence

from ..metrics import auroc  # one AUROC for the project: validity report, rollouts, people's labels
from .store import LABELS

SOUND = "sound"


def cohen_kappa(pairs: Iterable[tuple[Hashable, Hashable]]) -> float | None:
    """Cohen's kappa of two raters over paired categorical judgements (any hashable categories)."""
    pairs = list(pairs)
    n = len(pairs)
    if n == 0:
        return None
    observed = sum(1 for a, b in pairs if a == b) / n
    first, second = Counter(a for a, _ in pairs), Counter(b for _, b in pairs)
    expected = sum(first[c] * second[c] for c in first) / (n * n)
    if expected >= 1.0:
        return None
    return (observed - expected) / (1.0 - expected)


def tier_label(tier: int | None, top_tier: int | None, bottom_tier: int | None) -> str | None:
    """The label a tier claims (see the module docstring); None for a rationale left out of the rank."""
    if tier is None or top_tier is None:
        return None
    if tier >= top_tier:
        return "sound"
    if bottom_tier is not None and tier <= bottom_tier:
        return "wrong"
    return "right_unsound"


def confusion(pairs: Iterable[tuple[Hashable, Hashable]], rows: Sequence, cols: Sequence) -> list[list[int]]:
    """Counts[i][j] of pairs (rows[i], cols[j]); pairs outside the given categories are an error."""
    index_r, index_c = {r: i for i, r in enumerate(rows)}, {c: j for j, c in enumerate(cols)}
    table = [[0] * len(cols) for _ in rows]
    for a, b in pairs:
        if a not in index_r or b not in index_c:
            raise ValueError(f"pair {(a, b)!r} outside the categories {list(rows)} x {list(cols)}")
        table[index_r[a]][index_c[b]] += 1
    return table


def _agreement(pairs: list[tuple]) -> dict:
    n = len(pairs)
    return {"n": n, "agreement": sum(1 for a, b in pairs if a == b) / n if n else None,
            "kappa": cohen_kappa(pairs)}


def figures(labels: Sequence[dict], scores: dict[int, float] | None = None) -> dict:
    """Every figure of the agreement panel from label rows (rid, annotator, label, kind, tier, top_tier,
    bottom_tier, and optionally score). `scores` (rid -> reward score) wins over a label's own snapshot."""
    scores = scores or {}
    labels = [r for r in labels if r["label"] in LABELS]
    tiers = sorted({r["tier"] for r in labels if r["tier"] is not None}, reverse=True)
    row_keys = [str(t) for t in tiers] + (["none"] if any(r["tier"] is None for r in labels) else [])
    out: dict = {
        "n_labels": len(labels),
        "n_rationales": len({r["rid"] for r in labels}),
        "annotators": dict(sorted(Counter(r["annotator"] for r in labels).items())),
        "label_counts": {lab: sum(1 for r in labels if r["label"] == lab) for lab in LABELS},
        "confusion": {
            "rows": row_keys, "cols": list(LABELS),
            "counts": confusion([("none" if r["tier"] is None else str(r["tier"]), r["label"]) for r in labels],
                                row_keys, LABELS),
        },
    }
    # Tier against people: the tier's claimed label vs the person's, every label once.
    claimed = [(tier_label(r["tier"], r.get("top_tier"), r.get("bottom_tier")), r) for r in labels]
    claimed = [(c, r) for c, r in claimed if c is not None]
    out["tier_vs_label"] = _agreement([(c, r["label"]) for c, r in claimed])
    # The SFT set is the top tier: how well "top tier" picks out sound reasoning, as a yes/no question.
    top = [(c == SOUND, r["label"] == SOUND) for c, r in claimed]
    n_top = sum(1 for t, _ in top if t)
    n_sound = sum(1 for _, s in top if s)
    out["top_tier_vs_sound"] = {
        **_agreement(top),
        "n_top_tier": n_top, "n_sound": n_sound,
        # precision: of the top-tier rationales people labelled, the share they call sound
        "precision": sum(1 for t, s in top if t and s) / n_top if n_top else None,
        # recall: of the rationales people call sound, the share the tiers put on top
        "recall": sum(1 for t, s in top if t and s) / n_sound if n_sound else None,
    }
    # Whether the answer is right, the part of a rationale the checks do see: every tier above the bottom
    # claims the gold answer, and a person's "sound" and "right answer, unsound reasoning" both grant it.
    right = [(c != "wrong", r["label"] != "wrong") for c, r in claimed]
    out["right_answer"] = _agreement(right)
    out["tier_auroc"] = auroc([r["tier"] for _, r in claimed], [r["label"] == SOUND for _, r in claimed])
    out["by_kind"] = {kind: _agreement([(c, r["label"]) for c, r in claimed if r["kind"] == kind])
                      for kind in sorted({r["kind"] for _, r in claimed})}
    # Independent of the tier rules: the people's labels of each kind/outcome the checks found.
    by_outcome: dict[str, Counter] = defaultdict(Counter)
    for r in labels:
        if r.get("outcome"):
            by_outcome[f"{r['kind']}/{r['outcome']}"][r["label"]] += 1
    out["by_outcome"] = {key: {lab: c[lab] for lab in LABELS} for key, c in sorted(by_outcome.items())}
    out["by_annotator"] = {name: _agreement([(c, r["label"]) for c, r in claimed if r["annotator"] == name])
                           for name in out["annotators"]}
    # Reward model: its score against "sound", one observation per label.
    scored = [(scores.get(r["rid"], r.get("score")), r["label"] == SOUND) for r in labels]
    scored = [(s, y) for s, y in scored if s is not None]
    out["reward"] = {"n": len(scored), "n_sound": sum(1 for _, y in scored if y),
                     "auroc": auroc([s for s, _ in scored], [y for _, y in scored]) if scored else None}
    out["inter_annotator"] = inter_annotator(labels)
    return out


def inter_annotator(labels: Sequence[dict]) -> dict:
    """Agreement between annotators on the rationales both labelled: per pair of annotators, and pooled
    over every pair (a rationale three people labelled gives three pairs)."""
    by_rid: dict[int, dict[str, str]] = defaultdict(dict)
    for r in labels:
        by_rid[r["rid"]][r["annotator"]] = r["label"]
    per_pair: dict[tuple[str, str], list] = defaultdict(list)
    for judged in by_rid.values():
        for a, b in combinations(sorted(judged), 2):
            per_pair[(a, b)].append((judged[a], judged[b]))
    pooled = [p for pairs in per_pair.values() for p in pairs]
    return {
        "n_rationales": sum(1 for judged in by_rid.values() if len(judged) > 1),
        "pairs": [{"annotators": [a, b], **_agreement(pairs)} for (a, b), pairs in sorted(per_pair.items())],
        "pooled": _agreement(pooled),
    }
