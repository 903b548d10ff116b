"""The reward section's validity part: does the reward model's score track the answer checker on what PPO will
sample (reward/validity.json, written by selfmotivated/validity.py), and does it beat provenance alone?"""

from __future__ import annotations

import math
from pathlib import Path

from .blocks import Image, Para, Table, num, pct
from .config import ReportConfig
from .plots import validity_plot
from .runs import Run, _get, _num

READING = ("AUROC is the chance that a sample the checker calls right outscores one it calls wrong: "
           "0.5 is chance, 1 a perfect ranking, below 0.5 the reward model prefers wrong answers. Within a "
           "question, right and wrong samples differ in the answer they state, so a reward model that merely "
           "prefers some answers everywhere scores above 0.5 there too: the scorer that knows only the stated "
           "answer (its mean score on other questions) measures that much, and on tasks with few answers the "
           "split by gold answer shows it (a preference is right on one side, wrong on the other). The "
           "provenance baseline is the pairwise accuracy of a scorer that knows only how each rationale was "
           "made (gold-hinted > free > wrong-hinted): a reward model at or below it has learned how "
           "rationales were made, not whether they are right.")


def auroc_interval(value: float | None, n_right, n_wrong) -> tuple[float, float] | None:
    """Approximate 95% interval of an AUROC from the sizes of its two classes (Hanley and McNeil 1982,
    Radiology 143:29, eq. 2): enough to tell an AUROC of 0.6 on 40 samples from one on 4,000."""
    n1, n2 = _num(n_right), _num(n_wrong)
    if value is None or not n1 or not n2:
        return None
    q1, q2 = value / (2 - value), 2 * value * value / (1 + value)
    var = (value * (1 - value) + (n1 - 1) * (q1 - value ** 2) + (n2 - 1) * (q2 - value ** 2)) / (n1 * n2)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return max(0.0, value - half), min(1.0, value + half)


def _gate(run: Run, v: dict) -> str:
    """PPO's gate: its threshold and what it decided (or would decide) on the figure it reads (ppo/gate.py:
    the within-question AUROC with a per-question baseline, rloo, the default; else the overall AUROC)."""
    from ..ppo.gate import edit_figure, gate_figure

    value, which = gate_figure(v, (_get(run.config, "ppo", "advantage") or "rloo") == "rloo")
    value = _num(value)
    threshold = _num(_get(run.config, "ppo", "min_reward_auroc"))
    if threshold is None and isinstance(run.config.get("ppo"), dict):  # the config leaves it at the default
        from ..ppo.config import PPOConfig

        threshold = PPOConfig.__dataclass_fields__["min_reward_auroc"].default
    if "ppo" in run.refused:
        return f"refused PPO (min_reward_auroc {num(threshold, 2)})"
    if threshold is None:
        return "n/a (no ppo section in the run config)"
    if threshold == 0:
        return "off (min_reward_auroc 0)"
    if value is None:
        return f"min_reward_auroc {threshold:.2f}; {which} undefined"
    verdict = "passes" if value >= threshold else "below it"
    if value < threshold and _get(run.stages, "ppo", "status") in ("done", "running"):
        overall = _num(v.get("auroc"))
        verdict += (f" (PPO ran: the gate of the version that started it read the overall AUROC, {num(overall)})"
                    if which != "AUROC" and overall is not None and overall >= threshold else " (PPO ran anyway)")
    edits, kind, n = edit_figure(v)
    if edits is not None:
        verdict += (f"; the answer-edit probe ({kind}, {n} edits) {edits:.3f}: "
                    f"{'passes' if edits >= threshold else 'below it'}")
    return f"min_reward_auroc {threshold:.2f} on the {which}: {verdict}"


def _verdict(value: float | None, n) -> str:
    if value is None:
        return "undefined (every sample right, or every one wrong)"
    if value <= 0.5:
        what = "no better than chance: the score does not track correctness on what PPO will sample"
    elif value < 0.6:
        what = "barely above chance: little signal for PPO"
    else:
        what = "above chance"
    return f"{value:.3f} on {n if n is not None else 'n/a'} samples, {what}"


