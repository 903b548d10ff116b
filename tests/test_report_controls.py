"""`sml report` on what the pipeline writes since the controls, the reward validity report and PPO's gate:
control rows, a refused PPO, the validity figures and PPO's optimisation signals; and an older results folder
still reports."""

import json
import math
import statistics
from pathlib import Path

import pytest

from selfmotivated.report import load_run, make_report
from selfmotivated.report.blocks import _model_keys
from selfmotivated.report.ppo_signals import _cells, signal_summary
from selfmotivated.report.validity import auroc_interval
from selfmotivated.validity import validity_figures
from tests.test_report import SML, _write, _write_jsonl, cells, check_png, make_run

CHECKER = "PPO against the answer checker (verifiable-reward control)"
ROUND2 = "SFT round 2 (expert iteration on its own correct samples)"
REASON = ("the reward model runs/x/reward/model does not track correctness: AUROC of its score against the "
          "answer checker on 40 fresh samples of held-out training questions is 0.480, below "
          "min_reward_auroc=0.55")
RESULTS = Path(__file__).resolve().parents[1] / "results" / "coin_flip"


def signal_log(kind: str, n: int = 40) -> list[dict]:
    """ppo/metrics.jsonl as the trainer writes it now. SML: clipfrac 0 for the first half then 0.1, KL 0.1 *
    step, reward-model AUROC undefined (NaN) at step 3. The checker's PPO: no reward-model keys, clipfrac
    0.05, KL 0.2 * step."""
    rows = [{"step": 0, "eval/accuracy": 0.30}]
    for step in range(1, n + 1):
        row = {"step": step, "ppo/score_mean": 0.2 + 0.01 * step, "ppo/reward_mean": 0.2, "ppo/entropy": 1.2,
               "ppo/approx_kl": 0.001, "ppo/minibatches": 4, "ppo/epochs": 1, "ppo/critic_warmup": 0.0,
               "ppo/early_stop": float(step % 10 == 0), "ppo/advantage_abs_mean": 0.3,
               "rollout/correct_frac": 0.25 + 0.005 * step, "rollout/no_answer_frac": 0.1,
               "rollout/truncated_frac": 0.2, "rollout/response_length": 60.0, "time/iteration": 12.0}
        if kind == "sml":
            row.update({"ppo/kl": 0.1 * step, "ppo/clipfrac": 0.0 if step <= n // 2 else 0.1,
                        "ppo/rm_score_mean": 0.2 + 0.01 * step,
                        "ppo/rm_auroc": math.nan if step == 3 else 0.6 + 0.005 * step})
        else:
            row.update({"ppo/kl": 0.2 * step, "ppo/clipfrac": 0.05})
        if step % 10 == 0:
            row["eval/accuracy"] = 0.30 + 0.01 * step / 10
        rows.append(row)
    return rows


def validity_rows() -> list[dict]:
    """200 scored samples of 50 questions: right ones score higher on average, with overlap."""
    rows = []
    for q in range(50):
        for k in range(4):
            correct = (q + k) % 3 == 0
            score = (0.6 if correct else 0.0) + math.sin(7 * q + 3 * k)  # deterministic noise
            rows.append({"id": f"q{q}", "sample": k, "text": "t", "prediction": "yes", "correct": correct,
                         "finished": k != 3, "score": score})
    return rows


