"""The failure guard: the signatures of a PPO run going wrong (METHOD.md, stage 4), checked every iteration.

    nan             a watched metric (reward, KL, entropy, losses) is NaN or infinite
    kl              KL(policy || reference) per sequence above `max_kl` (the policy left the SFT model)
    entropy         mean per-token entropy below `min_entropy` (the policy collapsed onto a few outputs)
    length          mean response length below `min_response_length` (length collapse)
    reward_hacking  accuracy (on the test split or on held-out training questions) fell more than
                    `accuracy_drop` below its best while the reward-model score rose above what it was
                    at that best (the policy exploits the reward model)

kl, entropy and length must persist for `patience` consecutive iterations (one noisy batch is not a
trend); nan trips at once. The guard only decides; the trainer stops or rolls back to the last good
checkpoint and names the signal.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

WATCHED = ("ppo/reward_mean", "ppo/score_mean", "ppo/kl", "ppo/entropy", "losses/policy", "losses/value")


@dataclass
class Alarm:
    signal: str  # nan | kl | entropy | length | reward_hacking
    message: str


class GuardTripped(RuntimeError):
    """A PPO run stopped by the failure guard. `signal` names what tripped; `last_good` is the step of the
    last good checkpoint (its weights are the run's saved model)."""

    def __init__(self, alarm: Alarm, step: int, last_good: int | None, out: str | None = None):
        where = (
            f"; the saved model is the last good checkpoint (step {last_good})"
            if last_good is not None
            else ""
        )
        where += f" in {out}" if out else ""
        super().__init__(
            f"PPO stopped at step {step} by the failure guard [{alarm.signal}]: {alarm.message}{where}"
        )
        self.signal, self.step, self.last_good = alarm.signal, step, last_good


@dataclass
class GuardState:
    strikes: dict = field(default_factory=lambda: {"kl": 0, "entropy": 0, "length": 0})
    best_accuracy: float | None = None
    best_step: int | None = None
    reward_at_best: float | None = None
    window: list = field(default_factory=list)  # score means since the last evaluation


class FailureGuard:
    """Thresholds set to None are not checked."""

    def __init__(
        self,
        max_kl: float | None = None,
        min_entropy: float | None = None,
        min_response_length: float | None = None,
        accuracy_drop: float | None = None,
        patience: int = 1,
    ):
        if patience < 1:
            raise ValueError(f"guard patience must be >= 1, got {patience}")
        self.max_kl, self.min_entropy, self.min_length = max_kl, min_entropy, min_response_length
        self.accuracy_drop, self.patience = accuracy_drop, patience
        self.state = GuardState()

    def observe(self, step: int, metrics: dict) -> Alarm | None:
        """Check one iteration's metrics (the same on every process)."""
        bad = [k for k in WATCHED if k in metrics and not math.isfinite(metrics[k])]
        if bad:
            return Alarm("nan", f"non-finite {', '.join(f'{k}={metrics[k]}' for k in bad)} at step {step}")
        s = self.state
        score = metrics.get("ppo/score_mean")
        if score is not None:
            s.window.append(score)
            if s.best_accuracy is not None and s.reward_at_best is None:
                # The best accuracy was measured before any rollout (step 0): this iteration's rollouts came
                # from that same policy, so its score is the reward that goes with that accuracy.
                s.reward_at_best = score
        checks = (
            (
                "kl",
                self.max_kl,
                metrics.get("ppo/kl"),
                lambda v, b: v > b,
                "KL to the reference {v:.3f} nats per sequence is above max_kl={b}",
            ),
            (
                "entropy",
                self.min_entropy,
                metrics.get("ppo/entropy"),
                lambda v, b: v < b,
                "policy entropy {v:.4f} nats per token is below min_entropy={b} (collapse)",
            ),
            (
                "length",
                self.min_length,
                metrics.get("rollout/response_length"),
                lambda v, b: v < b,
                "mean response length {v:.2f} tokens is below min_response_length={b} (length collapse)",
            ),
        )
        for name, bound, value, crossed, text in checks:
            if bound is None or value is None:
                continue
            s.strikes[name] = s.strikes[name] + 1 if crossed(value, bound) else 0
            if s.strikes[name] >= self.patience:
                extra = f" for {s.strikes[name]} iterations" if self.patience > 1 else ""
                return Alarm(name, text.format(v=value, b=bound) + extra)
        return None

    def observe_accuracy(self, step: int, accuracy: float) -> tuple[Alarm | None, bool]:
        """Check a periodic test accuracy. Returns (alarm or None, whether this point counts as good:
        accuracy within `accuracy_drop` of the best so far)."""
        s = self.state
        window = sum(s.window) / len(s.window) if s.window else None
        s.window = []
        if s.best_accuracy is None or accuracy > s.best_accuracy:
            s.best_accuracy, s.best_step, s.reward_at_best = accuracy, step, window
            return None, True
        drop = self.accuracy_drop if self.accuracy_drop is not None else math.inf
        fell = accuracy < s.best_accuracy - drop
        rose = window is not None and s.reward_at_best is not None and window > s.reward_at_best
        if fell and rose:
            return Alarm(
                "reward_hacking",
                f"accuracy fell to {accuracy:.3f} from its best {s.best_accuracy:.3f} (step "
                f"{s.best_step}) while the reward-model score rose to {window:.3f} from "
                f"{s.reward_at_best:.3f}",
            ), False
        return None, not fell

    def reset_strikes(self) -> None:
        """After a rollback: the streaks and the reward window belong to the discarded weights."""
        self.state.strikes = {k: 0 for k in self.state.strikes}
        self.state.window = []

    def state_dict(self) -> dict:
        return asdict(self.state)

    def load_state_dict(self, data: dict) -> None:
        self.state = GuardState(**data)