def _answer_figures(run: Run, v: dict) -> dict:
    """The answer-prior and by-gold figures (selfmotivated/validity.py), computed from the samples when the
    validity report predates them."""
    if "answer_prior_within_question_auroc" in v or not run.validity_rows:
        return v
    from ..validity import answer_prior_within_question_auroc, within_question_auroc_by_gold

    return {**v, "answer_prior_within_question_auroc": answer_prior_within_question_auroc(run.validity_rows),
            "within_question_auroc_by_gold": within_question_auroc_by_gold(run.validity_rows)}


_EDIT_WORDS = {"negated": "negated", "other": "changed to another wrong number"}


def _habit(v: dict) -> str | None:
    """A sentence when the within-question AUROC looks like a preference for some answers, not a check."""
    within, prior = _num(v.get("within_question_auroc")), _num(v.get("answer_prior_within_question_auroc"))
    by_gold = {g: _num(_get(d, "auroc")) for g, d in (v.get("within_question_auroc_by_gold") or {}).items()
               if _num(_get(d, "n_questions")) and _num(_get(d, "n_questions")) >= 5}
    below = [g for g, a in by_gold.items() if a is not None and a < 0.5]
    above = [g for g, a in by_gold.items() if a is not None and a > 0.5]
    if below and above:
        return (f"The reward model prefers some answers whatever the question: among a question's own samples it "
                f"favours the right ones when the gold is {', '.join(above)}, the wrong ones when it is "
                f"{', '.join(below)}. What it tells PPO about a question's answers does not depend on the question.")
    negated = _num(_get(v, "answer_edit_probe", "negated", "original_above"))
    if negated is not None and negated < 0.5:
        return (f"The reward model scores a right sample below the same text with its answer negated in "
                f"{100 * (1 - negated):.0f}% of cases: it likes the sign of an answer, not its correctness, and "
                "PPO can raise its score by changing signs.")
    if within is not None and prior is not None and within <= prior:
        return (f"A scorer that knows only each sample's stated answer (or that it states none) orders a "
                f"question's samples at least as well ({prior:.3f}) as the reward model ({within:.3f}): the "
                "reward model adds nothing to what the stated answer alone tells.")
    return None


