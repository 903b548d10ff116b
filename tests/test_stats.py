"""Paired statistics: McNemar's exact test, the paired bootstrap, and comparisons of a run's model rows."""

import json
import os
import math
import random
from pathlib import Path

import numpy as np
import pytest

from selfmotivated.stats import (
    compare_all, compare_eval_dirs, compare_models, compare_pair, mcnemar_exact, paired_bootstrap_ci, row_order,
)


def test_mcnemar_exact_against_hand_computed_values():
    # b=10, c=2: n=12, P(X<=2) = (1 + 12 + 66) / 4096, two-sided 2 * 79 / 4096.
    assert mcnemar_exact(10, 2) == pytest.approx(2 * 79 / 4096) == pytest.approx(0.0386, abs=5e-5)
    assert mcnemar_exact(2, 10) == mcnemar_exact(10, 2)  # symmetric
    assert mcnemar_exact(0, 0) == 1.0 and mcnemar_exact(5, 5) == 1.0  # capped at 1
    assert mcnemar_exact(0, 5) == pytest.approx(2 / 32)  # 0.0625: 5 discordant pairs can never reach 0.05
    assert mcnemar_exact(0, 6) == pytest.approx(2 / 64)
    assert mcnemar_exact(1, 7) == pytest.approx(2 * (1 + 8) / 256)
    # Large n stays exact: against a log-space sum of the binomial tail.
    b, c = 5200, 4800
    n = b + c
    log_terms = [math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) - n * math.log(2)
                 for i in range(c + 1)]
    top = max(log_terms)
    expected = 2 * math.exp(top) * sum(math.exp(t - top) for t in log_terms)
    assert mcnemar_exact(b, c) == pytest.approx(expected, rel=1e-9) and 0 < expected < 1e-4
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 2)


def test_bootstrap_is_seeded_and_matches_index_resampling():
    rng = random.Random(1)
    a = [rng.random() < 0.6 for _ in range(300)]
    b = [x if rng.random() < 0.7 else not x for x in a]
    one = paired_bootstrap_ci(a, b, seed=3)
    assert one == paired_bootstrap_ci(a, b, seed=3)
    assert one != paired_bootstrap_ci(a, b, seed=4)
    # The textbook paired bootstrap: resample question indices, both verdicts together.
    gen = np.random.default_rng(0)
    x, y = np.array(a, float), np.array(b, float)
    idx = gen.integers(0, len(a), size=(10_000, len(a)))
    naive = np.quantile((x[idx] - y[idx]).mean(axis=1), [0.025, 0.975])
    assert one[0] == pytest.approx(naive[0], abs=0.01) and one[1] == pytest.approx(naive[1], abs=0.01)
    diff = (sum(a) - sum(b)) / len(a)
    assert one[0] < diff < one[1]


def test_bootstrap_interval_covers_the_true_difference():
    # Two models with true accuracies 0.55 and 0.45 on a population of questions: over 200 test sets of 200
    # questions the 95% interval should contain the true difference (0.10) about 95% of the time.
    rng = np.random.default_rng(7)
    covered = 0
    for trial in range(200):
        # Correlated verdicts: P(both) .35, P(a only) .20, P(b only) .10, P(neither) .35.
        kinds = rng.choice(4, size=200, p=[0.35, 0.20, 0.10, 0.35])
        a = list((kinds == 0) | (kinds == 1))
        b = list((kinds == 0) | (kinds == 2))
        low, high = paired_bootstrap_ci(a, b, n_resamples=2000, seed=trial)
        covered += low <= 0.10 <= high
    assert 0.90 <= covered / 200 <= 0.99


def test_identical_models_and_alignment_by_id():
    verdicts = {f"q{i}": i % 3 == 0 for i in range(50)}
    same = compare_pair(verdicts, dict(reversed(list(verdicts.items()))))
    assert same["diff"] == 0 and same["p"] == 1.0 and same["ci95"] == [0.0, 0.0] and same["n"] == 50
    # Different orders and a question only one model has: matched by id, the extra one left out.
    a = {"q1": True, "q2": True, "q3": False, "q4": True, "q5": False}
    b = {"q5": True, "q4": True, "q3": False, "q2": False, "q1": False, "q9": True}
    c = compare_pair(a, b)
    assert (c["n"], c["a_only"], c["b_only"], c["only_in_b"]) == (5, 2, 1, 1)
    assert c["diff"] == pytest.approx(1 / 5) and c["accuracy_a"] == 0.6 and c["accuracy_b"] == 0.4
    with pytest.raises(ValueError, match="share no question"):
        compare_pair({"x": True}, {"y": True})


