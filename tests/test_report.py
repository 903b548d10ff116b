"""`sml report`: fake run folders written by hand, the report read back as text, HTML and PNG."""

import json
import math
import re
from pathlib import Path

import pytest

from selfmotivated.rationales import RationaleStore
from selfmotivated.report import (
    ReportConfig,
    failure_signatures,
    favourite_answer,
    fmt_cell,
    load_published,
    load_run,
    make_report,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
ANCHORS = Path(__file__).resolve().parents[2] / "shared" / "docs" / "ANCHORS.md"
DATASET_KEYS = ["single_eq", "addsub", "multiarith", "gsm8k", "aqua", "svamp", "date_understanding",
                "tracking_shuffled_objects", "last_letter_concatenation", "coin_flip", "commonsense_qa",
                "strategy_qa"]
SML = "SML (SFT + reward model + PPO)"

# (accuracy, ci95, n) per model and dataset: SML on coin_flip reads "41.3 ±4.1 (n=150)"
ACCURACY = {
    "base": {"coin_flip": (0.2867, [0.220, 0.364], 150), "gsm8k": (0.0167, [0.006, 0.048], 120)},
    "base_few_shot": {"coin_flip": (0.48, [0.401, 0.560], 150), "gsm8k": (0.025, [0.009, 0.071], 120)},
    "sft": {"coin_flip": (0.3533, [0.282, 0.432], 150), "gsm8k": (0.0333, [0.013, 0.083], 120)},
    "sml": {"coin_flip": (0.4133, [0.372, 0.454], 150), "gsm8k": (0.05, [0.023, 0.105], 120)},
    "sml_best_of_n": {"coin_flip": (0.4467, [0.369, 0.527], 150), "gsm8k": (0.0583, [0.029, 0.116], 120)},
}
SCORES_BY_TIER = {  # the reward stage's held-out score summary per tier
    "3": {"n": 30, "mean": 1.1, "std": 0.5, "min": -0.2, "p10": 0.4, "p50": 1.1, "p90": 1.8, "max": 2.3},
    "2": {"n": 20, "mean": 0.4, "std": 0.5, "min": -0.8, "p10": -0.3, "p50": 0.4, "p90": 1.0, "max": 1.5},
    "1": {"n": 40, "mean": -0.6, "std": 0.6, "min": -2.0, "p10": -1.4, "p50": -0.6, "p90": 0.2, "max": 0.9},
}


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))


