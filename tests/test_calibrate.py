"""`sml calibrate`: the pass@k estimator, the pick of a setting, and the resumable run on a tiny random model."""

import json
import math
import random

import pytest

from selfmotivated.calibrate import (
    CalibrateConfig, mean_pass_at_k, pass_at_k, pick_setting, run_calibrate, setting_folder, setting_label,
)
from selfmotivated.data import DataConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def test_pass_at_k_against_hand_computed_values():
    assert pass_at_k(8, 0, 8) == 0.0 and pass_at_k(8, 8, 1) == 1.0
    assert pass_at_k(8, 1, 1) == pytest.approx(1 / 8)
    assert pass_at_k(8, 1, 8) == 1.0  # n - c < k: every draw of 8 holds the right one
    assert pass_at_k(8, 2, 4) == pytest.approx(1 - 15 / 70)  # 1 - C(6,4)/C(8,4)
    assert pass_at_k(10, 3, 2) == pytest.approx(1 - 21 / 45)  # 1 - C(7,2)/C(10,2)
    assert pass_at_k(5, 2, 1) == pytest.approx(2 / 5)  # pass@1 is the share of right samples
    rng = random.Random(0)
    for _ in range(200):
        n = rng.randint(1, 40)
        c, k = rng.randint(0, n), rng.randint(1, n)
        assert pass_at_k(n, c, k) == pytest.approx(1 - math.comb(n - c, k) / math.comb(n, k), abs=1e-12)
    assert mean_pass_at_k([(8, 0), (8, 8)], 8) == 0.5 and mean_pass_at_k([], 8) is None
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def _row(label, greedy, pass8):
    return {"label": label, "greedy_accuracy": greedy, "pass_at": {8: pass8}}


def test_pick_setting_on_hand_made_numbers():
    rows = [_row("easy", 0.80, 0.99), _row("mid", 0.33, 0.90), _row("hard", 0.10, 0.60)]
    pick = pick_setting(rows)
    assert pick["chosen"] == 1 and pick["label"] == "mid"
    assert pick["verdicts"] == ["greedy 80% above the band", "fits",
                                "greedy 10% below the band; pass@8 0.60 < 0.75"]
    # Two fit: the one nearest the band's middle (35%) wins, whatever its order.
    rows = [_row("a", 0.27, 0.95), _row("b", 0.37, 0.80), _row("c", 0.44, 0.99)]
    assert pick_setting(rows)["label"] == "b"
    # Equally near the middle: the higher pass@8.
    assert pick_setting([_row("a", 0.30, 0.80), _row("b", 0.40, 0.90)])["label"] == "b"
    # In the band but too few right samples, or right samples but outside the band: none chosen.
    none = pick_setting([_row("a", 0.30, 0.70), _row("b", 0.50, 0.95)])
    assert none["chosen"] is None and "no setting has" in none["reason"] and "too few right samples" in none["reason"]
    assert "too easy" in pick_setting([_row("a", 0.60, 0.9)])["reason"]
    assert "too hard" in pick_setting([_row("a", 0.05, 0.9), _row("b", 0.1, 0.2)])["reason"]
    assert none["verdicts"] == ["pass@8 0.70 < 0.75", "greedy 50% above the band"]
    # The band and threshold are settings; keys read back from JSON are text.
    assert pick_setting([{"label": "x", "greedy_accuracy": 0.6, "pass_at": {"4": 0.5}}], (0.5, 0.7), 0.5,
                        4)["label"] == "x"
    assert pick_setting([_row("edge", 0.25, 0.75)])["label"] == "edge"  # the bounds are inside