def add_new_outputs(run: Path, refused: bool = False) -> dict:
    """Turn a make_run folder into one of the current pipeline: control rows, comparisons, validity report,
    both PPO logs; refused=True: PPO's gate refused (no sml row, no ppo log). Returns the validity figures."""
    summary = json.loads((run / "summary.json").read_text())
    summary["config"].update({"controls": ["ppo_checker", "sft_round2"]})
    summary["config"]["ppo"]["min_reward_auroc"] = 0.55
    summary["models"]["ppo_checker"] = {"coin_flip": {"n": 150, "accuracy": 0.46, "ci95": [0.38, 0.54]},
                                        "gsm8k": {"n": 120, "accuracy": 0.04, "ci95": [0.02, 0.09]}}
    summary["models"]["sft_round2"] = {"coin_flip": {"n": 150, "accuracy": 0.38, "ci95": [0.31, 0.46]}}
    summary["comparisons"] = {
        "sml_vs_ppo_checker": {"diff": -0.0467, "ci95": [-0.1, 0.0067], "p": 0.0912, "n": 150, "a_only": 10,
                               "b_only": 17},
        "ppo_checker_vs_sft": {"diff": 0.1067, "ci95": [0.0533, 0.16], "p": 0.0004, "n": 150, "a_only": 20,
                               "b_only": 4}}
    rows = validity_rows()
    heldout_by_type = {"free>free": {"accuracy": 0.58, "n_pairs": 40}, "gold>wrong": {"accuracy": 0.91,
                                                                                       "n_pairs": 22}}
    figures = {**validity_figures(rows), "pairwise_accuracy": 0.7123, "by_pair_type": heldout_by_type,
               "provenance_baseline_accuracy": 0.83,
               "settings": {"n": 4, "temperature": 0.7, "max_new_tokens": 256, "policy": "runs/x/sft/model"}}
    _write(run / "reward" / "validity.json", figures)
    _write_jsonl(run / "reward" / "validity_samples.jsonl", rows)
    summary["reward_validity"] = {k: figures[k] for k in ("auroc", "n", "n_correct", "n_questions")}
    record = json.loads((run / "reward" / "run.json").read_text())
    record["metrics"]["heldout"].update({"accuracy_by_pair_type": heldout_by_type,
                                         "provenance_baseline_accuracy": 0.83})
    _write(run / "reward" / "run.json", record)
    for stage in ("ppo_checker", "sft_round2"):
        summary["stages"][stage] = {"status": "done", "seconds": 30.0, "fingerprint": f"fp-{stage}"}
    if refused:
        summary["stages"]["ppo"] = {"status": "refused", "fingerprint": "fp-ppo", "reason": REASON,
                                    "validity": {"auroc": 0.48, "n": 40, "n_correct": 12, "n_questions": 10}}
        summary["refused"] = {"ppo": REASON}
        del summary["comparisons"]["sml_vs_ppo_checker"]
    else:
        (run / "ppo" / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in signal_log("sml")))
    _write_jsonl(run / "ppo_checker" / "metrics.jsonl", signal_log("checker"))
    _write(run / "ppo_checker" / "run.json", {"stage": "ppo", "status": "finished", "result": {"steps": 40}})
    _write(run / "summary.json", summary)
    return figures


def section(md: str, title: str) -> str:
    return md.split(f"\n## {title}\n")[1].split("\n## ")[0]


def test_reward_model_that_prefers_an_answer_is_named(tmp_path):
    """A yes/no reward model that scores "no" above "yes" whatever the question: its within-question AUROC is
    above chance only because the golds lean to "no". The report computes the answer-only scorer and the split
    by gold from the samples (this validity.json predates them) and says what the reward model learned."""
    run = make_run(tmp_path)
    add_new_outputs(run)
    rows = []
    for q, gold in enumerate(["no"] * 12 + ["yes"] * 8):
        for k, answer in enumerate(("yes", "no", "no", None)):
            rows.append({"id": f"q{q}", "sample": k, "text": "t", "prediction": answer, "correct": answer == gold,
                         "finished": answer is not None, "score": {"no": 2.0, "yes": 1.0, None: 0.0}[answer] + 0.01 * k})
    figures = {k: v for k, v in validity_figures(rows).items()
               if k not in ("answer_prior_within_question_auroc", "within_question_auroc_by_gold")}
    assert figures["within_question_auroc"] > 0.55  # the gate alone would let it through
    _write(run / "reward" / "validity.json", figures)
    _write_jsonl(run / "reward" / "validity_samples.jsonl", rows)
    reward = section(Path(make_report([str(run)])["markdown"]).read_text(), "Reward model")
    assert cells(reward, "within-question AUROC, questions whose gold is no")[1] == "1.000 over 12 questions"
    # a "yes" question: its right sample (1.0) beats only the unanswered one (0.03), not the two "no" (2.0x)
    assert cells(reward, "within-question AUROC, questions whose gold is yes")[1] == "0.333 over 8 questions"
    assert ("prefers some answers whatever the question: among a question's own samples it favours the right "
            "ones when the gold is no, the wrong ones when it is yes") in reward
    prior = float(cells(reward, "within-question AUROC of a scorer that knows only the stated answer")[1])
    assert prior == pytest.approx(figures["within_question_auroc"], abs=0.1)


