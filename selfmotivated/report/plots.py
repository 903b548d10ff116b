"""The report's plots: matplotlib's object API on an Agg canvas (no pyplot, no global figure state, no display)."""

from __future__ import annotations

import math
import statistics
from pathlib import Path

from .answer_classes import (
    accuracy_by_class, answer_classifier, class_shares, same_answer, sign_class, spoken,
)
from .blocks import _model_keys
from .runs import MODELS, Run, _get, _num, _pick_before_after
from .signals import _series


COLORS = {"base": "#a0a0a0", "base_few_shot": "#5f5f5f", "sft": "#4c72b0", "sml": "#dd8452",
          "ppo_checker": "#8172b3", "sft_round2": "#937860", "sml_best_of_n": "#55a868"}
SHORT = {"base": "base\nzero-shot", "base_few_shot": "base\nfew-shot", "sft": "SFT", "sml": "SML",
         "ppo_checker": "PPO vs\nchecker", "sft_round2": "SFT\nround 2", "sml_best_of_n": "SML\nbest-of-N"}
RIGHT, WRONG = "#55a868", "#c44e52"  # samples the answer checker calls right / wrong
_PUBLISHED_STYLES = [("black", "-"), ("#7b3294", ":"), ("#008837", "-.")]


def _figure(width: float, height: float, nrows: int = 1, ncols: int = 1):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _bar_values(cell: dict | None) -> tuple[float, float, float] | None:
    """(accuracy %, distance down to the CI's low end, up to its high end) for error bars."""
    if not cell or cell.get("accuracy") is None:
        return None
    y = 100 * cell["accuracy"]
    lo, hi = cell.get("ci95") or (cell["accuracy"], cell["accuracy"])
    return y, max(0.0, y - 100 * lo), max(0.0, 100 * hi - y)


def accuracy_plot(run: Run, published: dict, published_keys: list[str], path: Path) -> Path | None:
    """Grouped bars: one group per dataset, one bar per model, 95% CI error bars; published rows as lines.
    Many datasets wrap onto several rows of panels, so the figure stays readable at page width."""
    keys = [k for k in _model_keys(run) if any(_bar_values(c) for c in run.accuracy.get(k, {}).values())]
    datasets = [d for d in run.datasets if any(_bar_values(run.accuracy.get(k, {}).get(d)) for k in keys)]
    if not keys or not datasets:
        return None
    m = len(keys)
    group = 0.42 * m + 0.6  # inches per dataset group
    per_row = max(1, min(len(datasets), int(14 / group)))
    chunks = [datasets[i:i + per_row] for i in range(0, len(datasets), per_row)]
    fig, axes = _figure(max(9.0, 1.6 + per_row * group), 4.4 * len(chunks) + 1.2, len(chunks), 1)
    width = 0.8 / m
    bars = [_bar_values(run.accuracy[k].get(d)) for k in keys for d in datasets]
    top = max([y + h for y, _, h in filter(None, bars)]
              + [v for k in published_keys for d, v in published["rows"][k]["accuracy"].items()
                 if v is not None and d in datasets] + [1.0])
    for ax, chunk in zip(axes[:, 0], chunks):
        for i, key in enumerate(keys):
            xs, ys, lo, hi = [], [], [], []
            for j, d in enumerate(chunk):
                v = _bar_values(run.accuracy[key].get(d))
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v[0]), lo.append(v[1]), hi.append(v[2])
            ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=3, color=COLORS.get(key, f"C{i}"),
                   label=MODELS.get(key, key) if ax is axes[0, 0] else None,
                   error_kw={"elinewidth": 1, "ecolor": "#333333"})
            if m * len(chunk) <= 40:  # value labels stay legible up to about this many bars
                for x, y, h in zip(xs, ys, hi):
                    ax.text(x, y + h + 0.8, f"{y:.1f}", ha="center", va="bottom", fontsize=7)
        for k, key in enumerate(published_keys):
            row = published["rows"][key]
            color, style = _PUBLISHED_STYLES[k % len(_PUBLISHED_STYLES)]
            if key == "random":
                color, style = "#888888", "--"
            label = f"{row['label']} (published)" if ax is axes[0, 0] else None
            for j, d in enumerate(chunk):
                v = row["accuracy"].get(d)
                if v is not None:
                    # zorder: over the bars, the point is to see which bars clear the line
                    ax.hlines(v, j - 0.45, j + 0.45, colors=color, linestyles=style, linewidth=1.8,
                              label=label, zorder=3)
                    label = None  # one legend entry per row
        rotate = len(chunk) > 3
        ax.set_xticks(range(len(chunk)), chunk, rotation=20 if rotate else 0,
                      ha="right" if rotate else "center")
        ax.set_xlim(-0.5, per_row - 0.5)  # the same bar width on every row
        ax.set_ylim(0, min(105.0, top * 1.12 + 4))
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    fig.suptitle("Test accuracy by stage (error bars: 95% Wilson interval)")
    fig.legend(loc="outside lower center", ncols=2, fontsize=8, frameon=False)
    return _save(fig, path)


