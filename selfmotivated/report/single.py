"""The report of one run folder."""

from __future__ import annotations

import datetime
import json
import logging
import statistics
from pathlib import Path

from .blocks import (
    Bullets, Code, Heading, Image, Para, Table, fmt_cell, fmt_seconds, _has, _model_keys, num, _overlap,
    pct, _published_cells, _published_label, _published_shown, _published_sources,
)
from .answer_classes import favourite_answer, spoken
from .config import ReportConfig
from .paired import paired_blocks
from .plots import (
    COLORS, accuracy_plot, answer_drift_plot, answers_plot, length_plot, ppo_plot, ppo_signals_plot,
    reward_score_plot,
)
from .ppo_signals import ppo_logs, signal_tables
from .runs import (
    BEST_OF_N, CONTROLS, MODELS, STAGE_NAMES, Run, _get, _num, _pick_before_after, _why_absent,
    controls_configured, refused_stage,
)
from .signals import Signal, failure_signatures, _series, _thresholds
from .validity import validity_blocks

log = logging.getLogger(__name__)


def single_report(run: Run, published: dict, config: ReportConfig, plot_dir: Path) -> tuple[str, list]:
    """The title and blocks of one run's report."""
    blocks: list = []
    sections = [
        ("Run", _header_section),
        ("Test accuracy", _accuracy_section),
        ("Rationales", _rationale_section),
        ("Reward model", _reward_section),
        ("PPO", _ppo_section),
        ("Plots", _plots_section),
        ("What to look at", _facts_section),
        ("Missing", _missing_section),
    ]
    from ..review import has_labels

    if has_labels(run.path):  # people's labels of the rationales (`sml review`)
        from ..review.report_block import review_section

        sections.insert(4, ("People's labels", review_section))
    for title, build in sections:
        blocks.append(Heading(1, title))
        try:
            blocks += build(run, published, config, plot_dir)
        except Exception as err:  # one broken part must not cost the rest of the report
            log.exception("report section %r failed", title)
            blocks.append(Para(f"this section could not be built: {type(err).__name__}: {err}", "warn"))
    model = run.summary.get("model") or run.config.get("model") or "unknown model"
    return f"Self-motivated Learning report: {run.name} ({model})", blocks


def _header_section(run: Run, published, config, plot_dir) -> list:
    s, folder = run.summary, run.path.resolve()
    rows = [
        ["run folder", str(folder)],
        ["base model", s.get("model") or run.config.get("model") or "n/a"],
        ["training dataset", s.get("dataset") or run.config.get("dataset") or "n/a"],
        ["test datasets", ", ".join(run.datasets) or "n/a"],
        ["run started (config.yaml written)", _mtime(run.path / "config.yaml")],
        ["summary written", _mtime(run.path / "summary.json")],
        ["report written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")],
    ]
    if s.get("command"):
        command = s["command"]
        rows.append(["command", " ".join(command) if isinstance(command, list) else str(command)])
    elif (run.path / "config.yaml").is_file():
        rows.append(["command to rerun or resume", f"sml run {folder / 'config.yaml'} --out {folder}"])
    blocks = [Table(["run", ""], rows)]
    if run.stages:
        total = sum(_num(_get(i, "seconds")) or 0 for i in run.stages.values())
        blocks.append(Table(
            ["stage", "status", "time", "fingerprint"],
            [[name, _get(i, "status", default="n/a"), fmt_seconds(_get(i, "seconds")),
              _get(i, "fingerprint", default="n/a")] for name, i in run.stages.items()]
            + [["total", "", fmt_seconds(total), ""]]))
        blocks += _estimate_blocks(run)
    else:
        blocks.append(Para("No stage record (neither summary.json nor stages.json lists stages).", "note"))
    if run.config:
        source = "config.yaml" if (run.path / "config.yaml").is_file() else "summary.json"
        blocks.append(Code(json.dumps(run.config, indent=2, default=str),
                           f"Resolved pipeline config (from {source}):"))
    return blocks