def _write_jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def ppo_log(kind: str = "healthy", n: int = 40, eval_every: int = 10) -> list[dict]:
    """A synthetic ppo/metrics.jsonl: the baseline eval row at step 0, then one row per iteration."""
    evals = {
        "healthy": [0.30, 0.32, 0.34, 0.35, 0.37],
        "hacking": [0.30, 0.36, 0.33, 0.28, 0.22],  # accuracy falls after step 10, the score keeps rising
        "both_fall": [0.30, 0.36, 0.33, 0.28, 0.22],  # the same accuracy, but the score falls too
    }[kind]
    rows = [{"step": 0, "eval/accuracy": evals[0]}]
    for step in range(1, n + 1):
        wiggle = 0.02 * math.sin(step)  # noise, so a detector must look at trends
        score = 0.2 + (0.02 if kind != "both_fall" else -0.02) * step + wiggle
        row = {"step": step, "ppo/score_mean": score, "ppo/reward_mean": score - 0.01 * step,
               "ppo/kl": 0.1 * step, "ppo/entropy": 1.5 - 0.004 * step,
               "rollout/response_length": 80 + 5 * wiggle, "losses/policy": 0.01, "losses/value": 0.1}
        if step % eval_every == 0:
            row["eval/accuracy"] = evals[step // eval_every]
        rows.append(row)
    return rows


def make_store(run: Path) -> None:
    """A real, tiny rationale store: 3 coin questions, free rationales right (tier 3) or wrong (tier 1)."""
    with RationaleStore(run) as store:
        store.add_settings("fp0", {"model": "fake", "temperature": 0.7})
        store.add_questions([
            {"id": f"coin-{i}", "dataset": "coin_flip", "split": "train", "question": f"Flip {i} times?",
             "gold": "yes" if i % 2 == 0 else "no", "answer_type": "yes_no", "choices": [], "prompt": "p",
             "messages": []} for i in range(3)])
        for i in range(3):
            gold, wrong = ("yes", "no") if i % 2 == 0 else ("no", "yes")
            answers = [gold, wrong] if i < 2 else [wrong, wrong]  # question 2 has no right rationale, no pair
            store.add_group([
                {"question_id": f"coin-{i}", "kind": "free", "target": "", "sample_index": k,
                 "fingerprint": "fp0", "text": f"Reasoning number {k} for question {i}. The answer is {a}.",
                 "finish_reason": "stop", "n_tokens": 12, "answer": a, "forced_text": None, "forced": None,
                 "leak": False, "params": {"temperature": 0.7}} for k, a in enumerate(answers)])


def make_run(root: Path, name: str = "run", ppo: str | None = "healthy", seed: int = 0, shift: float = 0.0,
             reward: bool = True, store: bool = True, best_of_n: bool = True) -> Path:
    """A run folder as `sml run` writes it; ppo=None is a run stopped before PPO."""
    run = root / name
    skip = ({"sml", "sml_best_of_n"} if ppo is None else set()) | (set() if best_of_n else {"sml_best_of_n"})
    models = {key: {d: {"n": n, "accuracy": a + shift, "ci95": ci, "n_no_answer": 3}
                    for d, (a, ci, n) in per.items()}
              for key, per in ACCURACY.items() if key not in skip}
    stages = {s: {"status": "done", "seconds": 61.5, "fingerprint": f"fp-{s}"}
              for s in ("baseline", "rationales", "sft", "reward", "ppo", "eval")}
    if ppo is None:
        stages["ppo"] = {"status": "pending"}
    _write(run / "summary.json", {"models": models, "datasets": ["coin_flip", "gsm8k"], "stages": stages,
                                  "model": "tiny-random", "config": {"seed": seed, "ppo": {"kl_coef": 0.05}}})
    for key, tokens in (("base", 120), ("sft", 90), ("sml", 70)):
        for d in ("coin_flip", "gsm8k"):
            if key not in skip:
                _write_jsonl(run / "eval" / key / d / "predictions.jsonl", [
                    {"id": f"{d}-{i}", "question": "q", "output": "o", "prediction": "yes", "gold": "yes",
                     "correct": i % 2 == 0, "new_tokens": tokens + (i % 7) * 3,
                     "finish_reason": "length" if i % 10 == 0 else "stop"} for i in range(30)])
    if "sml_best_of_n" not in skip:
        bon = run / "eval" / "sml_best_of_n" / "coin_flip"
        _write(bon / "rerank_metrics.json", {"config": {"policy": "runs/x/ppo/policy"}, "metrics": {
            "n_questions": 150, "n_samples": 4, "first_sample_accuracy": 0.39, "majority_vote_accuracy": 0.42,
            "best_of_n_accuracy": 0.4467, "oracle_accuracy": 0.71, "no_answer_rate": 0.1}})
        _write_jsonl(bon / "rerank.jsonl", [
            {"id": f"c{i}", "scores": [0.1 * i, -0.2, 0.5, 0.3 - 0.05 * i],
             "correct": [True, False, i % 2 == 0, False]} for i in range(20)])
    if store:
        make_store(run)
    if reward:
        heldout = {"val_loss": 0.55, "pairwise_accuracy": 0.7123, "n_pairs": 48, "n_questions": 12,
                   "accuracy_by_tier_gap": {"1": {"accuracy": 0.61, "n_pairs": 20},
                                            "2": {"accuracy": 0.79, "n_pairs": 28}},
                   "accuracy_by_tiers": {"3>2": 0.6, "3>1": 0.79, "2>1": 0.62},
                   "score_by_tier": SCORES_BY_TIER}
        _write(run / "reward" / "run.json", {"stage": "reward", "status": "finished", "metrics": {
            "heldout": heldout, "heldout_start": {"pairwise_accuracy": 0.51, "val_loss": 0.69}, "steps": 30,
            "train_seconds": 40.0}})
    if ppo is not None:
        _write_jsonl(run / "ppo" / "metrics.jsonl", ppo_log(ppo))
        _write(run / "ppo" / "run.json", {"stage": "ppo", "status": "finished", "result": {"steps": 40}})
    return run


def cells(md: str, label: str) -> list[str]:
    """The cells of the first Markdown table row whose first cell starts with `label`."""
    line = next(line for line in md.splitlines() if line.startswith(f"| {label}"))
    return [c.strip() for c in line.strip().strip("|").split(" | ")]


def check_png(path: Path) -> None:
    data = Path(path).read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > 10_000, f"{path} is only {len(data)} bytes"


# --------------------------------------------------------------------------------------------------


def test_fmt_cell_reads_accuracy_ci_and_n():
    assert fmt_cell({"accuracy": 0.4133, "ci95": [0.372, 0.454], "n": 150}) == "41.3 ±4.1 (n=150)"
    assert fmt_cell({"accuracy": 0.05, "ci95": None, "n": None}) == "5.0"
    assert fmt_cell(None) == "n/a" and fmt_cell({"accuracy": None}) == "n/a"


def test_single_run_report(tmp_path):
    run = make_run(tmp_path)
    result = make_report([str(run)])
    assert result["markdown"] == str(run / "report.md") and result["html"] == str(run / "report.html")
    md = (run / "report.md").read_text()

    # header: model, datasets, stages with their times, the config
    assert "tiny-random" in md and "coin_flip, gsm8k" in md
    assert cells(md, "reward") == ["reward", "done", "1m 02s", "fp-reward"] and '"kl_coef": 0.05' in md

    # the accuracy table: a row per model, a column per dataset in the summary's order, published rows beside
    assert cells(md, SML) == [SML, "41.3 ±4.1 (n=150)", "5.0 ±4.1 (n=120)"]
    assert cells(md, "base, zero-shot CoT")[1] == "28.7 ±7.2 (n=150)"
    assert cells(md, "SML + best-of-N")[1] == "44.7 ±7.9 (n=150)"
    ftcot = cells(md, "GPT-2 124M Fine-tune-CoT")
    assert "published (Ho et al. 2023)" in ftcot[0] and ftcot[1:] == ["77.3", "3.0"]
    assert cells(md, "random baseline")[1:] == ["50.0", "0.0"]
    assert "Ho et al. 2023: Ho, Schmid and Yun, Large Language Models Are Reasoning Teachers" in md
    assert "half the width of the 95% Wilson interval" in md
    assert cells(md, "coin_flip | 150 | 4") == ["coin_flip", "150", "4", "39.0", "42.0", "44.7", "71.0",
                                               "runs/x/ppo/policy"]

    # rationale statistics from the real store: 6 rationales, 2 in tier 3, 4 in tier 1, 2 questions paired
    assert cells(md, "coin_flip | 3 | 6")[:7] == ["coin_flip", "3", "6", "2", "4", "2", "2"]
    assert cells(md, "coin_flip | 3 | 6")[8] == "66.7"
    # the reward model's held-out numbers and accuracy per tier gap
    assert "0.712 on 48 pairs of 12 questions" in md and "| 2 | 0.790 | 28 |" in md

    # what to look at: facts computed from the numbers
    assert "SML beats SFT-only on coin_flip by 6.0 points (35.3 -> 41.3); the 95% intervals overlap" in md
    assert "best-of-N beats SML's greedy answer on coin_flip by 3.3 points" in md
    assert "SML on coin_flip (41.3%) is at or below the published GPT-2 124M Fine-tune-CoT (77.3%" in md
    assert "SML on gsm8k (5.0%) is above the published GPT-2 124M Fine-tune-CoT (3.0%" in md
    assert "Below the random baseline on coin_flip (50.0%): base, zero-shot CoT 28.7; base, few" in md
    assert "Below the random baseline on gsm8k" not in md
    assert "Mean test response length 98.5 tokens (SFT on self-generated rationales) -> 78.5 (SML)" in md
    assert "KL to the SFT model went 0.100 -> 4.000" in md and "No failure signature in the PPO log" in md
    assert "could not be built" not in md and "Nothing missing" in md

    # plots: 5 valid PNGs, linked from the Markdown, every one embedded in the HTML
    pngs = sorted((run / "plots").glob("*.png"))
    assert [p.name for p in pngs] == ["accuracy.png", "ppo_curves.png", "ppo_signals.png",
                                      "response_length.png", "reward_scores.png"]
    for p in pngs:
        check_png(p)
        assert f"](plots/{p.name})" in md
    assert sorted(result["plots"]) == [str(p) for p in pngs]

    page = (run / "report.html").read_text()
    images = re.findall(r'<img src="([^"]+)"', page)
    assert len(images) == len(pngs) and all(i.startswith("data:image/png;base64,") for i in images)
    assert not re.search(r'(src|href)\s*=\s*["\']?(https?:)?//', page) and "<link" not in page
    assert "<script" not in page and "<style>" in page
    assert "<td>41.3 ±4.1 (n=150)</td>" in page and 'class="published"' in page


def test_run_without_ppo_still_reports_and_says_what_is_missing(tmp_path):
    run = make_run(tmp_path, ppo=None)
    result = make_report([str(run)])
    md = Path(result["markdown"]).read_text()
    missing = md.split("## Missing")[1]
    assert "PPO log (ppo/metrics.jsonl): the PPO stage has not run" in missing
    assert f"{SML}: no evaluation (eval/sml/)" in missing and "stage ppo: status 'pending'" in missing
    assert cells(md, SML) == [SML, "n/a", "n/a"]
    assert cells(md, "SFT on self-generated")[1] == "35.3 ±7.5 (n=150)"
    assert "SML beats" not in md and "could not be built" not in md
    assert not (run / "plots" / "ppo_curves.png").exists() and (run / "plots" / "accuracy.png").exists()
    page = Path(result["html"]).read_text()
    assert page.count("data:image/png;base64,") == len(list((run / "plots").glob("*.png"))) == 3


def test_a_results_copy_without_the_store_keeps_its_rationale_statistics(tmp_path):
    """A results folder keeps only small files: the rank stage's ranked/stats.json stands in for the store,
    and output that was left out is said to be left out, not "not run"."""
    from selfmotivated.rationales import rationale_stats

    source = tmp_path / "source"
    make_store(source)
    run = make_run(tmp_path, store=False)
    _write(run / "ranked" / "stats.json", rationale_stats(source))
    (run / "ppo" / "metrics.jsonl").unlink()
    md = Path(make_report([str(run)])["markdown"]).read_text()
    rationales = md.split("## Rationales")[1].split("## ")[0]
    assert "No rationale store" not in rationales and "| coin_flip | 3 | 6 |" in rationales
    assert "PPO log (ppo/metrics.jsonl): the PPO stage ran (stages.json) but its output is not in this folder" in md


def test_run_stopped_part_way_as_the_pipeline_leaves_it(tmp_path):
    """No summary.json (written at the end), but stages.json, config.yaml and a half-written evaluation."""
    run = tmp_path / "partial"
    (run / "eval").mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny-random\ndataset: coin_flip\nfew_shot_baseline: false\n"
                                     "best_of_n: 0\nrank: {}\n")
    _write(run / "stages.json", {"baseline": {"status": "running", "fingerprint": "a1", "started": 1.0},
                                 "best_of_n": {"status": "skipped", "fingerprint": "b2"}})
    predictions = run / "eval" / "base" / "coin_flip" / "predictions.jsonl"
    _write_jsonl(predictions, [{"id": str(i), "prediction": None if i == 3 else "yes", "correct": i < 3,
                                "new_tokens": 40, "finish_reason": "stop"} for i in range(4)])
    with predictions.open("a") as f:
        f.write('{"id": "4", "predic')  # the last line, torn by a kill
    _write(run / "reward" / "run.json", {"status": "running", "metrics": {}})
    md = Path(make_report([str(run)], plots=False)["markdown"]).read_text()

    assert "report: partial (tiny-random)" in md and cells(md, "training dataset")[1] == "coin_flip"
    assert cells(md, "baseline") == ["baseline", "running", "n/a", "a1"] and "(from config.yaml)" in md
    assert f"sml run {run.resolve() / 'config.yaml'} --out {run.resolve()}" in md
    assert cells(md, "base, zero-shot CoT")[1].startswith("75.0 ±") and "(n=4)*" in md
    missing = md.split("## Missing")[1]
    assert "summary.json (the pipeline writes it at the end" in missing
    assert "eval/base/coin_flip: evaluation unfinished (4 predictions" in missing
    assert "stage baseline: started, not finished" in missing and "stage best_of_n" not in missing
    assert "base, few-shot CoT: not configured in this run (few_shot_baseline is off)" in missing
    assert "SML + best-of-N (reward model picks): not configured in this run (best_of_n is 0)" in missing
    assert "reward model: stage status 'running', not finished" in missing
    assert "rationale store (rationales.sqlite)" in missing and "skipped 1 unreadable line" in missing
    assert "could not be built" not in md


