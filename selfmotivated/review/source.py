"""The rationales of a run folder as the review page shows them: ranked once, with the run's own rank rules,
and held in memory (a few thousand rows), so filtering and paging cost nothing per request."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .store import text_sha

KIND_TEXT = {"free": "free", "gold": "gold-hinted", "wrong": "wrong-hinted"}
_KEEP = ("rid", "question_id", "kind", "target", "sample_index", "text", "answer", "forced", "forced_text", "leak",
         "outcome", "tier", "status", "finish_reason", "n_tokens", "response")


def run_rank_config(run_dir: str | Path):
    """The RankConfig the run was ranked with (the `rank` section of RUN/config.yaml), else the default: the
    tiers people are asked about must be the ones the run trained on."""
    from ..config import build_config
    from ..rationales import RankConfig

    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        import yaml

        data = yaml.safe_load(path.read_text()) or {}
        rank = data.get("rank") if isinstance(data, dict) else None
        if isinstance(rank, dict) and rank:
            return build_config(RankConfig, rank, f"{path}: rank")
    return RankConfig()


@dataclass
class ReviewData:
    run_dir: Path
    questions: dict = field(default_factory=dict)  # id -> question row (question, gold, choices, dataset, prompt)
    rationales: list = field(default_factory=list)  # annotated rows, question order then tier (high first)
    by_rid: dict = field(default_factory=dict)
    datasets: list = field(default_factory=list)
    tiers: list = field(default_factory=list)  # tiers in use, high to low
    top_tier: int | None = None
    bottom_tier: int | None = None

    def context(self, rid: int) -> dict:
        """A rationale row with what a label snapshots (see store.LabelStore.set_label)."""
        return {**self.by_rid[rid], "top_tier": self.top_tier, "bottom_tier": self.bottom_tier}

    def is_current(self, label: dict) -> bool:
        """Whether a stored label still points at the rationale it was given to (same id, same text)."""
        row = self.by_rid.get(label["rid"])
        return row is not None and row["text_sha"] == label["text_sha"]

    def current_labels(self, labels: list[dict]) -> tuple[list[dict], int]:
        """(labels whose rationale is unchanged, with today's tier and kind; how many were left out)."""
        kept = []
        for label in labels:
            if self.is_current(label):
                row = self.by_rid[label["rid"]]
                kept.append({**label, "tier": row["tier"], "kind": row["kind"], "outcome": row["outcome"],
                             "top_tier": self.top_tier, "bottom_tier": self.bottom_tier})
        return kept, len(labels) - len(kept)


def load_review_data(run_dir: str | Path, rank_config=None) -> ReviewData:
    """Rank every stored rationale of RUN (no row left out: duplicates, leaks and excluded rows are shown
    with their status) and index them by id."""
    from ..rationales import RationaleStore, rank_all

    run_dir = Path(run_dir)
    config = rank_config or run_rank_config(run_dir)
    with RationaleStore(run_dir, readonly=True) as store:
        questions = store.questions()
        ranking = rank_all(questions, store.rationales(), config)
    data = ReviewData(run_dir=run_dir, questions=questions, top_tier=config.top_tier)
    tiers_in_rules = [t for t in config.tiers.values() if t is not None]
    data.bottom_tier = min(tiers_in_rules) if tiers_in_rules else None
    for qid, result in ranking["per_question"].items():
        rows = [{**{k: r[k] for k in _KEEP}, "text_sha": text_sha(r["text"]),
                 "dataset": questions[qid]["dataset"]} for r in result["all"]]
        # Tier high to low, rows left out of the rank last; storage order within a tier.
        rows.sort(key=lambda r: -r["tier"] if r["tier"] is not None else float("inf"))
        data.rationales += rows
    data.by_rid = {r["rid"]: r for r in data.rationales}
    data.datasets = sorted({q["dataset"] for q in questions.values()})
    data.tiers = sorted({r["tier"] for r in data.rationales if r["tier"] is not None}, reverse=True)
    return data