def _estimate_blocks(run: Run) -> list:
    """The plan made when the run began (RUN/estimate.json, `selfmotivated.estimate`) beside what each stage took."""
    from ..estimate import estimate_beside_actual

    rows = estimate_beside_actual(run.path)
    if not rows:
        return []

    def minutes(m):
        return "n/a" if m is None else f"{m:.1f} min"

    def ratio(r):
        return f"{r['minutes'] / r['estimated_minutes']:.2f}" if r["minutes"] and r["estimated_minutes"] else "n/a"

    return [Para("Estimated before the run (this machine's measured rates; every response at its token limit and "
                 "every rationale kept, so an upper bound) beside what each stage took:"),
            Table(["stage", "estimated", "took", "took / estimated"],
                  [[r["stage"], minutes(r["estimated_minutes"]), minutes(r["minutes"]), ratio(r)] for r in rows])]


def _mtime(path: Path) -> str:
    if not path.is_file():
        return "n/a"
    return datetime.datetime.fromtimestamp(path.stat().st_mtime).strftime("%Y-%m-%d %H:%M")


def _accuracy_section(run: Run, published, config, plot_dir) -> list:
    if not run.accuracy:
        return [Para("No evaluation results yet.", "warn")]
    datasets = run.datasets
    rows = [[MODELS.get(k, k)] + [_accuracy_cell(run, k, d) for d in datasets] for k in _model_keys(run)]
    styles = [""] * len(rows)
    shown = _published_shown(config, published, datasets)
    for key in shown:
        rows.append([_published_label(published["rows"][key], published)]
                    + _published_cells(key, published, datasets))
        styles.append("published")
    blocks = [
        Table(["model"] + datasets, rows, styles),
        Para("Accuracy in % on each test split; ± is half the width of the 95% Wilson interval (the "
             "interval itself is ci95 in summary.json, not symmetric around the accuracy); n is the number "
             "of test questions. Rows marked 'published' are figures from the papers named, not our runs: "
             "'-' where the paper reports none. A cell marked * comes from an unfinished evaluation.",
             "note"),
    ]
    transfer = run.config.get("transfer")
    if isinstance(transfer, dict) and transfer and any(d.endswith("@transfer") for d in datasets):
        settings = ", ".join(f"{k}: {v}" for k, v in transfer.items())
        blocks.append(Para(f"Columns marked @transfer: the same test split one difficulty level above training "
                           f"({settings}); no model was trained on such questions.", "note"))
    for stage, reason in run.refused.items():
        rows_left = [MODELS[k] for k in MODELS if refused_stage(run, k) == stage]
        blocks.insert(1, Para(f"{STAGE_NAMES.get(stage, stage)} was refused by its gate, so there is no row "
                              f"for {' nor '.join(rows_left)}: {reason}", "warn"))
    absent = [k for k in CONTROLS if k not in controls_configured(run) and not run.accuracy.get(k)]
    if absent:
        names = ", ".join(absent)
        blocks.append(Para(f"Control rows not in this run: {names} (`controls: [{names}]` in the run config "
                           "trains and evaluates them from the same SFT start).", "note"))
    if shown:
        blocks.append(_published_sources(shown, published))
    else:
        blocks.append(Para("No published figures for these datasets (published.json covers the 12 Reasoning "
                           "Teachers datasets).", "note"))
    blocks += paired_blocks(run)
    no_answer = [[MODELS.get(k, k)] + [_no_answer(run.accuracy.get(k, {}).get(d)) for d in datasets]
                 for k in _model_keys(run) if run.accuracy.get(k)]
    if any(c != "n/a" for row in no_answer for c in row[1:]):
        blocks += [Para("Share of test answers with no final answer the checker could read (%):"),
                   Table(["model"] + datasets, no_answer)]
    if run.best_of_n:
        rows = [[d, m.get("n_questions", "n/a"), m.get("n_samples", "n/a"),
                 pct(m.get("first_sample_accuracy")), pct(m.get("majority_vote_accuracy")),
                 pct(m.get("best_of_n_accuracy")), pct(m.get("oracle_accuracy")),
                 _get(m, "config", "policy") or "n/a"] for d, m in run.best_of_n.items()]
        blocks += [Para("Best-of-N with the reward model (accuracy %): the first sample, the majority vote, "
                        "the reward model's pick, and whether any sample is right (oracle: an upper bound "
                        "for any reranker):"),
                   Table(["dataset", "questions", "N", "first", "majority", "reward-model pick", "oracle",
                          "policy"], rows)]
    return blocks