def test_malformed_files_give_na_not_a_crash(tmp_path):
    run = make_run(tmp_path, store=False)
    (run / "summary.json").write_text("{not json")
    _write(run / "eval" / "sml" / "coin_flip" / "metrics.json", {"n": 150})  # no accuracy
    heldout = {"score_by_tier": {"3": {}}}  # no accuracy, an empty score summary
    _write(run / "reward" / "run.json", {"status": "finished", "metrics": {"heldout": heldout}})
    md = Path(make_report([str(run)], plots=False)["markdown"]).read_text()
    assert "could not read" in md and "summary.json" in md
    assert cells(md, SML)[1] == "n/a" and cells(md, "held-out pairwise accuracy")[1].startswith("n/a on n/a")
    assert "could not be built" not in md


def test_comparison_of_two_runs_shows_both(tmp_path):
    a = make_run(tmp_path / "seeds", "seed0", seed=0)
    b = make_run(tmp_path / "seeds", "seed1", seed=1, shift=0.02, ppo="hacking")
    _write(a / "reward" / "validity.json", {"auroc": 0.68, "within_question_auroc": 0.49, "n": 400})
    result = make_report([str(a), str(b)])
    out = a / "compare"
    assert result["markdown"] == str(out / "report.md")
    md = (out / "report.md").read_text()
    assert cells(md, "seed0")[0] == "seed0" and cells(md, "seed1")[0] == "seed1"
    assert cells(md, "seed |") == ["seed", "0", "1"]  # the one setting that differs
    assert cells(md, SML) == [SML, "41.3 ±4.1 (n=150)", "43.3 ±4.1 (n=150)", "42.3 ± 1.4"]
    assert "SML minus SFT-only on coin_flip: seed0 +6.0, seed1 +6.0 points" in md
    assert "seed1: reward hacking" in md and "seed0: reward hacking" not in md
    # each run's own paired tests, and the reward model's order within a question beside its overall AUROC
    paired = md.split("## Paired comparisons within each run")[1].split("## Reward model and PPO")[0]
    assert "### seed0" in paired and "### seed1" in paired and paired.count(f"{SML} vs SFT on") == 4
    training = md.split("## Reward model and PPO")[1]
    assert cells(training, "seed0 |")[2:4] == ["0.680", "0.490"] and cells(training, "seed1 |")[3] == "n/a"
    check_png(out / "plots" / "accuracy_compare.png")
    page = (out / "report.html").read_text()
    assert page.count("data:image/png;base64,") == 1 and "<th>seed1</th>" in page
    assert result["signals"]["seed0"] == [] and "reward hacking" in result["signals"]["seed1"][0]


