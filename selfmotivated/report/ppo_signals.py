"""The PPO section's optimisation signals: how PPO's updates behaved, per iteration, for SML's PPO and for the
PPO against the answer checker (the control) side by side. A key a log lacks (an older trainer, a setting that
does not produce it) reads "not logged"."""

from __future__ import annotations

import statistics

from .blocks import Table, num
from .runs import Run
from .signals import _series

NOT_LOGGED = "not logged"
UNDEFINED = "undefined"  # logged, but never a number: rm_auroc when every iteration's rollouts all agree

# key in ppo/metrics.jsonl, label, digits, scale (100: a share shown in %)
SIGNALS = (
    ("ppo/score_mean", "score PPO maximises (per sequence)", 3, 1.0),
    ("ppo/reward_mean", "reward after the KL penalty (score - beta * KL)", 3, 1.0),
    ("ppo/rm_score_mean", "reward-model score", 3, 1.0),
    ("ppo/rm_auroc", "reward-model AUROC on the rollouts (0.5 = chance)", 3, 1.0),
    ("ppo/kl", "KL to the SFT model (nats per sequence)", 3, 1.0),
    ("ppo/entropy", "entropy (nats per token)", 3, 1.0),
    ("ppo/clipfrac", "clip fraction", 3, 1.0),
    ("ppo/approx_kl", "approx. KL(old || new) of an update", 4, 1.0),
    ("ppo/minibatches", "minibatch steps per iteration", 1, 1.0),
    ("ppo/epochs", "epochs per iteration", 2, 1.0),
    ("ppo/early_stop", "iterations stopped early by target_kl (%)", 1, 100.0),
    ("ppo/critic_warmup", "iterations training only the critic (%)", 1, 100.0),
    ("ppo/explained_variance", "critic explained variance (GAE)", 3, 1.0),
    ("ppo/advantage_abs_mean", "mean |advantage|", 3, 1.0),
    ("rollout/correct_frac", "rollouts answered right (%)", 1, 100.0),
    ("rollout/no_answer_frac", "rollouts with no readable answer (%)", 1, 100.0),
    ("rollout/truncated_frac", "rollouts cut at the token limit (%)", 1, 100.0),
    ("rollout/response_length", "rollout response length (tokens)", 1, 1.0),
    ("time/iteration", "seconds per iteration", 1, 1.0),
    ("time/generate", "seconds generating per iteration", 1, 1.0),
    ("time/update", "seconds updating per iteration", 1, 1.0),
)
ACCURACY = "eval/accuracy"


def iterations(rows: list[dict]) -> int:
    """Iteration rows of a PPO log: those with any ppo/ or rollout/ figure (not the step-0 evaluation row)."""
    return sum(any(k.startswith(("ppo/", "rollout/")) for k in r) for r in rows)


def signal_summary(rows: list[dict], key: str) -> dict | None:
    """{first, last, mean, max, max_step, n} of one key over a log's rows, or None if never logged.
    NaN and absent values are left out: rm_auroc is undefined when an iteration's rollouts all agree."""
    series = _series(rows, key)
    if not series:
        return None
    values = [v for _, v in series]
    top = max(series, key=lambda sv: sv[1])
    return {"first": values[0], "last": values[-1], "mean": statistics.fmean(values), "max": top[1],
            "max_step": top[0], "n": len(values)}


def _cells(rows: list[dict], key: str, digits: int, scale: float) -> list[str]:
    s = signal_summary(rows, key)
    if s is None:
        return [UNDEFINED if any(key in r for r in rows) else NOT_LOGGED] * 3
    return [num(scale * s[k], digits) for k in ("first", "last", "mean")]


def headline(rows: list[dict], run_record: dict | None, accuracy_label: str) -> dict[str, str]:
    """The few figures that say whether PPO moved the policy: label -> text."""
    kl, clip = signal_summary(rows, "ppo/kl"), _series(rows, "ppo/clipfrac")
    out = {"iterations logged": str(iterations(rows)),
           "status": (run_record or {}).get("status") or "n/a (no run.json)"}
    out["KL to the SFT model: first, max (nats per sequence)"] = (
        f"{kl['first']:.3f}, {kl['max']:.3f} (step {kl['max_step']})" if kl else NOT_LOGGED)
    out["iterations with clipfrac > 0 (%)"] = (
        f"{100 * sum(v > 0 for _, v in clip) / len(clip):.1f} of {len(clip)}" if clip else NOT_LOGGED)
    evals = _series(rows, ACCURACY)
    if evals:
        best = max(evals, key=lambda e: e[1])
        out[f"{accuracy_label} (%): first, best, last"] = (
            f"{100 * evals[0][1]:.1f} (step {evals[0][0]}), {100 * best[1]:.1f} (step {best[0]}), "
            f"{100 * evals[-1][1]:.1f} (step {evals[-1][0]})")
    else:
        out[f"{accuracy_label} (%): first, best, last"] = NOT_LOGGED
    return out


def ppo_logs(run: Run) -> list[tuple[str, list[dict], dict | None]]:
    """(name, rows, run.json) of the PPO logs the run has: SML's PPO, then PPO against the checker."""
    logs = [("SML's PPO", run.ppo_log, run.ppo_run), ("PPO vs checker", run.checker_log, run.checker_run)]
    return [(name, rows, record) for name, rows, record in logs if rows]


def signal_tables(run: Run, accuracy_label: str) -> list:
    """A headline table (a column per log) and the signals' first/last/mean (three columns per log)."""
    logs = ppo_logs(run)
    if not logs:
        return []
    heads = [headline(rows, record, accuracy_label) for _, rows, record in logs]
    summary = Table([""] + [name for name, _, _ in logs],
                    [[label] + [h[label] for h in heads] for label in heads[0]])
    header = ["signal"] + [f"{name} {k}" for name, _, _ in logs for k in ("first", "last", "mean")]
    rows = [[label] + [c for _, log, _ in logs for c in _cells(log, key, digits, scale)]
            for key, label, digits, scale in SIGNALS]
    accuracy = [c for _, log, _ in logs for c in _cells(log, ACCURACY, 1, 100.0)]
    rows.append([f"{accuracy_label} (%)"] + accuracy)
    return [summary, Table(header, rows)]
