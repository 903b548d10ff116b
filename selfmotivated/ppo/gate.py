"""PPO's gate: refuse to optimise a reward model whose validity report says it does not track correctness.
Torch-free, so the pipeline can catch the refusal without importing the trainer."""

from __future__ import annotations

import json
import logging
from pathlib import Path

log = logging.getLogger(__name__)


class RewardModelInvalid(ValueError):
    """The reward model's validity report says it does not track correctness; PPO against it would optimise
    noise. Carries the report."""

    def __init__(self, message: str, report: dict):
        super().__init__(message)
        self.report = report


def find_validity_report(reward_path: str | Path) -> Path | None:
    """The validity report `sml reward` wrote beside (OUT/validity.json) or inside its model folder."""
    from ..validity import VALIDITY_FILE

    folder = Path(reward_path)
    for candidate in (folder / VALIDITY_FILE, folder.parent / VALIDITY_FILE):
        if candidate.is_file():
            return candidate
    return None


def check_reward_validity(reward_path: str | Path, min_auroc: float) -> dict | None:
    """Refuse (RewardModelInvalid) when the reward model's AUROC against the answer checker, on fresh samples
    of held-out training questions, is below min_auroc. No report (a reward model from elsewhere): a warning."""
    if not min_auroc:
        return None
    path = find_validity_report(reward_path)
    if path is None:
        log.warning("no validity.json for the reward model %s: its agreement with the answer checker is unknown "
                    "(`sml reward` writes one; --min-reward-auroc 0 silences this)", reward_path)
        return None
    report = json.loads(path.read_text())
    value = report.get("auroc")
    if value is None or value < min_auroc:
        shown = "undefined (every sample right, or every one wrong)" if value is None else f"{value:.3f}"
        raise RewardModelInvalid(
            f"the reward model {reward_path} does not track correctness: AUROC of its score against the answer "
            f"checker on {report.get('n', '?')} fresh samples of held-out training questions is {shown}, "
            f"below min_reward_auroc={min_auroc} ({path}). PPO against it would optimise noise; retrain it, or "
            f"pass --min-reward-auroc 0 (ppo.min_reward_auroc: 0) to run anyway", report)
    return report