def _figures(run: Run, v: dict, pairwise: float | None, provenance: float | None) -> list:
    """The validity figures as a table, with where they come from and how to read them."""
    v = _answer_figures(run, v)
    value, n, n_right = _num(v.get("auroc")), v.get("n"), _num(v.get("n_correct"))
    n_wrong = _num(n) - n_right if _num(n) is not None and n_right is not None else None
    interval = auroc_interval(value, n_right, n_wrong)
    s = v.get("settings") if isinstance(v.get("settings"), dict) else {}
    sampled = (f"{s.get('n', 'n/a')} per question, temperature {s.get('temperature', 'n/a')}, up to "
               f"{s.get('max_new_tokens', 'n/a')} new tokens") if s else "n/a"
    rows = [
        ["AUROC of the score against the answer checker",
         (f"{num(value)} on {n if n is not None else 'n/a'} samples ({v.get('n_correct', 'n/a')} right) "
          f"of {v.get('n_questions', 'n/a')} questions")],
        ["approx. 95% interval (Hanley-McNeil)",
         f"{interval[0]:.3f} to {interval[1]:.3f}" if interval else "n/a"],
        ["within-question AUROC",
         (f"{num(v.get('within_question_auroc'))} over {v.get('n_questions_with_both', 'n/a')} questions "
          "with both right and wrong samples")],
        ["its 95% interval (bootstrap over those questions)", _interval(v.get("within_question_auroc_ci95"))],
        ["within-question AUROC of a scorer that knows only the stated answer",
         num(v.get("answer_prior_within_question_auroc"))],
        *([f"within-question AUROC, questions whose gold is {gold}", f"{num(_get(g, 'auroc'))} over "
           f"{_get(g, 'n_questions', default='n/a')} questions"]
          for gold, g in (v.get("within_question_auroc_by_gold") or {}).items()),
        *([f"right samples scored above their copy with the answer {_EDIT_WORDS.get(kind, kind)} (%)",
           f"{pct(_get(e, 'original_above'))} of {_get(e, 'n', default='n/a')}"]
          for kind, e in (v.get("answer_edit_probe") or {}).items()),
        ["mean score of right samples", num(v.get("mean_score_correct"))],
        ["mean score of wrong samples", num(v.get("mean_score_wrong"))],
        ["samples cut at the token limit (%)", pct(v.get("truncated_frac"))],
        ["held-out pairwise accuracy (all pair types)", num(pairwise)],
        ["provenance-only baseline on the same pairs", num(provenance)],
        ["PPO's gate", _gate(run, v)],
        ["sampled", sampled],
    ]
    copy = (" (summary.json's copy: reward/validity.json is not in this folder)"
            if v.get("source") == "summary.json" else "")
    here = f"Here: AUROC {_verdict(value, n)}"
    if pairwise is not None and provenance is not None:
        side = "above" if pairwise > provenance else "at or below"
        here += f"; held-out pairs {pairwise:.3f}, {side} the {provenance:.3f} that provenance alone gives"
    habit = _habit(v)
    if habit:
        here += ". " + habit.rstrip(".")
    return [
        Para("Reward validity: fresh samples of the SFT policy, drawn as PPO draws them, on training "
             "questions neither the rationales nor PPO use, scored by the reward model and checked against "
             f"the gold by the answer checker{copy}:"),
        Table(["reward validity", ""], rows),
        Para(READING, "note"),
        Para(here + "."),
    ]


def validity_blocks(run: Run, config: ReportConfig, plot_dir: Path) -> list:
    """The validity figures, their reading, the pair-type table and the score histogram."""
    v = run.validity or {}
    held = _get(run.reward, "metrics", "heldout") or {}
    by_type = v.get("by_pair_type") or held.get("accuracy_by_pair_type") or {}
    provenance = _num(v.get("provenance_baseline_accuracy"))
    if provenance is None:
        provenance = _num(held.get("provenance_baseline_accuracy"))
    pairwise = _num(v.get("pairwise_accuracy"))
    if pairwise is None:
        pairwise = _num(held.get("pairwise_accuracy"))
    if not v and not by_type and provenance is None:
        return [Para("No reward validity report (reward/validity.json): the reward stage of this run "
                     "predates it, or this folder is a copy that left it out.", "note")]
    blocks = []
    if v:
        blocks += _figures(run, v, pairwise, provenance)
    elif provenance is not None:
        blocks.append(Para(f"Provenance-only baseline on the held-out pairs: {provenance:.3f} (no validity "
                           "samples in this folder). " + READING, "note"))
    if by_type:
        rows = [[t, num(_get(d, "accuracy")), _get(d, "n_pairs", default="n/a")] for t, d in by_type.items()]
        rows.append(["provenance-only baseline (all pairs)", num(provenance), ""])
        blocks += [Para("Held-out pairwise accuracy by pair type (the kinds of the better > worse "
                        "rationale: free = sampled without a hint, gold = gold-hinted, wrong = wrong-hinted; "
                        "a tie counts half, chance is 0.5):"),
                   Table(["pair type", "accuracy", "pairs"], rows)]
    if config.plots:
        path = validity_plot(run, plot_dir / "reward_validity.png")
        if path is not None:
            blocks.append(Image(path, "Reward validity: reward-model scores of fresh policy samples the "
                                      "checker calls right (green) and wrong (red)"))
    return blocks


def _interval(ci) -> str:
    return f"{ci[0]:.3f} to {ci[1]:.3f}" if isinstance(ci, (list, tuple)) and len(ci) == 2 else "n/a"