def _accuracy_cell(run: Run, key: str, dataset: str) -> str:
    cell = run.accuracy.get(key, {}).get(dataset)
    stage = refused_stage(run, key)
    if stage and not cell:
        return f"{STAGE_NAMES.get(stage, stage)} refused"  # the reason is under the table
    return fmt_cell(cell)


def _no_answer(cell: dict | None) -> str:
    if not cell or cell.get("n_no_answer") is None or not cell.get("n"):
        return "n/a"
    return f"{100 * cell['n_no_answer'] / cell['n']:.1f}"


def _rationale_section(run: Run, published, config, plot_dir) -> list:
    st = run.rationales
    if not st:
        return [Para(f"No rationale store or statistics in this run folder: {_why_absent(run, 'generate')}.", "warn")]
    tiers = sorted({t for s in [st, *st.get("by_dataset", {}).values()] for t in s.get("tiers", {})},
                   key=lambda t: int(t) if str(t).lstrip("-").isdigit() else 0, reverse=True)

    def line(name: str, s: dict) -> list:
        return ([name, s.get("n_questions", "n/a"), s.get("n_rationales", "n/a")]
                + [s.get("tiers", {}).get(t, 0) for t in tiers]
                + [s.get("n_pairs", "n/a"), s.get("n_sft", "n/a"), pct(s.get("share_questions_top_tier")),
                   pct(s.get("share_questions_with_pair")), pct(s.get("leak_rate"))])

    by_dataset = st.get("by_dataset", {})
    rows = [line(d, s) for d, s in by_dataset.items()]
    if len(by_dataset) != 1:
        rows.append(line("all", st))
    blocks = [
        Table(["dataset", "questions", "rationales"] + [f"tier {t}" for t in tiers]
              + ["pairs", "SFT rows", "questions with a top-tier rationale %", "questions with a pair %",
                 "leak rate %"], rows),
        Para(f"Tiers are higher-is-better (top tier {st.get('top_tier', 'n/a')}: the SFT set); the reward "
             f"model trains on every (higher, lower) pair of one question. Duplicates skipped: "
             f"{st.get('n_duplicates_skipped', 'n/a')}; excluded by the tier rules: "
             f"{st.get('n_excluded', 'n/a')}; leaked hints filtered: {st.get('n_leaks_filtered', 'n/a')}.",
             "note"),
    ]
    words = st.get("mean_words", {})
    if words:
        blocks.append(Para(f"Mean rationale length ({st.get('length_unit', 'words')}): "
                           + ", ".join(f"tier {t}: {w}" for t, w in words.items()) + "."))
    outcomes = st.get("outcomes", {})
    if outcomes:
        blocks.append(Table(["kind/outcome", "rationales"], [[k, v] for k, v in outcomes.items()]))
    return blocks