def test_runs_on_different_datasets_share_one_table(tmp_path):
    """One run per dataset (the experiment across datasets): a column per dataset, published rows beside."""
    import shutil

    runs = []
    for d in ("coin_flip", "gsm8k"):
        run = make_run(tmp_path, d, shift=0.1 if d == "gsm8k" else 0.0)
        summary = json.loads((run / "summary.json").read_text())
        summary["datasets"] = [d]
        summary["models"] = {k: {d: v[d]} for k, v in summary["models"].items() if d in v}
        _write(run / "summary.json", summary)
        other = "gsm8k" if d == "coin_flip" else "coin_flip"
        for folder in run.glob(f"eval/*/{other}"):
            shutil.rmtree(folder)
        runs.append(str(run))
    md = Path(make_report(runs, out=str(tmp_path / "all"), plots=False)["markdown"]).read_text()
    assert cells(md, "model | coin_flip")[:3] == ["model", "coin_flip", "gsm8k"]
    sft, sml = cells(md, "SFT on self-generated"), cells(md, SML)
    assert len(sml) == 3 and "n/a" not in sml[1:] and sml[1] != sml[2]
    assert len(sft) == 3 and "mean ± sd" not in md
    assert cells(md, "GPT-2 124M Fine-tune-CoT")[1:] == ["77.3", "3.0"]


