"""PPO's failure signatures (METHOD.md stage 4), read from the log after the fact."""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import dataclass

from .config import ReportConfig
from .runs import _num


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