def test_answers_by_habit_are_refused_and_pass_at_k_set_against_a_guesser():
    from selfmotivated.calibrate import answer_balance, guesser_pass_at_k

    # The coin_flip base model's shape: "yes" to most questions. 60 "yes" questions (54 right), 40 "no" ones
    # (8 right, 10 unanswered): 39% overall, inside the band, but 90% and 27% of the answered: 58.3% on balance.
    def rows(yes_right, no_right, no_unanswered):
        out = [{"gold": "yes", "prediction": "yes" if i < yes_right else "no", "correct": i < yes_right}
               for i in range(60)]
        out += [{"gold": "No", "prediction": None if i < no_unanswered else ("no" if i < no_unanswered + no_right
                                                                             else "yes"),
                 "correct": no_unanswered <= i < no_unanswered + no_right} for i in range(40)]
        return out
    leaning = answer_balance(rows(54, 8, 10))
    assert leaning["by_gold"]["no"] == {"n": 40, "answered": 30, "accuracy": 0.2, "accuracy_answered": 8 / 30}
    assert leaning["balanced_accuracy_answered"] == pytest.approx((0.9 + 8 / 30) / 2) and leaning["chance"] == 0.5
    habit = answer_balance(rows(57, 1, 10))  # 95% and 3%: 49% on balance
    assert habit["balanced_accuracy_answered"] < 0.5
    pick = pick_setting([{**_row("habit", 0.38, 0.99), "greedy_balance": habit},
                         {**_row("leaning", 0.40, 0.90), "greedy_balance": leaning}])
    assert pick["label"] == "leaning"
    assert pick["verdicts"][0].startswith("answers by habit: balanced accuracy of answered questions 49%, chance 50%")
    alone = pick_setting([{**_row("habit", 0.38, 0.99), "greedy_balance": habit}])
    assert alone["chosen"] is None and "answer by habit" in alone["reason"]
    # Numbers (more than 10 golds) and a single gold have no balance.
    assert answer_balance([{"gold": str(i), "prediction": str(i), "correct": True} for i in range(11)]) is None
    assert answer_balance([{"gold": "yes", "prediction": "yes", "correct": True}]) is None
    assert guesser_pass_at_k(2, 8) == pytest.approx(1 - 0.5 ** 8) and guesser_pass_at_k(5, 1) == pytest.approx(0.2)


def test_setting_names():
    options = {"min_terms": 2, "max_terms": 3}
    assert setting_label(options) == "min_terms=2,max_terms=3" and setting_label({}) == "default"
    assert setting_folder(options) == setting_folder({"max_terms": 3, "min_terms": 2}) == "max_terms=3,min_terms=2"
    odd = setting_folder({"operators": ["+", "*"], "x": "a/b"})
    assert "/" not in odd and len(odd) <= 100


def _config(tmp_path, settings, **kw):
    values = dict(model="tiny-random", out=str(tmp_path / "cal"), settings=settings, questions=5, samples=4,
                  pass_k=2, max_new_tokens=6, batch_size=8, progress=False, plot=True,
                  data=DataConfig(dataset="synthetic_coin_flip", split="train", n_test=0))
    values.update(kw)
    return CalibrateConfig(**values)