def _reward_section(run: Run, published, config, plot_dir) -> list:
    rec = run.reward
    if not rec:
        return [Para(f"No reward model record (reward/run.json): {_why_absent(run, 'reward')}.", "warn")]
    metrics = rec.get("metrics") or {}
    held = metrics.get("heldout") or {}
    start = metrics.get("heldout_start") or {}
    accuracy = (f"{num(held.get('pairwise_accuracy'))} on {held.get('n_pairs', 'n/a')} pairs of "
                f"{held.get('n_questions', 'n/a')} questions")
    blocks = [Table(["reward model", ""], [
        ["status", rec.get("status", "n/a")],
        ["held-out pairwise accuracy", accuracy],
        ["before training", num(start.get("pairwise_accuracy"))],
        ["held-out loss", num(held.get("val_loss"), 4)],
        ["training steps", metrics.get("steps", "n/a")],
        ["training time", fmt_seconds(metrics.get("train_seconds"))],
    ])]
    if not held:
        blocks.append(Para("No held-out evaluation in the record (val_fraction=0, or training did not reach "
                           "one).", "warn"))
    by_gap = held.get("accuracy_by_tier_gap") or {}
    if by_gap:
        rows = [[g, num(_get(v, "accuracy")), _get(v, "n_pairs", default="n/a")] for g, v in by_gap.items()]
        blocks += [Para("Held-out pairwise accuracy by tier gap (a tie counts half; chance is 0.5):"),
                   Table(["tier gap", "accuracy", "pairs"], rows)]
    by_tiers = held.get("accuracy_by_tiers") or {}
    if by_tiers:
        blocks.append(Table(["better > worse tier", "accuracy"], [[k, num(v)] for k, v in by_tiers.items()]))
    by_tier = held.get("score_by_tier") or {}
    if by_tier:
        quantities = ("mean", "std", "p10", "p50", "p90")
        rows = [[t, _get(d, "n", default="n/a")] + [num(_get(d, k)) for k in quantities]
                for t, d in by_tier.items()]
        blocks += [Para("Held-out reward-model scores by tier:"),
                   Table(["tier", "n", "mean", "sd", "p10", "median", "p90"], rows)]
    bon = metrics.get("best_of_n")
    if isinstance(bon, dict):
        blocks.append(Para(
            f"Best-of-{bon.get('n_samples', 'N')} on {bon.get('n_questions', 'n/a')} "
            f"{bon.get('dataset') or ''} test questions with the reward stage's policy: reward-model pick "
            f"{pct(bon.get('best_of_n_accuracy'))}%, first sample {pct(bon.get('first_sample_accuracy'))}%, "
            f"majority vote {pct(bon.get('majority_vote_accuracy'))}%, oracle "
            f"{pct(bon.get('oracle_accuracy'))}%."))
    return blocks + validity_blocks(run, config, plot_dir)


_PPO_ROWS = (  # key in the log, name in ppo_overview
    ("ppo/score_mean", "score"),
    ("ppo/reward_mean", "reward"),
    ("ppo/kl", "kl"),
    ("ppo/entropy", "entropy"),
    ("rollout/response_length", "length"),
)


def ppo_overview(run: Run) -> dict:
    """First/last/min/max of the PPO log's main series and the test accuracies, for tables and facts."""
    rows = run.ppo_log
    out: dict = {"iterations": len(_series(rows, "ppo/score_mean"))}
    for key, name in _PPO_ROWS:
        values = [v for _, v in _series(rows, key)]
        if values:
            out[name] = {"first": values[0], "last": values[-1], "max": max(values), "min": min(values)}
    evals = _series(rows, "eval/accuracy")
    if evals:
        out["accuracy"] = {"first": evals[0], "best": max(evals, key=lambda e: e[1]), "last": evals[-1]}
    out["status"] = (run.ppo_run or {}).get("status")
    out["result"] = (run.ppo_run or {}).get("result") or {}
    return out


def ppo_accuracy_label(run: Run) -> str:
    """What PPO's periodic accuracy measured: the test split, or training questions PPO held out."""
    split = _get(run.config, "ppo", "eval_split", default="test")
    return "held-out training accuracy" if split == "heldout" else f"{split} accuracy"