def test_same_folder_names_are_told_apart(tmp_path):
    a, b = make_run(tmp_path / "x", "run"), make_run(tmp_path / "y", "run")
    md = Path(make_report([str(a), str(b)], out=str(tmp_path / "cmp"), plots=False)["markdown"]).read_text()
    assert cells(md, "x/run")[0] == "x/run" and cells(md, "y/run")[0] == "y/run"


def test_a_favourite_answer_is_named_and_a_spread_of_answers_is_not(tmp_path):
    golds = ["ABCDE"[i % 5] for i in range(50)]
    habit = list(zip(["A"] * 35 + ["B", "C", "D"] * 5, golds))  # A 70% of answers, 20% of golds
    assert favourite_answer(habit) == ("A", 35, 50, 0.2)
    assert favourite_answer(list(zip(golds, golds))) is None  # answers spread like the golds
    yes_no = ["yes", "no"] * 20
    assert favourite_answer(list(zip(["yes"] * 30 + ["no"] * 10, yes_no))) is None  # 75%: halfway, not beyond
    assert favourite_answer(list(zip(["yes"] * 31 + ["no"] * 9, yes_no)))[:2] == ("yes", 31)
    assert favourite_answer([("7", str(i)) for i in range(40)]) is None  # numbers: too many possible answers
    assert favourite_answer(habit[:19]) is None  # too few answers to tell
    assert favourite_answer([(None, g) for g in golds]) is None

    run = make_run(tmp_path)
    _write_jsonl(run / "eval" / "base" / "coin_flip" / "predictions.jsonl", [
        {"id": f"c{i}", "prediction": None if i % 10 == 0 else "no", "gold": ["yes", "no"][i % 2],
         "correct": i % 2 == 1 and i % 10 != 0, "new_tokens": 50, "finish_reason": "stop"} for i in range(40)])
    make_report([str(run)])
    md = (run / "report.md").read_text()
    assert ("A favourite answer on coin_flip: base, zero-shot CoT answers no in 36 of its 36 answers (100%; 50% "
            "of the gold answers are no). Such a model answers by habit") in md
    assert "favourite answer on gsm8k" not in md
    # Side by side, the habit is named beside the SML-minus-SFT lines it would otherwise pass for.
    other = make_run(tmp_path / "other", "other")
    side = Path(make_report([str(run), str(other)], out=str(tmp_path / "both"), plots=False)["markdown"]).read_text()
    assert (f"{run.name}, coin_flip: answers by habit (base, zero-shot CoT no in 36 of 36, against 50% of the gold "
            "answers)") in side
    assert "other, coin_flip: answers by habit" not in side  # 30 answers, but all golds say what it says