def test_calibrate_tiny_random_writes_table_plot_and_resumes(tmp_path, monkeypatch):
    import selfmotivated.models as models

    settings = ("people=2,flips=1", {"people": 3, "flips": 2})
    result = run_calibrate(_config(tmp_path, settings, few_shot=True))
    out = tmp_path / "cal"
    assert [r["label"] for r in result["rows"]] == ["people=2,flips=1", "people=3,flips=2"]
    for row in result["rows"]:
        assert row["n"] == 5 and row["sampled_questions"] == 5 and len(row["sample_correct_counts"]) == 5
        assert row["few_shot_accuracy"] is not None and 0 <= row["greedy_accuracy"] <= 1
        counts = [(4, c) for c in row["sample_correct_counts"]]
        assert row["pass_at"][2] == pytest.approx(mean_pass_at_k(counts, 2))
        assert row["sample_accuracy"] == pytest.approx(sum(row["sample_correct_counts"]) / 20)
        folder = out / "settings" / row["folder"]
        samples = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
        assert len(samples) == 5 and all(len(s["texts"]) == 4 for s in samples)
        # The setting's options reached the questions: exactly `flips` people flip.
        flips = int(row["label"][-1])
        preds = [json.loads(line) for line in (folder / "zero_shot" / "predictions.jsonl").read_text().splitlines()]
        assert all(p["question"].count(" flips the coin.") == flips for p in preds) and len(preds) == 5
        assert all(p["gold"] == ("yes" if flips % 2 == 0 else "no") for p in preds)
        assert row["greedy_balance"] is None  # one gold per setting here: nothing to balance
    saved = json.loads((out / "calibration.json").read_text())
    assert saved["chosen"] is None or saved["chosen"] in {r["label"] for r in saved["rows"]}
    table = (out / "calibration.md").read_text()
    assert "| people=2,flips=1 | 5 |" in table and "pass@2" in table
    assert (out / "calibration.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # Resume: every setting finished, so nothing is generated and the model is never loaded.
    def no_load(*a, **k):
        raise AssertionError("a finished calibration loaded the model")

    monkeypatch.setattr(models, "load_model", no_load)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")}
    again = run_calibrate(_config(tmp_path, settings, few_shot=True))
    assert [r["greedy_accuracy"] for r in again["rows"]] == [r["greedy_accuracy"] for r in result["rows"]]
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.jsonl")} == stamps
    # A new setting: only it is measured (one model load), the others are reused untouched.
    monkeypatch.undo()
    loads = []
    real = models.load_model
    monkeypatch.setattr(models, "load_model", lambda *a, **k: loads.append(a) or real(*a, **k))
    more = run_calibrate(_config(tmp_path, settings + ("people=2,flips=0",), few_shot=True))
    assert len(more["rows"]) == 3 and len(loads) == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    # Other settings into the same folder: refused, naming what differs.
    with pytest.raises(ValueError, match="temperature"):
        run_calibrate(_config(tmp_path, settings, few_shot=True, temperature=0.5))


def test_calibrate_interrupted_setting_continues(tmp_path):
    config = _config(tmp_path, ("people=2",), few_shot=False, plot=False)
    first = run_calibrate(config)
    folder = tmp_path / "cal" / "settings" / first["rows"][0]["folder"]
    lines = (folder / "samples.jsonl").read_text().splitlines()
    (folder / "result.json").unlink()  # as if stopped while sampling: two questions done, a third torn
    (folder / "samples.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])
    again = run_calibrate(config)
    rows = [json.loads(line) for line in (folder / "samples.jsonl").read_text().splitlines()]
    assert [r["id"] for r in rows] == [json.loads(line)["id"] for line in lines]
    assert rows[:2] == [json.loads(line) for line in lines[:2]]
    assert again["rows"][0]["sampled_questions"] == 5


def test_calibrate_command_reads_settings_from_yaml(tmp_path, capsys):
    from selfmotivated.cli import main

    config = tmp_path / "cal.yaml"
    config.write_text(
        "model: tiny-random\nquestions: 4\nsamples: 2\npass_k: 2\nmax_new_tokens: 4\nprogress: false\n"
        "plot: false\nsettings:\n  - {min_terms: 2, max_terms: 2}\n  - {min_terms: 3, max_terms: 3}\n"
        "data:\n  dataset: rg:chain_sum\n  n_test: 0\n  task_options: {min_digits: 1, max_digits: 1}\n")
    assert main(["calibrate", "--config", str(config), "--out", str(tmp_path / "o"), "--json",
                 "--band", "0", "1", "--min-pass", "0"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert [r["task_options"] for r in result["rows"]] == [
        {"min_digits": 1, "max_digits": 1, "min_terms": 2, "max_terms": 2},
        {"min_digits": 1, "max_digits": 1, "min_terms": 3, "max_terms": 3}]
    # With a band of 0-100% and no pass@k threshold both fit; the nearer to 50% is chosen.
    assert result["chosen"] in ("min_terms=2,max_terms=2", "min_terms=3,max_terms=3")
    assert result["chosen_task_options"]["min_digits"] == 1