def test_control_rows_validity_and_ppo_signals(tmp_path):
    run = make_run(tmp_path)
    figures = add_new_outputs(run)
    result = make_report([str(run)])
    md = Path(result["markdown"]).read_text()
    assert "could not be built" not in md

    # the accuracy table: the control rows after SML, before best-of-N; the paired comparisons name them
    accuracy = section(md, "Test accuracy")
    assert cells(accuracy, CHECKER) == [CHECKER, "46.0 ±8.0 (n=150)", "4.0 ±3.5 (n=120)"]
    assert cells(accuracy, ROUND2) == [ROUND2, "38.0 ±7.5 (n=150)", "n/a"]
    lines = accuracy.splitlines()
    order = [next(i for i, line in enumerate(lines) if line.startswith(f"| {name} |"))
             for name in (SML, CHECKER, ROUND2, "SML + best-of-N (reward model picks)")]
    assert order == list(range(order[0], order[0] + 4))
    assert cells(accuracy, f"{SML} vs {CHECKER}")[1:5] == ["coin_flip", "-4.7", "-10.0 to +0.7", "0.0912"]
    assert cells(accuracy, f"{CHECKER} vs SFT")[2:5] == ["+10.7", "+5.3 to +16.0", "0.0004 *"]
    assert "Control rows not in this run" not in md
    assert _model_keys(load_run(run))[4:6] == ["ppo_checker", "sft_round2"]  # also the accuracy plot's bars
    assert "PPO against the answer checker beats SFT-only on coin_flip by 10.7 points" in md

    # the reward validity figures, their reading, the pair types
    reward = section(md, "Reward model")
    assert cells(reward, "AUROC of the score against")[1] == (
        f"{figures['auroc']:.3f} on 200 samples ({figures['n_correct']} right) of 50 questions")
    within = figures["within_question_auroc"]
    assert cells(reward, "within-question AUROC")[1].startswith(f"{within:.3f} over ")
    assert cells(reward, "provenance-only baseline on the same pairs")[1] == "0.830"
    assert cells(reward, "samples cut at the token limit")[1] == "25.0"
    gate = "passes" if within >= 0.55 else "below it"  # rloo (the default): the gate reads the within-question AUROC
    assert cells(reward, "PPO's gate")[1] == f"min_reward_auroc 0.55 on the within-question AUROC: {gate}"
    assert "0.5 is chance" in reward and "knows only how each rationale was made" in reward
    assert "held-out pairs 0.712, at or below the 0.830 that provenance alone gives" in reward
    assert cells(reward, "free>free") == ["free>free", "0.580", "40"]
    assert cells(reward, "gold>wrong") == ["gold>wrong", "0.910", "22"]

    # PPO's signals, SML's PPO and the checker's side by side
    ppo = section(md, "PPO")
    assert cells(ppo, "signal")[1:] == [f"{who} {k}" for who in ("SML's PPO", "PPO vs checker")
                                        for k in ("first", "last", "mean")]
    assert cells(ppo, "iterations logged") == ["iterations logged", "40", "40"]
    kl = cells(ppo, "KL to the SFT model: first, max")
    assert kl[1:] == ["0.100, 4.000 (step 40)", "0.200, 8.000 (step 40)"]
    assert cells(ppo, "iterations with clipfrac > 0")[1:] == ["50.0 of 40", "100.0 of 40"]
    assert cells(ppo, "clip fraction")[1:] == ["0.000", "0.100", "0.050", "0.050", "0.050", "0.050"]
    auroc_mean = statistics.fmean(0.6 + 0.005 * s for s in range(1, 41) if s != 3)  # the NaN left out
    assert cells(ppo, "reward-model AUROC on the rollouts")[1:] == (
        ["0.605", "0.800", f"{auroc_mean:.3f}"] + ["not logged"] * 3)
    assert cells(ppo, "critic explained variance")[1:] == ["not logged"] * 6
    assert cells(ppo, "iterations stopped early by target_kl")[1:4] == ["0.0", "100.0", "10.0"]
    assert cells(ppo, "rollouts answered right (%)")[1:3] == ["25.5", "45.0"]

    # plots: the validity histogram and the signals, PNGs in the Markdown and the HTML
    for name in ("reward_validity.png", "ppo_signals.png", "ppo_curves.png", "accuracy.png"):
        check_png(run / "plots" / name)
        assert f"](plots/{name})" in md
    assert Path(result["html"]).read_text().count("data:image/png;base64,") == len(result["plots"]) == 6
    assert "Nothing missing" in md