def test_failure_signatures_flag_reward_hacking_not_a_healthy_run():
    assert failure_signatures(ppo_log("healthy")) == []
    flagged = failure_signatures(ppo_log("hacking"))
    assert [s.name for s in flagged] == ["reward_hacking"]
    assert flagged[0].step == 30 and "from its best 36.0% (step 10)" in flagged[0].message
    # accuracy falling while the reward falls too is bad, but it is not reward hacking
    assert failure_signatures(ppo_log("both_fall")) == []


def test_failure_signatures_kl_entropy_length_nan_and_guard():
    rows = ppo_log("healthy")
    for r in rows[30:]:
        r["ppo/kl"] = 60.0
    assert [s.name for s in failure_signatures(rows)] == ["kl_blowup"]
    assert failure_signatures(rows, max_kl=100.0) == []

    rows = ppo_log("healthy")
    for r in rows[1:]:
        r["ppo/entropy"] = 1.5 * (1 - r["step"] / 41)  # ends near zero
        r["rollout/response_length"] = 80.0 * (1 - r["step"] / 45)
    assert {s.name for s in failure_signatures(rows)} == {"entropy_collapse", "length_collapse"}

    rows = ppo_log("healthy")
    rows[12]["ppo/kl"] = float("nan")
    rows.append({"step": 41, "guard/stop": 1.0, "note": "stopped: [kl] too far"})
    found = failure_signatures(json.loads(json.dumps(rows)))  # NaN survives the log's JSON round trip
    assert [s.name for s in found] == ["nan", "guard"] and "[kl] too far" in found[1].message