def _eval_folder(run, key, dataset, verdicts, rerank=False):
    folder = run / "eval" / key / dataset
    folder.mkdir(parents=True)
    if rerank:
        rows = [{"id": q, "best_correct": c, "first_correct": not c} for q, c in verdicts.items()]
        (folder / "rerank.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        rows = [{"id": q, "correct": c, "prediction": "1", "gold": "1", "new_tokens": 9, "finish_reason": "eos"}
                for q, c in verdicts.items()]
        (folder / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"id": "torn')
    return folder


def test_compare_models_reads_every_row_of_a_run(tmp_path):
    ids = [f"d-test-{i}" for i in range(40)]
    base = {q: i < 10 for i, q in enumerate(ids)}
    sft = {q: i < 20 for i, q in enumerate(ids)}
    sml = {q: 5 <= i < 30 for i, q in enumerate(reversed(ids))}
    _eval_folder(tmp_path, "base", "d", base)
    _eval_folder(tmp_path, "sft", "d", dict(reversed(list(sft.items()))))
    _eval_folder(tmp_path, "sml", "d", sml)
    _eval_folder(tmp_path, "sml_best_of_n", "d", sml, rerank=True)
    _eval_folder(tmp_path, "base", "other", base)
    (tmp_path / "summary.json").write_text(json.dumps({"datasets": ["d", "other"]}))
    result = compare_models(tmp_path)
    assert set(result) == {"sml_best_of_n_vs_sml", "sml_best_of_n_vs_sft", "sml_best_of_n_vs_base",
                           "sml_vs_sft", "sml_vs_base", "sft_vs_base"}
    assert result["sft_vs_base"]["a_only"] == 10 and result["sft_vs_base"]["b_only"] == 0
    assert result["sft_vs_base"]["p"] == pytest.approx(2 / 1024)
    assert result["sml_best_of_n_vs_sml"]["diff"] == 0
    assert result["sml_vs_base"]["diff"] == pytest.approx((25 - 10) / 40)
    assert compare_all(tmp_path).keys() == {"d"}  # "other" has one row only
    assert row_order(["base", "sft_round2", "sml", "ppo_checker", "sft"]) == [
        "sml", "ppo_checker", "sft_round2", "sft", "base"]
    # Two evaluation folders directly, as `sml compare` does.
    two = compare_eval_dirs(tmp_path / "eval" / "sml" / "d", tmp_path / "eval" / "base" / "d")
    assert two["a_vs_b"]["diff"] == result["sml_vs_base"]["diff"]


def test_sml_compare_command(tmp_path, capsys):
    from selfmotivated.cli import main

    one = _eval_folder(tmp_path / "a", "sml", "d", {"q1": True, "q2": True, "q3": False})
    two = _eval_folder(tmp_path / "b", "sml", "d", {"q1": False, "q2": True, "q3": False})
    assert main(["compare", str(one), str(two), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["a_vs_b"]["a_only"] == 1 and result["a_vs_b"]["n"] == 3
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    assert "A.sml_vs_B.sml" in capsys.readouterr().out


def test_summary_and_report_show_the_comparisons(tmp_path):
    from selfmotivated.pipeline import PipelineConfig, write_summary
    from selfmotivated.report import make_report

    ids = [f"synthetic_coin_flip-test-{i}" for i in range(30)]
    _eval_folder(tmp_path, "base", "synthetic_coin_flip", {q: i < 5 for i, q in enumerate(ids)})
    _eval_folder(tmp_path, "sft", "synthetic_coin_flip", {q: i < 12 for i, q in enumerate(ids)})
    _eval_folder(tmp_path, "sml", "synthetic_coin_flip", {q: 2 <= i < 20 for i, q in enumerate(ids)})
    summary = write_summary(PipelineConfig(report=False), tmp_path, {})
    assert set(summary["comparisons"]) == {"sml_vs_sft", "sml_vs_base", "sft_vs_base"}
    c = summary["comparisons"]["sml_vs_base"]
    assert (c["a_only"], c["b_only"], c["n"]) == (15, 2, 30)
    assert c["p"] == pytest.approx(mcnemar_exact(15, 2)) and c["ci95"][0] < c["diff"] < c["ci95"][1]
    assert json.loads((tmp_path / "summary.json").read_text())["comparisons"] == summary["comparisons"]
    make_report([str(tmp_path)])
    text = (tmp_path / "report.md").read_text()
    assert "McNemar" in text and "SML (SFT + reward model + PPO) vs base, zero-shot CoT" in text
    assert f"{mcnemar_exact(15, 2):.3g} *" in text
    # A results folder keeps summary.json but no per-question files: the report reads the summary's figures.
    from selfmotivated.evaluate import summarize

    for path in tmp_path.glob("eval/*/*/predictions.jsonl"):
        rows = [json.loads(line) for line in path.read_text().splitlines()[:-1]]
        (path.parent / "metrics.json").write_text(json.dumps(summarize(rows)))
        path.unlink()
    make_report([str(tmp_path)])
    assert f"{mcnemar_exact(15, 2):.3g} *" in (tmp_path / "report.md").read_text()


def test_a_dataset_given_as_a_file_path_is_evaluated_inside_the_run(tmp_path):
    """A user's dataset named by its path (or a hub id) gets one safe folder under RUN/eval/<model>/; the
    pipeline, `sml compare` and the report map it back to the dataset's name."""
    from selfmotivated.data import dataset_folder
    from selfmotivated.pipeline import load_pipeline_config, stage_configs
    from selfmotivated.report.runs import load_run

    data = tmp_path / "data" / "my.jsonl"
    folder = dataset_folder(str(data))
    assert folder.startswith("my.jsonl-") and "/" not in folder
    assert dataset_folder("hf:owner/name").startswith("hf_owner_name-")
    assert dataset_folder(str(data) + "@transfer") == folder + "@transfer"
    assert dataset_folder("../x") != "../x" and "/" not in dataset_folder("../x")
    assert dataset_folder("gsm8k") == "gsm8k" and dataset_folder("gsm8k@transfer") == "gsm8k@transfer"
    if os.name != "nt":
        assert dataset_folder("rg:chain_sum") == "rg:chain_sum"  # the name itself, as before

    run = tmp_path / "run"
    config_file = tmp_path / "c.yaml"
    config_file.write_text(f"model: tiny-random\ndataset: {data}\ndata: {{answer_type: number}}\n")
    config = load_pipeline_config(str(config_file))
    outs = [cfg.out for _, cfg in stage_configs(config, run, "baseline")]
    assert outs and all(Path(o).parent.parent == run / "eval" and Path(o).name == folder for o in outs)

    ids = [f"q{i}" for i in range(30)]
    _eval_folder(run, "base", folder, {q: i < 5 for i, q in enumerate(ids)})
    _eval_folder(run, "sft", folder, {q: i < 20 for i, q in enumerate(ids)})
    (run / "summary.json").write_text(json.dumps({"datasets": [str(data)]}))
    assert compare_models(run, str(data))["sft_vs_base"]["a_only"] == 15
    assert compare_all(run).keys() == {str(data)}
    report_run = load_run(run)
    assert report_run.datasets == [str(data)] and str(data) in report_run.accuracy["sft"]


def test_sml_compare_reward_models_on_the_same_validity_samples(tmp_path, capsys):
    import json

    from selfmotivated.cli import main

    for name, good in (("a", lambda i: i % 2 == 0), ("b", lambda i: True)):
        folder = tmp_path / name / "reward"
        folder.mkdir(parents=True)
        rows = [{"id": f"q{i}", "sample": s, "text": t, "correct": ok, "score": float(ok == good(i))}
                for i in range(10) for s, (t, ok) in enumerate((("right", True), ("wrong", False)))]
        (folder / "validity_samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--reward-models"]) == 0
    out = capsys.readouterr().out
    assert "within-question AUROC on 10 questions with the same samples: 0.500" in out and "-> 1.000" in out
    assert "difference +0.500" in out
    assert main(["compare", str(tmp_path / "a"), str(tmp_path), "--reward-models"]) != 0
    assert "validity_samples.jsonl not found" in capsys.readouterr().err