def _ppo_section(run: Run, published, config, plot_dir) -> list:
    blocks = []
    if "ppo" in run.refused:
        blocks.append(Para(f"PPO was refused by its reward-validity gate, so SML has no policy and no row: "
                           f"{run.refused['ppo']}", "warn"))
        gate = _get(run.stages, "ppo", "validity") or {}
        if isinstance(gate, dict) and gate:
            blocks.append(Para(
                f"The gate read AUROC {num(gate.get('auroc')).replace('n/a', 'undefined')} on "
                f"{gate.get('n', 'n/a')} samples "
                f"({gate.get('n_correct', 'n/a')} right) of {gate.get('n_questions', 'n/a')} questions (the "
                "reward section shows the whole validity report)."))
    elif not run.ppo_log:
        blocks.append(Para(f"No PPO log (ppo/metrics.jsonl): {_why_absent(run, 'ppo')}.", "warn"))
    if "ppo_checker" in controls_configured(run) and not run.checker_log:
        blocks.append(Para(f"No log of the PPO against the checker (ppo_checker/metrics.jsonl): "
                           f"{_why_absent(run, 'ppo_checker')}.", "warn"))
    logs = ppo_logs(run)
    if not logs:
        return blocks
    label = ppo_accuracy_label(run)
    control = (" 'PPO vs checker' is the control trained against the answer checker from the same SFT start."
               if run.checker_log else "")
    blocks.append(Para(
        "PPO's optimisation signals over its iterations (first, last and mean of each iteration's "
        f"value).{control} The score is what PPO maximises: the reward-model score and/or the checker's "
        "reward, less the truncation penalty. A clip fraction of 0 on every iteration, or a KL that stays "
        "near 0, means the policy barely moved:"))
    blocks += signal_tables(run, label)
    for name, _, record in logs:
        signal = _get(record, "result", "signal")
        if signal:
            blocks.append(Para(f"{name}: the PPO guard stopped the run [{signal}]: "
                               f"{_get(record, 'result', 'message', default='')}", "warn"))
    if config.plots:
        colors = {"SML's PPO": COLORS["sml"], "PPO vs checker": COLORS["ppo_checker"]}
        path = ppo_signals_plot([(name, rows, colors[name]) for name, rows, _ in logs],
                                plot_dir / "ppo_signals.png")
        if path is not None:
            blocks.append(Image(path, "PPO's optimisation signals by iteration: score, KL to the SFT "
                                "model, share of rollouts right, clip fraction and approx. KL, share cut "
                                "at the token limit, reward-model AUROC on the rollouts"))
    return blocks


def _plots_section(run: Run, published, config, plot_dir) -> list:
    if not config.plots:
        return [Para("Plots were not drawn (plots off).", "note")]
    made = [
        (accuracy_plot(run, published, config.published, plot_dir / "accuracy.png"),
         "Test accuracy by stage and dataset; error bars: 95% Wilson interval; published: lines"),
        (ppo_plot(run.ppo_log, plot_dir / "ppo_curves.png", ppo_accuracy_label(run)),
         f"SML's PPO: the score it maximises, KL to the SFT model, entropy, {ppo_accuracy_label(run)}"),
        (reward_score_plot(run, plot_dir / "reward_scores.png"),
         "Reward-model scores: held-out rationales by tier, and best-of-N test samples by correctness"),
        (length_plot(run, plot_dir / "response_length.png"),
         "Response length before and after PPO (test outputs), and during PPO (rollouts)"),
        (answers_plot(run, plot_dir / "answers_by_gold.png"),
         "Accuracy by gold answer on tasks with few answers (by the gold's sign on numeric tasks with negative "
         "golds): a model answering by habit is right on one side only"),
        (answer_drift_plot(run, plot_dir / "answer_drift.png"),
         "PPO's held-out answers by class at each evaluated iteration (dashed: the golds' share): a habit PPO "
         "learns shows as one class taking over"),
    ]
    blocks = [Image(path, caption) for path, caption in made if path is not None]
    if len(blocks) < len(made):
        blocks.append(Para(f"{len(made) - len(blocks)} plot(s) left out: no data for them yet.", "note"))
    return blocks


def _mean_length(run: Run, key: str, datasets: list[str]) -> tuple[float, float]:
    """Mean new tokens and the share cut at max_new_tokens, over the datasets given (which must have rows)."""
    rows = [r for d in datasets for r in run.lengths.get(key, {}).get(d, [])]
    return statistics.fmean(t for t, _ in rows), sum(f == "length" for _, f in rows) / len(rows)


# What the "what to look at" section compares: (model, against, wording when higher, when lower)
_COMPARISONS = (
    ("sml", "sft", "SML beats SFT-only", "SML is below SFT-only"),
    ("sml", "ppo_checker", "SML beats PPO against the answer checker",
     "SML is below PPO against the answer checker"),
    ("ppo_checker", "sft", "PPO against the answer checker beats SFT-only",
     "PPO against the answer checker is below SFT-only"),
    ("sft_round2", "sft", "SFT round 2 (expert iteration) beats SFT-only",
     "SFT round 2 (expert iteration) is below SFT-only"),
    ("sft", "base", "SFT beats the base model (zero-shot CoT)",
     "SFT is below the base model (zero-shot CoT)"),
    (BEST_OF_N, "sml", "best-of-N beats SML's greedy answer", "best-of-N is below SML's greedy answer"),
)


