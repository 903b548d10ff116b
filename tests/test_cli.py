"""The `sml` commands end to end on tiny-random (in-process through `cli.main`, one real subprocess)."""

import json
import subprocess
import sys

import pytest

from selfmotivated.cli import main
from selfmotivated.records import BUILTIN_ANSWER_TYPES

FAST = ["--model", "tiny-random", "--max-new-tokens", "6", "--no-progress"]


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_data_list_and_show(capsys, data_dir):
    code, out, _ = run_cli(capsys, "data", "list", "--json")
    keys = {row["key"] for row in json.loads(out)}
    assert code == 0 and set(BUILTIN_ANSWER_TYPES) <= keys and "synthetic_coin_flip" in keys
    code, out, _ = run_cli(capsys, "data", "show", "coin_flip", "--data-dir", data_dir, "--json")
    desc = json.loads(out)
    assert desc["answer_type"] == "yes_no"
    assert json.dumps(desc).count("350") >= 1 and json.dumps(desc).count("150") >= 1


def test_eval_resumes_without_duplicates(capsys, tmp_path):
    out = tmp_path / "ev"
    code, stdout, _ = run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 3, "--out", out,
                              "--json")
    assert code == 0
    metrics = json.loads(stdout)
    assert metrics["n"] == 3 and metrics["split"] == "test"
    first = (out / "predictions.jsonl").read_text().splitlines()
    code, stdout, _ = run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 5, "--out", out,
                              "--json")
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert json.loads(stdout)["n"] == 5
    assert [r["id"] for r in rows] == [f"synthetic_coin_flip-test-{i}" for i in range(5)]
    assert (out / "predictions.jsonl").read_text().splitlines()[:3] == first  # old rows kept as they were
    assert {"id", "prompt", "output", "prediction", "gold", "correct"} <= set(rows[0])


def test_eval_refuses_to_mix_settings(capsys, tmp_path):
    out = tmp_path / "ev"
    assert run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 2, "--out", out)[0] == 0
    code, _, err = run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 2, "--out", out,
                           "--prompt", "few_shot")
    assert code == 2 and "prompt" in err and "another --out" in err
    # The same templates file, edited: its content made the stored prompts, so they are not reused.
    templates = tmp_path / "templates.json"
    templates.write_text("{}")
    out = tmp_path / "ev2"
    assert run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 2, "--out", out,
                   "--templates", templates)[0] == 0
    templates.write_text(json.dumps({"response_start": "Let us reason."}))
    code, _, err = run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 2, "--out", out,
                           "--templates", templates)
    assert code == 2 and "templates_digest" in err


def test_eval_torn_last_line_is_redone(capsys, tmp_path):
    out = tmp_path / "ev"
    run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 3, "--out", out)
    path = out / "predictions.jsonl"
    lines = path.read_text().splitlines()
    path.write_text("\n".join(lines[:2]) + "\n" + lines[2][:20])  # a crash in the middle of a write
    code, stdout, _ = run_cli(capsys, "eval", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 3, "--out", out,
                              "--json")
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert code == 0 and json.loads(stdout)["n"] == 3 and len(rows) == 3


def test_eval_user_jsonl(capsys, tmp_path):
    data = tmp_path / "my.jsonl"
    data.write_text("".join(json.dumps({"problem": f"What is {i} + 1?", "solution": str(i + 1)}) + "\n"
                            for i in range(10)))
    code, stdout, _ = run_cli(capsys, "eval", *FAST, "--dataset", data, "--question-field", "problem",
                              "--answer-field", "solution", "--answer-type", "number", "--out", tmp_path / "ev",
                              "--json")
    assert code == 0 and json.loads(stdout)["n"] == 3  # seeded 70/30 split of 10 rows


def test_eval_yaml_config_errors_name_the_key(capsys, tmp_path):
    cfg = tmp_path / "eval.yaml"
    cfg.write_text("model: tiny-random\nmax_new_tokns: 4\n")
    code, _, err = run_cli(capsys, "eval", "--config", cfg, "--out", tmp_path / "ev")
    assert code == 2 and "max_new_tokns" in err and str(cfg) in err
    cfg.write_text("model: tiny-random\ndata:\n  dataset: synthetic_coin_flip\n  limt: 3\n")
    code, _, err = run_cli(capsys, "eval", "--config", cfg, "--out", tmp_path / "ev")
    assert code == 2 and "limt" in err


def test_eval_missing_data_dir_is_clear(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("SML_DATA_DIR", raising=False)
    code, _, err = run_cli(capsys, "eval", *FAST, "--dataset", "gsm8k", "--data-dir", tmp_path / "nowhere",
                           "--out", tmp_path / "ev")
    assert code == 2 and "nowhere" in err


def test_score_command(capsys, tmp_path):
    src = tmp_path / "out.jsonl"
    src.write_text(json.dumps({"output": "2 + 3 = 5. The answer is 5.", "gold": "5.0"}) + "\n"
                   + json.dumps({"output": "I think it is 7.", "gold": "5"}) + "\n")
    code, stdout, _ = run_cli(capsys, "score", "--answer-type", "number", "--input", src,
                              "--output", tmp_path / "s.jsonl", "--json")
    assert code == 0 and json.loads(stdout) == {"n": 2, "n_correct": 1, "accuracy": 0.5, "n_no_answer": 0}
    rows = [json.loads(line) for line in (tmp_path / "s.jsonl").read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, False] and rows[1]["prediction"] == "7"


def test_generate_stats_export(capsys, tmp_path):
    run = tmp_path / "run"
    code, _, _ = run_cli(capsys, "generate", *FAST, "--dataset", "synthetic_coin_flip", "--limit", 2,
                         "--n-free", 1, "--n-gold", 1, "--n-wrong", 1, "--out", run)
    assert code == 0 and (run / "rationales.sqlite").exists()
    code, stdout, _ = run_cli(capsys, "rationales", "stats", run, "--json")
    stats = json.loads(stdout)
    assert stats["n_questions"] == 2 and stats["n_rationales"] == 6
    code, _, _ = run_cli(capsys, "rationales", "export", run, "--out", tmp_path / "exp")
    assert code == 0 and (tmp_path / "exp").is_dir()


def test_sml_entry_point_subprocess(tmp_path):
    result = subprocess.run([sys.executable, "-m", "selfmotivated", "data", "list"], capture_output=True, text=True)
    assert result.returncode == 0 and "synthetic_last_letters" in result.stdout
    result = subprocess.run([sys.executable, "-m", "selfmotivated", "eval", "--model", "tiny-random",
                             "--dataset", "no_such_dataset", "--out", str(tmp_path / "x")],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "no_such_dataset" in result.stderr


@pytest.mark.parametrize("key", sorted(BUILTIN_ANSWER_TYPES))
def test_eval_tiny_random_on_every_builtin_dataset(key, data_dir, tmp_path, tiny):
    from selfmotivated.data import DataConfig
    from selfmotivated.evaluate import EvalConfig, run_eval

    model, tokenizer = tiny
    config = EvalConfig(model="tiny-random", out=str(tmp_path), max_new_tokens=4, progress=False,
                        data=DataConfig(dataset=key, data_dir=str(data_dir), limit=2))
    metrics = run_eval(config, model=model, tokenizer=tokenizer)
    rows = [json.loads(line) for line in (tmp_path / "predictions.jsonl").read_text().splitlines()]
    assert metrics["n"] == 2 and len(rows) == 2 and all(r["id"].startswith(key) for r in rows)