def test_a_flagged_run_says_so_in_the_report(tmp_path):
    run = make_run(tmp_path, ppo="hacking")
    result = make_report([str(run)], plots=False)
    md = Path(result["markdown"]).read_text()
    assert "> **Warning:** reward hacking: accuracy fell to 28.0% at step 30" in md
    assert "No failure signature" not in md
    assert result["plots"] == [] and not (run / "plots").exists()


def test_published_figures_match_anchors():
    published = load_published()
    for row in published["rows"].values():
        assert list(row["accuracy"]) == DATASET_KEYS and row["source"] in published["sources"]
    assert published["rows"]["gpt2_124m_fine_tune_cot"]["accuracy"]["commonsense_qa"] == 22.7
    assert published["rows"]["random"]["accuracy"]["date_understanding"] == 17.1
    if not ANCHORS.is_file():
        pytest.skip(f"{ANCHORS} not found")
    # each published row is, number for number, a row of ANCHORS.md's table of its source
    headings = {"reasoning_teachers": "## Reasoning Teachers", "zero_shot_cot": "## Zero-shot-CoT"}
    columns = dict(zip(["SEq", "AddS", "MAr", "GSM", "AQuA", "SVAMP", "Date", "Shuf", "Last", "Coin", "CSQA",
                        "SQA"], DATASET_KEYS))
    text = ANCHORS.read_text()
    for row in published["rows"].values():
        table = text.split(headings[row["source"]])[1].split("\n## ")[0]
        lines = [[c.strip() for c in line.strip().strip("|").split("|")] for line in table.splitlines()
                 if line.startswith("|")]
        ours = [row["accuracy"][columns[h]] for h in lines[0][1:]]
        theirs = [[None if c == "-" else float(c) for c in line[1:]] for line in lines[2:]]
        assert ours in theirs, row["label"]


def test_config_checks_and_unknown_published_row(tmp_path):
    with pytest.raises(ValueError, match="at least one run"):
        ReportConfig(runs=[])
    run = make_run(tmp_path, ppo=None, store=False, reward=False)
    with pytest.raises(ValueError, match="unknown published row"):
        make_report([str(run)], published=["gpt5"])
    with pytest.raises(FileNotFoundError):
        make_report([str(tmp_path / "nope")])
    assert load_run(run).accuracy["sft"]["coin_flip"]["n"] == 150


def test_sml_report_takes_every_report_setting_as_a_flag(tmp_path, capsys):
    from selfmotivated.cli import main

    run = make_run(tmp_path, ppo=None, store=False, reward=False)
    out = tmp_path / "plain"
    assert main(["report", str(run), "--out", str(out), "--published", "random", "--no-plots"]) == 0
    md = (out / "report.md").read_text()
    assert "random baseline" in md and "GPT-2 124M Fine-tune-CoT" not in md
    assert not (out / "plots").exists() and "](plots/" not in md
    assert json.loads(capsys.readouterr().out)["plots"] == []

    assert main(["report", str(run), "--entropy-drop", "2"]) == 2
    assert "entropy_drop must be between 0 and 1" in capsys.readouterr().err


def test_answers_plot_splits_accuracy_by_gold_answer(tmp_path):
    """A yes/no task: a model that always says yes is right on every yes question and on no no question."""
    from selfmotivated.report.answer_classes import accuracy_by_class
    from selfmotivated.report.plots import answers_plot
    from selfmotivated.report.runs import load_run

    run = make_run(tmp_path)
    for key, answer in (("base", None), ("sft", "yes")):
        _write_jsonl(run / "eval" / key / "coin_flip" / "predictions.jsonl", [
            {"id": f"coin_flip-{i}", "prediction": answer or ("yes" if i % 3 else "no"), "gold": "yes" if i % 2 else "no",
             "correct": (answer or ("yes" if i % 3 else "no")) == ("yes" if i % 2 else "no"), "new_tokens": 9,
             "finish_reason": "stop"} for i in range(30)])
    loaded = load_run(run)
    assert accuracy_by_class(loaded.answers["sft"]["coin_flip"]) == {"yes": (15, 15), "no": (0, 15)}
    assert accuracy_by_class([("yes", "no"), (None, "no"), ("no", "no")]) == {"no": (1, 3)}
    assert answers_plot(loaded, tmp_path / "answers.png") == tmp_path / "answers.png"
    check_png(tmp_path / "answers.png")
    single = make_run(tmp_path / "one_label")  # every gold answer the same: nothing to split
    assert answers_plot(load_run(single), tmp_path / "none.png") is None