def _accuracy_facts(run: Run, published: dict) -> list[str]:
    items, acc = [], run.accuracy
    for a, b, up, down in _COMPARISONS:
        for d in run.datasets:
            ca, cb = acc.get(a, {}).get(d), acc.get(b, {}).get(d)
            if not (_has(ca) and _has(cb)):
                continue
            diff = 100 * (ca["accuracy"] - cb["accuracy"])
            overlap = _overlap(ca, cb)
            ci = "" if overlap is None else ("; the 95% intervals overlap, so the difference may be noise"
                                             if overlap else "; the 95% intervals do not overlap")
            if diff == 0:
                items.append(f"{MODELS[a]} and {MODELS[b]} tie on {d} at {pct(ca['accuracy'])}%.")
            else:
                items.append(f"{up if diff > 0 else down} on {d} by {abs(diff):.1f} points "
                             f"({pct(cb['accuracy'])} -> {pct(ca['accuracy'])}){ci}.")
    rows = published["rows"]
    for d in run.datasets:
        ours, ref = acc.get("sml", {}).get(d), rows["gpt2_124m_fine_tune_cot"]["accuracy"].get(d)
        if _has(ours) and ref is not None:
            side = "above" if 100 * ours["accuracy"] > ref else "at or below"
            items.append(f"SML on {d} ({pct(ours['accuracy'])}%) is {side} the published GPT-2 124M "
                         f"Fine-tune-CoT ({ref:.1f}%, Ho et al. 2023, with a text-davinci-002 teacher).")
        chance = rows["random"]["accuracy"].get(d)
        cells = [(k, acc.get(k, {}).get(d)) for k in _model_keys(run)]
        below = [f"{MODELS.get(k, k)} {pct(c['accuracy'])}" for k, c in cells
                 if _has(c) and chance and 100 * c["accuracy"] < chance]
        if below:
            items.append(f"Below the random baseline on {d} ({chance:.1f}%): {'; '.join(below)}.")
        silent = [f"{MODELS.get(k, k)} {100 * c['n_no_answer'] / c['n']:.0f}%" for k, c in cells
                  if c and c.get("n_no_answer") and c.get("n") and c["n_no_answer"] / c["n"] > 0.1]
        if silent:
            items.append(f"No readable final answer on many {d} questions ({'; '.join(silent)}): check the "
                         "answer format and max_new_tokens before reading these accuracies as reasoning.")
        habits = habit_rows(run, d)
        if habits:
            said = "; ".join(f"{MODELS.get(k, k)} answers {spoken(top)} in {count} of its {n} answers "
                             f"({count / n:.0%}; {gold:.0%} of the gold answers are {spoken(top)})"
                             for k, (top, count, n, gold) in habits)
            items.append(f"A favourite answer on {d}: {said}. Such a model answers by habit: its accuracy there "
                         "mostly measures how often the habit matches the gold, not its reasoning.")
    return items


def habit_rows(run: Run, dataset: str) -> list[tuple[str, tuple]]:
    """(model key, `favourite_answer`) for each model row of a run that answers `dataset` by habit."""
    return [(k, f) for k in _model_keys(run) if (f := favourite_answer(run.answers.get(k, {}).get(dataset, [])))]