def _smooth(values: list[float]) -> list[float]:
    """Trailing moving average over about a twentieth of the run (at least 3 points)."""
    w = max(3, len(values) // 20)
    return [statistics.fmean(values[max(0, i - w + 1): i + 1]) for i in range(len(values))]


def ppo_plot(rows: list[dict], path: Path, accuracy_label: str = "test accuracy") -> Path | None:
    """2x2 against the iteration: reward-model score (and reward after the KL penalty), KL, entropy,
    accuracy on PPO's evaluation questions (`accuracy_label` names them)."""
    from matplotlib.ticker import MaxNLocator

    panels = [
        ("ppo/score_mean", "sequence score", "Score PPO maximises", 1.0),
        ("ppo/kl", "KL(policy || SFT), nats per sequence", "KL to the SFT model", 1.0),
        ("ppo/entropy", "entropy, nats per token", "Policy entropy", 1.0),
        ("eval/accuracy", f"{accuracy_label} (%)", accuracy_label[0].upper() + accuracy_label[1:], 100.0),
    ]
    if not any(_series(rows, key) for key, *_ in panels):
        return None
    fig, axes = _figure(10.5, 7.2, 2, 2)
    events = [(r.get("step"), "stop" if r.get("guard/stop") else "rollback") for r in rows
              if (r.get("guard/stop") or r.get("guard/rollback")) and _num(r.get("step")) is not None]
    for ax, (key, ylabel, title, scale) in zip(axes.flat, panels):
        series = _series(rows, key)
        lines = [(series, "score" if key == "ppo/score_mean" else None, "C0")]
        if key == "ppo/score_mean":
            lines.append((_series(rows, "ppo/reward_mean"), "score - beta * KL", "C1"))
        for data, label, color in lines:
            if not data:
                continue
            steps, values = [s for s, _ in data], [scale * v for _, v in data]
            if key == "eval/accuracy" or len(values) < 25:
                marker = "o" if key == "eval/accuracy" else None
                ax.plot(steps, values, marker=marker, markersize=4, color=color, label=label)
            else:  # raw values faint, a moving average on top
                ax.plot(steps, values, color=color, alpha=0.3, linewidth=0.8)
                smooth_label = f"{label} (moving average)" if label else None
                ax.plot(steps, _smooth(values), color=color, label=smooth_label)
        for step, kind in events:
            ax.axvline(step, color="red", linestyle=":", linewidth=1)
        if not series:
            ax.text(0.5, 0.5, "not logged", ha="center", va="center", transform=ax.transAxes, color="#777777")
        ax.set_title(title)
        ax.set_xlabel("PPO iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if key == "ppo/score_mean" and series:
            ax.legend(fontsize=8)
    note = "  (red dotted lines: the guard stopped or rolled back)" if events else ""
    fig.suptitle("PPO training curves" + note)
    return _save(fig, path)


def reward_score_plot(run: Run, path: Path) -> Path | None:
    """Held-out scores per tier (box from the stored quantiles) and best-of-N scores by answer correctness."""
    by_tier = _get(run.reward, "metrics", "heldout", "score_by_tier") or {}
    stats = []
    for tier in sorted(by_tier, key=lambda t: float(t) if str(t).lstrip("-").isdigit() else 0):
        d = by_tier[tier]
        values = [_num(_get(d, k)) for k in ("p10", "p50", "p90", "min", "max", "mean")]
        if all(v is not None for v in values):
            p10, p50, p90, lo, hi, mean = values
            stats.append({"label": f"tier {tier}\n(n={_get(d, 'n', default='?')})", "q1": p10, "med": p50,
                          "q3": p90, "whislo": lo, "whishi": hi, "mean": mean, "fliers": []})
    scores = run.rerank_scores
    if not stats and not scores:
        return None
    panels = [p for p in ("tiers", "rerank") if (p == "tiers" and stats) or (p == "rerank" and scores)]
    fig, axes = _figure(5.2 * len(panels) + 0.6, 4.4, 1, len(panels))
    for ax, panel in zip(axes[0], panels):
        if panel == "tiers":
            ax.bxp(stats, showmeans=True, patch_artist=True,
                   boxprops={"facecolor": "#c6dbef"}, medianprops={"color": "#08519c", "linewidth": 2})
            ax.set_title("Held-out rationales: score by tier\n(box 10th-90th percentile, line median, "
                         "whiskers min-max, triangle mean)", fontsize=9)
            ax.set_ylabel("reward-model score")
            ax.set_xlabel("tier (higher is better)")
        else:
            right = [s for s, c in scores if c]
            wrong = [s for s, c in scores if not c]
            lo, hi = min(s for s, _ in scores), max(s for s, _ in scores)
            bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
            if right:
                ax.hist(right, bins=bins, alpha=0.55, color=RIGHT, label=f"correct answer (n={len(right)})")
            if wrong:
                ax.hist(wrong, bins=bins, alpha=0.55, color=WRONG, label=f"wrong answer (n={len(wrong)})")
            ax.set_title("Best-of-N test samples: score by correctness", fontsize=9)
            ax.set_xlabel("reward-model score")
            ax.set_ylabel("samples")
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Reward-model scores")
    return _save(fig, path)


def validity_plot(run: Run, path: Path) -> Path | None:
    """The reward validity samples (fresh samples of the SFT policy as PPO draws them). Left: histograms of the
    reward-model score of the samples the answer checker calls right and of those it calls wrong (cut-off
    samples hatched). Right: the same within each question (score minus the mean score of its question's
    samples, over the questions with both a right and a wrong sample), which is all a per-question baseline
    leaves PPO: a score that only tells easy questions from hard ones separates the left panel, not this one."""
    scores = [(r["score"], r["correct"]) for r in run.validity_rows]
    if not scores:
        return None
    from ..metrics import auroc

    value = _num(_get(run.validity, "auroc"))
    if value is None:  # no validity.json beside the samples: the same figure, from the samples
        value = auroc([s for s, _ in scores], [c for _, c in scores])
    questions = [(r["id"], r["finished"]) for r in run.validity_rows]
    fig, axes = _figure(12.0 if questions else 7.0, 4.4, ncols=2 if questions else 1)
    ax = axes[0, 0]
    lo, hi = min(s for s, _ in scores), max(s for s, _ in scores)
    bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
    finished = [f for _, f in questions] if questions else [True] * len(scores)
    for want, color, what in ((True, RIGHT, "right"), (False, WRONG, "wrong")):
        done = [s for (s, c), f in zip(scores, finished) if c == want and f]
        cut = [s for (s, c), f in zip(scores, finished) if c == want and not f]
        both = done + cut
        if both:
            ax.hist(both, bins=bins, alpha=0.55, color=color,
                    label=f"answer {what} (n={len(both)}, mean {statistics.fmean(both):.2f})")
        if cut:
            ax.hist(cut, bins=bins, color=color, fill=False, hatch="///", label=f"  of which cut off (n={len(cut)})")
    shown = "undefined" if value is None else f"{value:.3f}"
    ax.set_title(f"Reward validity: AUROC {shown} (n={len(scores)} samples; 0.5 = chance)")
    ax.set_xlabel("reward-model score")
    ax.set_ylabel("samples")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    if questions:
        by_question: dict[str, list] = {}
        for (score, correct), (qid, _) in zip(scores, questions):
            by_question.setdefault(qid, []).append((score, correct))
        centred = []
        for rows in by_question.values():
            if len({c for _, c in rows}) == 2:
                mean = statistics.fmean(s for s, _ in rows)
                centred += [(s - mean, c) for s, c in rows]
        ax = axes[0, 1]
        if centred:
            lo, hi = min(s for s, _ in centred), max(s for s, _ in centred)
            bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
            for want, color, what in ((True, RIGHT, "right"), (False, WRONG, "wrong")):
                values = [s for s, c in centred if c == want]
                if values:
                    ax.hist(values, bins=bins, alpha=0.55, color=color,
                            label=f"answer {what} (n={len(values)}, mean {statistics.fmean(values):+.2f})")
            ax.legend(fontsize=8)
        within = _num(_get(run.validity, "within_question_auroc"))
        n_both = sum(len({c for _, c in rows}) == 2 for rows in by_question.values())
        ax.set_title(f"Within a question: AUROC {'n/a' if within is None else f'{within:.3f}'} "
                     f"({n_both} questions with both)")
        ax.set_xlabel("score minus its question's mean score")
        ax.grid(alpha=0.3)
    return _save(fig, path)


# The panels of ppo_signals_plot: title, y label, (key, line style, name) per line, scale, reference line
_SIGNAL_PANELS = (
    ("Score PPO maximises", "sequence score", (("ppo/score_mean", "-", ""),), 1.0, None),
    ("KL to the SFT model", "nats per sequence", (("ppo/kl", "-", ""),), 1.0, None),
    ("Rollouts answered right", "% of rollouts", (("rollout/correct_frac", "-", ""),), 100.0, None),
    ("Clip fraction and approx. KL", "per minibatch, averaged",
     (("ppo/clipfrac", "-", "clipfrac"), ("ppo/approx_kl", "--", "approx_kl")), 1.0, None),
    ("Rollouts cut at the token limit", "% of rollouts", (("rollout/truncated_frac", "-", ""),), 100.0, None),
    ("Reward-model AUROC on the rollouts", "AUROC (0.5 = chance)", (("ppo/rm_auroc", "-", ""),), 1.0, 0.5),
)


def ppo_signals_plot(logs: list[tuple[str, list[dict], str]], path: Path) -> Path | None:
    """2x3 panels of PPO's optimisation signals against the iteration, one colour per log (name, rows,
    colour): SML's PPO and the PPO against the checker in the same panels."""
    from matplotlib.ticker import MaxNLocator

    logs = [(name, rows, color) for name, rows, color in logs if rows]
    if not any(_series(rows, key) for _, rows, _ in logs for _, _, lines, _, _ in _SIGNAL_PANELS
               for key, _, _ in lines):
        return None
    fig, axes = _figure(14.0, 7.6, 2, 3)
    for ax, (title, ylabel, lines, scale, reference) in zip(axes.flat, _SIGNAL_PANELS):
        drawn = False
        for name, rows, color in logs:
            for key, style, what in lines:
                data = _series(rows, key)
                if not data:
                    continue
                drawn = True
                steps, values = [s for s, _ in data], [scale * v for _, v in data]
                label = f"{name} {what}".strip()
                if len(values) < 25:
                    ax.plot(steps, values, linestyle=style, color=color, label=label,
                            marker="o" if len(values) < 8 else None, markersize=3)
                else:  # raw values faint, a moving average on top
                    ax.plot(steps, values, linestyle=style, color=color, alpha=0.25, linewidth=0.8)
                    ax.plot(steps, _smooth(values), linestyle=style, color=color,
                            label=f"{label} (moving average)")
        if reference is not None and drawn:
            ax.axhline(reference, color="#777777", linestyle=":", linewidth=1)
        if drawn:
            ax.legend(fontsize=7)
        else:  # a key logged only as NaN (rm_auroc when all rollouts agree) is not the same as no key
            logged = any(key in r for _, rows, _ in logs for r in rows for key, _, _ in lines)
            ax.text(0.5, 0.5, "undefined on every iteration" if logged else "not logged", ha="center",
                    va="center", transform=ax.transAxes, color="#777777")
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("PPO iteration")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
    fig.suptitle("PPO optimisation signals" + (" (" + ", ".join(n for n, _, _ in logs) + ")" if logs else ""))
    return _save(fig, path)


def length_plot(run: Run, path: Path) -> Path | None:
    """Test response lengths before PPO (SFT, else base) and after (SML); the rollout length during PPO."""
    from matplotlib.ticker import MaxNLocator

    before, after, common = _pick_before_after(run)
    shown = [k for k in (before, after) if k]
    rollout = _series(run.ppo_log, "rollout/response_length")
    if not shown and not rollout:
        return None
    panels = (["test"] if shown else []) + (["rollout"] if rollout else [])
    fig, axes = _figure(5.4 * len(panels) + 0.6, 4.2, 1, len(panels))
    for ax, panel in zip(axes[0], panels):
        if panel == "test":
            data = {}
            for key in shown:
                sets = common or list(run.lengths[key])
                data[key] = [t for d in sets for t, _ in run.lengths[key].get(d, [])]
            every = [t for v in data.values() for t in v]
            lo, hi = (min(every), max(every)) if every else (0, 1)
            bins = [lo + (hi - lo) * i / 30 for i in range(31)] if hi > lo else 10
            for key, values in data.items():
                if values:
                    cut = sum(f == "length" for d in (common or list(run.lengths[key]))
                              for _, f in run.lengths[key].get(d, []))
                    ax.hist(values, bins=bins, histtype="stepfilled", alpha=0.45, color=COLORS.get(key, "C0"),
                            edgecolor=COLORS.get(key, "C0"), linewidth=1.5,
                            label=f"{MODELS.get(key, key)}: mean {statistics.fmean(values):.0f}, "
                                  f"{100 * cut / len(values):.0f}% cut at the limit")
            ax.set_title("Test answers: response length" + (f" ({', '.join(common)})" if common else ""),
                         fontsize=9)
            ax.set_xlabel("new tokens per answer")
            ax.set_ylabel("answers")
            ax.legend(fontsize=7)
        else:
            steps, values = [s for s, _ in rollout], [v for _, v in rollout]
            ax.plot(steps, values, color="#dd8452", alpha=0.4 if len(values) >= 25 else 1)
            if len(values) >= 25:
                ax.plot(steps, _smooth(values), color="#dd8452", label="moving average")
                ax.legend(fontsize=8)
            ax.set_ylim(0, 1.1 * max(values))  # from zero: a steady length looks steady, a collapse like one
            ax.set_title("PPO rollouts: mean response length", fontsize=9)
            ax.set_xlabel("PPO iteration")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("tokens")
        ax.grid(alpha=0.3)
    fig.suptitle("Response length before and after PPO")
    return _save(fig, path)


def answers_plot(run: Run, path: Path, max_labels: int = 5) -> Path | None:
    """For each test set whose answers fall into a few classes (yes/no, choice letters; the sign on numeric tasks
    with negative golds: `answer_classes`): per model, the accuracy on the questions of each class of gold
    answer. A model that reasons is right on all of them; one that answers by habit is right on the habit's
    questions only, whatever its overall accuracy."""
    import numpy as np

    panels = []
    for d in run.datasets:
        keys = [k for k in MODELS if run.answers.get(k, {}).get(d)]
        golds = [g for k in keys for _, g in run.answers[k][d]]
        classify = answer_classifier(golds, max_labels)
        if keys and classify is not None:
            panels.append((d, keys, sorted({c for g in golds if (c := classify(g)) is not None}), classify))
    if not panels:
        return None
    fig, axes = _figure(max(5.0, 1.2 * max(len(p[1]) for p in panels) + 2.5) * len(panels), 4.2, 1, len(panels))
    for ax, (d, keys, classes, classify) in zip(axes[0], panels):
        x = np.arange(len(keys))
        width = 0.8 / len(classes)
        split = {k: accuracy_by_class(run.answers[k][d], classify) for k in keys}
        for i, c in enumerate(classes):
            values = [100 * split[k][c][0] / split[k][c][1] if split[k].get(c) else 0.0 for k in keys]
            n = max(split[k].get(c, (0, 0))[1] for k in keys)
            ax.bar(x + (i - (len(classes) - 1) / 2) * width, values, width, label=f"gold {spoken(c)} (n={n})")
        ax.set_xticks(x, [MODELS.get(k, k).split(" (")[0] for k in keys], rotation=20, ha="right", fontsize=7)
        ax.set_ylim(0, 100)
        ax.set_ylabel("% right on questions with this gold answer")
        ax.set_title(f"{d}: accuracy by {'gold sign' if classify is sign_class else 'gold answer'}", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3, axis="y")
    fig.suptitle("Reasoning or habit? Accuracy split by the gold answer")
    return _save(fig, path)


def answer_drift_plot(run: Run, path: Path, max_labels: int = 5) -> Path | None:
    """For each PPO run with held-out evaluations (SML's, the checker control's): the share of its answers in each
    class (`answer_classes`) at each evaluated iteration, dashed at the gold answers' share, with the accuracy.
    PPO that learns a habit shows as one class's share climbing to 100% while accuracy falls toward that
    class's share of the golds."""
    panels = []
    for key, name in (("ppo", "SML's PPO"), ("ppo_checker", "PPO against the checker")):
        steps = run.ppo_eval_answers.get(key) or []
        classify = answer_classifier([g for _, pairs in steps for _, g in pairs], max_labels)
        if len(steps) >= 2 and classify is not None:
            panels.append((name, steps, classify))
    if not panels:
        return None
    fig, axes = _figure(5.2 * len(panels), 3.8, 1, len(panels))
    for ax, (name, steps, classify) in zip(axes[0], panels):
        xs = [step for step, _ in steps]
        shares = [class_shares(pairs, classify) for _, pairs in steps]
        classes = sorted({c for given, golds in shares for c in (*given, *golds)})
        for i, c in enumerate(classes):
            ax.plot(xs, [100 * given.get(c, 0.0) for given, _ in shares], marker="o", color=f"C{i}",
                    label=f"answers {spoken(c)}")
            ax.axhline(100 * shares[0][1].get(c, 0.0), color=f"C{i}", linestyle="--", linewidth=1)
        accuracy = [100 * sum(same_answer(p, g) for p, g in pairs) / len(pairs) for _, pairs in steps]
        ax.plot(xs, accuracy, marker="s", color="black", label="accuracy")
        ax.set_ylim(0, 100)
        ax.set_xlabel("PPO iteration")
        ax.set_ylabel("% of held-out questions")
        ax.set_title(f"{name}: answers by class (dashed: share of the golds)", fontsize=9)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("Does PPO learn a habit? The spread of its answers during training")
    return _save(fig, path)


def compare_plot(runs: list[Run], datasets: list[str], path: Path) -> Path | None:
    """One panel per dataset: models on the x axis, one bar per run, 95% CI error bars."""
    datasets = [d for d in datasets if any(_bar_values(r.accuracy.get(k, {}).get(d)) for r in runs
                                           for k in r.accuracy)]
    if not datasets:
        return None
    ncols = min(3, len(datasets))
    nrows = math.ceil(len(datasets) / ncols)
    fig, axes = _figure(4.6 * ncols, 3.8 * nrows + 0.6, nrows, ncols)
    width = 0.8 / len(runs)
    for ax, d in zip(axes.flat, datasets):
        keys = [k for k in dict.fromkeys(k for r in runs for k in _model_keys(r))
                if any(_bar_values(r.accuracy.get(k, {}).get(d)) for r in runs)]
        for i, r in enumerate(runs):
            xs, ys, lo, hi = [], [], [], []
            for j, key in enumerate(keys):
                v = _bar_values(r.accuracy.get(key, {}).get(d))
                if v is not None:
                    xs.append(j - 0.4 + width * (i + 0.5))
                    ys.append(v[0]), lo.append(v[1]), hi.append(v[2])
            ax.bar(xs, ys, width * 0.9, yerr=[lo, hi], capsize=2, color=f"C{i}",
                   label=r.name if d == datasets[0] else None, error_kw={"elinewidth": 1})
        ax.set_xticks(range(len(keys)), [SHORT.get(k, k) for k in keys], fontsize=8)
        ax.set_title(d)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(axis="y", alpha=0.3)
        ax.set_axisbelow(True)
    for ax in list(axes.flat)[len(datasets):]:
        ax.set_visible(False)
    fig.suptitle("Test accuracy by run (error bars: 95% Wilson interval)")
    fig.legend(loc="outside lower center", ncols=min(4, len(runs)), fontsize=8, frameon=False)
    return _save(fig, path)