def _signed_sums(n: int = 40):
    """(question index, gold) of a numeric task whose golds are a quarter negative, like chain_sum's."""
    return [(i, str(-(i + 1)) if i % 4 == 0 else str(i + 10)) for i in range(n)]


def test_a_numeric_task_with_negative_golds_is_split_by_sign():
    """A model that never writes a minus sign is right on no negative-gold question: named as a habit by sign."""
    from selfmotivated.report.answer_classes import (
        NEGATIVE, NOT_NEGATIVE, accuracy_by_class, answer_classifier, class_shares, same_answer, sign_class)

    golds = [g for _, g in _signed_sums()]
    assert answer_classifier(golds) is sign_class
    assert answer_classifier([str(i) for i in range(40)]) is None  # one sign only: no classes
    assert answer_classifier(golds[:1] + [str(i) for i in range(40)]) is None  # 1 in 41 negative: under 5%
    assert answer_classifier(["yes", "no", "yes"])("yes") == "yes"
    never_negative = [(g.lstrip("-"), g) for g in golds]  # right on the positive ones, sign dropped on the rest
    assert accuracy_by_class(never_negative, sign_class) == {NEGATIVE: (0, 10), NOT_NEGATIVE: (30, 30)}
    assert favourite_answer(never_negative) == (NOT_NEGATIVE, 40, 40, 0.75)
    assert favourite_answer(list(zip(golds, golds))) is None  # signs spread like the golds'
    minus_everywhere = [("-" + g.lstrip("-"), g) for g in golds]
    assert favourite_answer(minus_everywhere) == (NEGATIVE, 40, 40, 0.25)
    assert class_shares(minus_everywhere + [(None, "5")], sign_class) == (
        {NEGATIVE: 1.0, NOT_NEGATIVE: 0.0}, {NEGATIVE: 10 / 41, NOT_NEGATIVE: 31 / 41})
    assert same_answer("44", "44.0") and not same_answer("-44", "44") and not same_answer(None, "44")


def test_report_names_a_sign_habit_and_plots_ppo_answers_drifting(tmp_path):
    """chain_sum's failure in miniature: SFT never answers a negative number, and SML's PPO learns to answer
    negative numbers everywhere. The report says the first in words and draws the second."""
    from selfmotivated.report.plots import answer_drift_plot, answers_plot
    from selfmotivated.report.runs import load_run

    run = make_run(tmp_path)
    sums = _signed_sums()
    _write_jsonl(run / "eval" / "sft" / "sums" / "predictions.jsonl", [
        {"id": f"s{i}", "prediction": g.lstrip("-"), "gold": g, "correct": not g.startswith("-"), "new_tokens": 9,
         "finish_reason": "stop"} for i, g in sums])
    for step, negative in ((0, 0), (5, 20), (10, 40)):  # the share of minus signs climbs to all
        _write_jsonl(run / "ppo" / "eval" / f"step-{step:07d}" / "predictions.jsonl", [
            {"id": f"h{i}", "prediction": ("-" if i < negative else "") + g.lstrip("-"), "gold": g,
             "correct": False} for i, g in sums])
    loaded = load_run(run)
    assert [step for step, _ in loaded.ppo_eval_answers["ppo"]] == [0, 5, 10]
    assert "ppo_checker" not in loaded.ppo_eval_answers
    assert answers_plot(loaded, tmp_path / "answers.png") == tmp_path / "answers.png"
    assert answer_drift_plot(loaded, tmp_path / "drift.png") == tmp_path / "drift.png"
    check_png(tmp_path / "drift.png")
    assert answer_drift_plot(load_run(make_run(tmp_path / "plain")), tmp_path / "none.png") is None
    make_report([str(run)])
    md = (run / "report.md").read_text()
    assert ("A favourite answer on sums: SFT on self-generated rationales answers zero or a positive number in 40 "
            "of its 40 answers (100%; 75% of the gold answers are zero or a positive number)") in md
    assert "plots/answer_drift.png" in md