def _data_facts(run: Run, config: ReportConfig) -> list[str]:
    """Rationales, reward model and test response lengths."""
    items = []
    st = run.rationales
    if st:
        share = _num(st.get("share_questions_with_pair"))
        items.append(f"The rationale stage wrote {st.get('n_rationales', 'n/a')} rationales for "
                     f"{st.get('n_questions', 'n/a')} questions, giving {st.get('n_pairs', 'n/a')} "
                     f"reward-model pairs and {st.get('n_sft', 'n/a')} SFT rows; {pct(share)}% of questions "
                     "have a pair.")
        if share is not None and share < 0.5:
            items.append("Fewer than half of the questions have a pair: the reward model learns from a "
                         "narrow slice of the data (more samples per question, or a higher temperature, "
                         "give more).")
    pa = _num(_get(run.reward, "metrics", "heldout", "pairwise_accuracy"))
    if pa is not None:
        start = _num(_get(run.reward, "metrics", "heldout_start", "pairwise_accuracy"))
        before = f" (from {start:.3f} before training)" if start is not None else ""
        items.append(f"The reward model ranks {pa:.3f} of held-out pairs right{before}; chance is 0.5.")
        if pa <= 0.5:
            items.append("The reward model ranks held-out pairs no better than chance: PPO against it optimises "
                         "noise, or worse, the opposite of correctness.")
        elif pa < 0.6:
            items.append("The reward model is barely better than chance: PPO against it has little signal.")
    value = _num(_get(run.validity, "auroc"))
    if value is not None:
        verdict = ": no better than chance, PPO against it optimises noise." if value <= 0.5 else "."
        items.append(f"On fresh samples of the policy PPO starts from, the reward-model score tells answers "
                     f"the checker calls right from wrong with AUROC {value:.3f} "
                     f"(n={_get(run.validity, 'n')}; 0.5 is chance){verdict}")
    before, after, common = _pick_before_after(run)
    if common:
        lb, fb = _mean_length(run, before, common)
        la, fa = _mean_length(run, after, common)
        items.append(f"Mean test response length {lb:.1f} tokens ({MODELS.get(before, before)}) -> "
                     f"{la:.1f} (SML) on {', '.join(common)}; cut at max_new_tokens: {100 * fb:.0f}% -> "
                     f"{100 * fa:.0f}%.")
        if lb > 0 and la < config.length_drop * lb:
            items.append(f"Length collapse on the test sets: SML's answers are {la / lb:.0%} as long as "
                         "before PPO.")
    return items


def _ppo_facts(run: Run) -> list[str]:
    o, items = ppo_overview(run), []
    if "score" in o:
        items.append(f"Over {o['iterations']} PPO iterations the score PPO maximises went "
                     f"{o['score']['first']:.3f} -> {o['score']['last']:.3f}.")
    if "kl" in o:
        items.append(f"KL to the SFT model went {o['kl']['first']:.3f} -> {o['kl']['last']:.3f} nats per "
                     f"sequence (peak {o['kl']['max']:.3f}).")
    if "entropy" in o:
        items.append(f"Policy entropy went {o['entropy']['first']:.3f} -> {o['entropy']['last']:.3f} "
                     "nats per token.")
    if "accuracy" in o:
        first, best, last = (o["accuracy"][k] for k in ("first", "best", "last"))
        label = ppo_accuracy_label(run)
        items.append(f"{label[0].upper() + label[1:]} during PPO: {pct(first[1])}% at step {first[0]}, "
                     f"best {pct(best[1])}% at step {best[0]}, last {pct(last[1])}% at step {last[0]}.")
    return items


def facts(run: Run, published: dict, config: ReportConfig) -> tuple[list[str], list[Signal]]:
    """Plain statements computed from the run, and the PPO failure signatures found in its log."""
    items = _accuracy_facts(run, published) + _data_facts(run, config)
    items += [f"{STAGE_NAMES.get(stage, stage)} was refused by its gate: {reason}"
              for stage, reason in run.refused.items()]
    signals = []
    if run.ppo_log:
        items += _ppo_facts(run)
        signals = failure_signatures(run.ppo_log, **_thresholds(config))
        if not any(s.name != "guard" for s in signals):
            items.append("No failure signature in the PPO log (reward rising while accuracy falls, KL "
                         "blow-up, entropy collapse, length collapse, NaN).")
    # The control's log shows the same failures, except reward hacking: its reward is the checker itself.
    signals += [Signal(s.name, s.step, f"PPO against the checker: {s.message}")
                for s in failure_signatures(run.checker_log, **_thresholds(config))
                if s.name != "reward_hacking"]
    return items, signals


def _facts_section(run: Run, published, config, plot_dir) -> list:
    items, signals = facts(run, published, config)
    blocks = [Para(s.message, "warn") for s in signals]
    blocks.append(Bullets(items) if items else Para("Nothing to compare yet.", "note"))
    return blocks


def _missing_section(run: Run, published, config, plot_dir) -> list:
    blocks = [Bullets(run.missing) if run.missing else Para("Nothing missing: every stage left its results.")]
    if run.notes:
        blocks += [Para("Files that could not be read:", "warn"), Bullets(run.notes)]
    return blocks