def test_refused_ppo_says_why_where_sml_would_be(tmp_path):
    run = make_run(tmp_path, ppo=None)
    add_new_outputs(run, refused=True)
    result = make_report([str(run)])
    md = Path(result["markdown"]).read_text()
    assert "could not be built" not in md

    accuracy = section(md, "Test accuracy")
    assert cells(accuracy, SML) == [SML, "PPO refused", "PPO refused"]
    assert cells(accuracy, "SML + best-of-N")[1] == "PPO refused"
    assert (f"> **Warning:** PPO was refused by its gate, so there is no row for {SML} nor SML + best-of-N "
            f"(reward model picks): {REASON}") in accuracy
    assert cells(accuracy, CHECKER)[1] == "46.0 ±8.0 (n=150)"

    ppo = section(md, "PPO")
    assert f"PPO was refused by its reward-validity gate, so SML has no policy and no row: {REASON}" in ppo
    assert "The gate read AUROC 0.480 on 40 samples (12 right) of 10 questions" in ppo
    assert "No PPO log" not in md
    assert cells(ppo, "signal")[1:] == ["PPO vs checker first", "PPO vs checker last", "PPO vs checker mean"]
    assert cells(md, "ppo |")[:2] == ["ppo", "refused"]  # the stage table
    assert cells(section(md, "Reward model"), "PPO's gate")[1] == "refused PPO (min_reward_auroc 0.55)"

    missing = section(md, "Missing")
    assert f"stage ppo: refused by its gate: {REASON}" in missing
    assert f"{SML}: no model, its stage was refused (stage ppo below)" in missing
    assert "PPO log (ppo/metrics.jsonl)" not in missing and "no evaluation (eval/sml/)" not in missing
    check_png(run / "plots" / "ppo_signals.png")
    assert not (run / "plots" / "ppo_curves.png").exists()  # SML's PPO never ran

    other = make_run(tmp_path, "ran")
    compared = make_report([str(run), str(other)], out=str(tmp_path / "cmp"), plots=False)
    cmp = Path(compared["markdown"]).read_text()
    runs = [line for line in section(cmp, "Runs").splitlines() if line.startswith(("| run |", "| ran |"))]
    assert runs[1].endswith("| refused by its gate |") and runs[2].endswith("| finished |")
    assert cells(cmp, CHECKER)[1:3] == ["46.0 ±8.0 (n=150)", "n/a"]


def test_an_older_results_folder_still_reports(tmp_path, capsys):
    """results/coin_flip predates the controls, the validity report and most PPO signals."""
    if not (RESULTS / "summary.json").is_file():
        pytest.skip(f"{RESULTS} not found")
    from selfmotivated.cli import main

    out = tmp_path / "x"
    assert main(["report", str(RESULTS), "--out", str(out)]) == 0
    capsys.readouterr()
    md = (out / "report.md").read_text()
    assert "could not be built" not in md
    assert "No reward validity report (reward/validity.json)" in section(md, "Reward model")
    ppo = section(md, "PPO")
    assert cells(ppo, "reward-model AUROC on the rollouts")[1:] == ["not logged"] * 3
    assert cells(ppo, "signal")[1:] == ["SML's PPO first", "SML's PPO last", "SML's PPO mean"]
    assert "Control rows not in this run: ppo_checker, sft_round2" in md and CHECKER not in md
    for name in ("ppo_curves.png", "ppo_signals.png", "accuracy.png"):
        check_png(out / "plots" / name)


def test_signal_summary_and_auroc_interval():
    rows = [{"step": 1, "ppo/rm_auroc": 0.7}, {"step": 2, "ppo/rm_auroc": float("nan")},
            {"step": 3, "ppo/rm_auroc": 0.5}, {"step": 4}]
    s = signal_summary(json.loads(json.dumps(rows)), "ppo/rm_auroc")  # NaN survives the log's JSON
    assert (s["first"], s["last"], s["n"], s["max_step"]) == (0.7, 0.5, 2, 1)
    assert s["mean"] == pytest.approx(0.6)
    assert signal_summary(rows, "ppo/clipfrac") is None
    assert _cells(rows, "ppo/rm_auroc", 3, 1.0) == ["0.700", "0.500", "0.600"]
    assert _cells(rows[1:2], "ppo/rm_auroc", 3, 1.0) == ["undefined"] * 3  # logged, never a number
    assert _cells(rows, "ppo/clipfrac", 3, 1.0) == ["not logged"] * 3

    # At AUROC 0.5 the Hanley-McNeil variance is the Mann-Whitney null variance (n1 + n2 + 1) / (12 n1 n2).
    lo, hi = auroc_interval(0.5, 30, 70)
    assert (hi - lo) / 2 == pytest.approx(1.96 * math.sqrt(101 / (12 * 30 * 70)))
    wide, narrow = auroc_interval(0.7, 10, 10), auroc_interval(0.7, 1000, 1000)
    assert wide[0] < narrow[0] < 0.7 < narrow[1] < wide[1] <= 1.0
    assert auroc_interval(None, 10, 10) is None and auroc_interval(0.7, 0, 10) is None
