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


# Fewer questions with both a right and a wrong sample than this make the within-question AUROC too noisy to
# gate on; the gate then reads the overall AUROC and says so.
MIN_QUESTIONS_WITH_BOTH = 10


def gate_figure(report: dict, within_question: bool) -> tuple[float | None, str]:
    """(value, name) of the validity figure the gate reads: the within-question AUROC for a per-question
    baseline when enough questions have both a right and a wrong sample, else the overall AUROC.

    On a task with few answers (yes/no, choices) whose report splits the within-question AUROC by gold answer,
    with enough questions on two sides or more, the gate reads the lowest side. Why: within a question, right
    and wrong samples differ in the answer they state, so a reward model that prefers "no" everywhere orders
    the samples of every "no" question right and of every "yes" question wrong, and its mean looks fine when
    the golds lean to "no". PPO against it teaches the wrong answer on the other side."""
    n_both = report.get("n_questions_with_both") or 0
    if within_question and report.get("within_question_auroc") is not None and n_both >= MIN_QUESTIONS_WITH_BOTH:
        sides = {gold: g["auroc"] for gold, g in (report.get("within_question_auroc_by_gold") or {}).items()
                 if g.get("auroc") is not None and g.get("n_questions", 0) >= MIN_QUESTIONS_WITH_BOTH}
        if len(sides) >= 2:
            gold = min(sides, key=sides.get)
            return sides[gold], (f"within-question AUROC of the questions whose gold is {gold} (the lowest of "
                                 f"{len(sides)} gold answers)")
        return report["within_question_auroc"], "within-question AUROC"
    return report.get("auroc"), "AUROC"


def edit_figure(report: dict) -> tuple[float | None, str | None, int]:
    """(share, edit kind, edits) of the answer-edit probe's weakest kind with enough edits: how often the reward
    model scores a right held-out sample above the same text with its answer edited (validity.py). A pairwise
    probability like an AUROC, read against the same threshold; (None, None, 0) when the report has no probe."""
    kinds = {kind: e for kind, e in (report.get("answer_edit_probe") or {}).items()
             if e.get("original_above") is not None and e.get("n", 0) >= MIN_QUESTIONS_WITH_BOTH}
    if not kinds:
        return None, None, 0
    kind = min(kinds, key=lambda k: kinds[k]["original_above"])
    return kinds[kind]["original_above"], kind, kinds[kind]["n"]


def check_reward_validity(reward_path: str | Path, min_auroc: float, within_question: bool = False) -> dict | None:
    """Refuse (RewardModelInvalid) when the reward model's validity report, from fresh samples of held-out
    training questions, says its score does not follow the answer checker: the AUROC is below min_auroc.
    `within_question` (PPO with a per-question baseline, advantage rloo): the AUROC among each question's own
    samples, averaged over questions, since the baseline cancels whatever the score says about the question
    itself, and only the order of a question's samples moves the policy. No report (a reward model from
    elsewhere): a warning."""
    if not min_auroc:
        return None
    path = find_validity_report(reward_path)
    if path is None:
        log.warning("no validity.json for the reward model %s: its agreement with the answer checker is unknown "
                    "(`sml reward` writes one; --min-reward-auroc 0 silences this)", reward_path)
        return None
    report = json.loads(path.read_text())
    n_both = report.get("n_questions_with_both") or 0
    value, which = gate_figure(report, within_question)
    if which != "AUROC":
        what = (f"the AUROC of its score against the answer checker among each question's own samples (mean over "
                f"the {n_both} held-out training questions with a right and a wrong one of {report.get('n', '?')} "
                f"fresh samples) is {{shown}}")
        if which != "within-question AUROC":
            what = (f"the {which} is {{shown}} (over all {n_both} held-out training questions with a right and "
                    f"a wrong sample: {report['within_question_auroc']:.3f}): it prefers some answers whatever "
                    "the question")
        why = (f"PPO's per-question baseline cancels what the score says about a question, so only the order of a "
               f"question's own samples moves the policy (the overall AUROC, {report.get('auroc') or 0:.3f}, also "
               f"counts which questions are easy). ")
    else:
        if within_question:
            log.warning("reward validity: %d question(s) with a right and a wrong sample, fewer than %d: the gate "
                        "reads the overall AUROC", n_both, MIN_QUESTIONS_WITH_BOTH)
        why = ""
        what = (f"AUROC of its score against the answer checker on {report.get('n', '?')} fresh samples of held-out "
                f"training questions is {{shown}}")
    if value is None or value < min_auroc:
        shown = "undefined (every sample right, or every one wrong)" if value is None else f"{value:.3f}"
        raise RewardModelInvalid(
            f"the reward model {reward_path} does not track correctness: {what.format(shown=shown)}, below "
            f"min_reward_auroc={min_auroc} ({path}). {why}PPO against it would optimise noise; retrain it, or "
            f"pass --min-reward-auroc 0 (ppo.min_reward_auroc: 0) to run anyway", report)
    # Why also this: the within-question AUROC is measured on the policy's own samples, and an answer the policy
    # never writes (chain_sum's SFT model wrote no negative number) is absent from them, however much the reward
    # model likes it. The edited copies put such answers in front of it.
    share, kind, n = edit_figure(report)
    if share is not None and share < min_auroc:
        how = {"negated": "negated"}.get(kind, "changed to another wrong number")
        raise RewardModelInvalid(
            f"the reward model {reward_path} does not check answers: it scores a right held-out sample above the "
            f"same text with its answer {how} in {share:.3f} of {n} cases, below min_reward_auroc={min_auroc} "
            f"({path}, answer_edit_probe). PPO against it would learn to change answers, not to reason; retrain "
            "it (reward.answer_edits), or pass --min-reward-auroc 0 (ppo.min_reward_auroc: 0) to run anyway",
            report)
    return report
