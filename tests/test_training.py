"""Shared training machinery: batch plans, process dealing, checkpoints that resume exactly, run records,
and a real two-process `accelerate launch` (gloo on CPU) against one process."""

import json
import os
import random
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from selfmotivated.reward import RewardConfig, run_reward
from selfmotivated.sft import SFTConfig, run_sft
from selfmotivated.training import (
    checkpoint_dirs, deal_eval, deal_steps, length_grouped_batches, padding_fraction,
    plan_training_steps, split_by_group,
)

REPO = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_thread")


def write_sft(path, n=120, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9 + i % 20)  # lengths vary a little
            fh.write(json.dumps({"question_id": f"q{i}", "prompt": f"Q: {a} plus {b}?\nA:",
                                 "response": f" {a} plus {b} makes {a + b}. The answer is {a + b}."}) + "\n")
    return str(path)


def write_pairs(path, n=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            right = i % 7
            for wrong in rng.sample([x for x in range(10) if x != right], 1 + i % 3):
                fh.write(json.dumps({"question_id": f"q{i}", "prompt": f"Q{i}: item {i % 7}?\nA:",
                                     "chosen": f" {right} it is.", "rejected": f" {wrong} it is.",
                                     "chosen_tier": 3, "rejected_tier": 1 + wrong % 2}) + "\n")
    return str(path)


# ----------------------------------------------------------------------------------------------------
# Batch plans


def test_length_grouped_batches_cover_every_item_once_seeded_and_with_little_padding():
    rng = random.Random(1)
    lengths = [rng.choice([20, 40, 200, 400]) + rng.randint(0, 10) for _ in range(500)]
    a = length_grouped_batches(lengths, 8, seed=3, epoch=0)
    assert sorted(i for b in a for i in b) == list(range(500))
    assert a == length_grouped_batches(lengths, 8, seed=3, epoch=0)
    assert a != length_grouped_batches(lengths, 8, seed=3, epoch=1)
    assert a != length_grouped_batches(lengths, 8, seed=4, epoch=0)
    order = list(range(500))
    rng.shuffle(order)
    unsorted = [order[i:i + 8] for i in range(0, 500, 8)]
    assert padding_fraction(a, lengths) < 0.05 < padding_fraction(unsorted, lengths)


def test_one_process_with_accumulation_sees_the_same_batches_as_two_processes():
    batches = [[i] for i in range(11)]
    one = deal_steps(batches, num_processes=1, process_index=0, grad_accum=2)
    two = [deal_steps(batches, 2, p, 1) for p in range(2)]
    assert len(one) == len(two[0]) == len(two[1]) == 5  # the ragged 11th batch is left out
    for s in range(5):
        assert sorted(sum(one[s], [])) == sorted(two[0][s][0] + two[1][s][0])


def test_training_plan_deals_items_to_steps_and_refuses_too_few_for_one_step():
    from types import SimpleNamespace

    items = [f"row{i}" for i in range(10)]
    costs = list(range(10))
    config = SFTConfig(batch_size=3, grad_accum=2, epochs=2)
    one_process = SimpleNamespace(num_processes=1, process_index=0)
    plan_epoch, figures = plan_training_steps(items, costs, config, one_process, "rows")
    assert figures == {"batches_per_epoch": 4, "batches_left_out_per_epoch": 0, "steps_per_epoch": 2,
                       "total_steps": 4}
    for epoch in range(2):
        steps = plan_epoch(epoch)
        assert len(steps) == 2 and all(len(micro) == 2 for micro in steps)
        assert sorted(row for micro in steps for batch in micro for row in batch) == sorted(items)
    assert plan_epoch(0) != plan_epoch(1)  # reshuffled each epoch

    with pytest.raises(ValueError, match=r"10 training rows make 1 batches of 16.*1 processes x 2 accumulation"):
        plan_training_steps(items, costs, SFTConfig(batch_size=16, grad_accum=2), one_process, "rows")


def test_eval_batches_are_split_evenly_and_counted_once():
    batches = [[i] for i in range(5)]
    shares = [deal_eval(batches, 2, p) for p in range(2)]
    assert len(shares[0]) == len(shares[1]) == 3  # same number of forward passes on every process
    counted = [b[0] for share in shares for b, counts in share if counts]
    assert sorted(counted) == list(range(5))


def test_split_by_group_holds_out_whole_questions():
    groups = [f"q{i // 3}" for i in range(60)]
    train, val = split_by_group(groups, 0.25, seed=0)
    assert {groups[i] for i in train}.isdisjoint({groups[i] for i in val})
    assert len({groups[i] for i in val}) == 5
    assert (train, val) == split_by_group(groups, 0.25, seed=0)
    assert val != split_by_group(groups, 0.25, seed=1)[1]


# ----------------------------------------------------------------------------------------------------
# Resume


def _weights(folder):
    return load_file(str(Path(folder) / ("model.safetensors" if (Path(folder) / "model.safetensors").is_file()
                                         else "adapter_model.safetensors")))


def _evals(out):
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], round(r["val_loss"], 6)) for r in rows if r.get("eval")]


def test_sft_resumed_after_a_stop_ends_where_an_uninterrupted_run_does(tiny_dir, tmp_path):
    # LoRA with dropout: the result depends on the restored RNG state, not only on weights and data order.
    common = dict(model=tiny_dir, train_file=write_sft(tmp_path / "sft.jsonl"), method="lora", lora_r=4,
                  lora_dropout=0.2, learning_rate=1e-2, epochs=2, batch_size=8, val_fraction=0.2, eval_steps=4,
                  save_steps=3, keep_best=False, early_stopping_patience=0, progress=False)
    whole = run_sft(SFTConfig(out=str(tmp_path / "whole"), **common))

    stopped = run_sft(SFTConfig(out=str(tmp_path / "part"), stop_after_steps=8, **common))
    assert stopped["steps"] == 8 and stopped["model_dir"] is None
    assert [d.name for d in checkpoint_dirs(tmp_path / "part")] == ["step-0000006"]  # steps 7-8 are lost
    ckpt = checkpoint_dirs(tmp_path / "part")[-1]
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "trainer_state.json").is_file()
    torch.load(ckpt / "optimizer.bin", weights_only=True)  # no pickled code in the optimizer state

    resumed = run_sft(SFTConfig(out=str(tmp_path / "part"), **common))
    assert resumed["steps"] == whole["steps"] == 24
    a, b = _weights(whole["model_dir"]), _weights(resumed["model_dir"])
    assert a.keys() == b.keys()
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert _evals(tmp_path / "whole") == _evals(tmp_path / "part")  # metrics log has no duplicated steps
    assert json.loads((tmp_path / "part" / "run.json").read_text())["status"] == "finished"


def test_reward_resumed_after_a_stop_ends_where_an_uninterrupted_run_does(tiny_dir, tmp_path):
    common = dict(model=tiny_dir, train_file=write_pairs(tmp_path / "pairs.jsonl"), method="full",
                  learning_rate=2e-3, epochs=3, batch_size=4, val_fraction=0.2, save_steps=4, keep_best=False,
                  early_stopping_patience=0, progress=False)
    whole = run_reward(RewardConfig(out=str(tmp_path / "whole"), **common))
    run_reward(RewardConfig(out=str(tmp_path / "part"), stop_after_steps=10, **common))
    resumed = run_reward(RewardConfig(out=str(tmp_path / "part"), **common))
    a, b = _weights(whole["model_dir"]), _weights(resumed["model_dir"])
    for k in a:
        assert torch.allclose(a[k], b[k], atol=1e-6), k
    assert resumed["heldout"]["pairwise_accuracy"] == whole["heldout"]["pairwise_accuracy"]


def test_resume_refuses_changed_settings_and_no_resume_starts_over(tiny_dir, tmp_path):
    common = dict(model=tiny_dir, train_file=write_sft(tmp_path / "sft.jsonl", n=40), epochs=1, batch_size=4,
                  save_steps=2, progress=False)
    run_sft(SFTConfig(out=str(tmp_path / "out"), stop_after_steps=3, **common))
    with pytest.raises(ValueError, match="learning_rate differ"):
        run_sft(SFTConfig(out=str(tmp_path / "out"), learning_rate=1e-3, **common))
    metrics = run_sft(SFTConfig(out=str(tmp_path / "out"), learning_rate=1e-3, resume=False, **common))
    assert metrics["steps"] == 9 and metrics["model_dir"]


# ----------------------------------------------------------------------------------------------------
# Two processes


LAUNCHED = textwrap.dedent("""
    import json, sys
    from selfmotivated.reward import RewardConfig, run_reward
    from selfmotivated.sft import SFTConfig, run_sft

    cfg = json.load(open(sys.argv[1]))
    sft = run_sft(SFTConfig(**cfg["sft"]))
    reward = run_reward(RewardConfig(**cfg["reward"]))
    from accelerate import PartialState
    state = PartialState()
    if state.is_main_process:
        json.dump({"sft": sft, "reward": reward, "processes": state.num_processes}, open(sys.argv[2], "w"))
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_process_accelerate_launch_matches_one_process(tiny_dir, tmp_path):
    """`accelerate launch` with 2 CPU processes (DDP over gloo) and grad_accum 1 against one process with
    grad_accum 2: the same batches make each step, so metrics and weights agree to float tolerance."""
    sft = dict(model=tiny_dir, train_file=write_sft(tmp_path / "sft.jsonl", n=80), learning_rate=3e-3, epochs=2,
               batch_size=4, val_fraction=0.2, save_steps=0, progress=False, early_stopping_patience=0)
    reward = dict(model=tiny_dir, train_file=write_pairs(tmp_path / "pairs.jsonl"), method="lora", lora_r=4,
                  lora_dropout=0.0, learning_rate=5e-3, epochs=2, batch_size=2, val_fraction=0.25, save_steps=0,
                  progress=False, early_stopping_patience=0)
    cfg = {"sft": {**sft, "out": str(tmp_path / "two" / "sft")},
           "reward": {**reward, "out": str(tmp_path / "two" / "reward")}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    (tmp_path / "launched.py").write_text(LAUNCHED)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes, also on a GPU machine
    cmd = [str(Path(sys.executable).with_name("accelerate")), "launch", "--config_file",
           str(REPO / "configs" / "accelerate" / "cpu_2proc.yaml"), "--main_process_port", str(_free_port()),
           str(tmp_path / "launched.py"), str(tmp_path / "cfg.json"), str(tmp_path / "result.json")]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = json.loads((tmp_path / "result.json").read_text())
    assert two["processes"] == 2

    # The one-process reference runs on the CPU too (on a GPU machine it would otherwise take the GPU).
    one_sft = run_sft(SFTConfig(out=str(tmp_path / "one" / "sft"), grad_accum=2, cpu=True, **sft))
    one_reward = run_reward(RewardConfig(out=str(tmp_path / "one" / "reward"), grad_accum=2, cpu=True, **reward))
    assert two["sft"]["steps"] == one_sft["steps"] and two["sft"]["train_tokens"] == one_sft["train_tokens"]
    assert two["sft"]["val_loss_final"] == pytest.approx(one_sft["val_loss_final"], rel=1e-4)
    assert two["sft"]["val_loss_final"] < 0.8 * two["sft"]["val_loss_start"]
    assert two["reward"]["heldout"]["val_loss"] == pytest.approx(one_reward["heldout"]["val_loss"], rel=1e-4)
    assert two["reward"]["heldout"]["pairwise_accuracy"] == one_reward["heldout"]["pairwise_accuracy"]
    assert two["reward"]["heldout"]["n_pairs"] == one_reward["heldout"]["n_pairs"]
    for stage in ("sft", "reward"):
        a, b = _weights(tmp_path / "one" / stage / "model"), _weights(tmp_path / "two" / stage / "model")
        for k in a:
            assert torch.allclose(a[k], b[k], atol=1e-5), (stage, k)
    record = json.loads((tmp_path / "two" / "sft" / "run.json").read_text())
    assert record["distributed"]["num_processes"] == 2


def test_stages_in_one_process_may_change_precision_and_device():
    """accelerate refuses a second Accelerator with another precision in the same process; `sml run` runs
    stages with their own settings one after another, so each stage starts from a fresh state."""
    from types import SimpleNamespace

    from selfmotivated.training import make_accelerator

    first = make_accelerator(SimpleNamespace(mixed_precision="no", cpu=True))
    assert first.mixed_precision == "no"
    second = make_accelerator(SimpleNamespace(mixed_precision="bf16", cpu=True))
    assert second.mixed_precision == "bf16" and second.device.type == "cpu"
    third = make_accelerator(SimpleNamespace(mixed_precision="no", cpu=True))
    assert third.mixed_precision == "no"


# ----------------------------------------------------------------------------------------------------
# Benchmark (smoke: the numbers are measured by `sml bench train` on the default model, not here)


def test_bench_train_counts_matmul_weights_and_reports_every_mode(tiny, tiny_dir):
    from selfmotivated.bench_train import BenchTrainConfig, format_bench_train, matmul_params, run_bench_train

    model, _ = tiny
    norms = sum(p.numel() for n, p in model.named_parameters() if "norm" in n)
    # the tied LM head is the embedding matrix: counted once, as the matmul it is
    assert matmul_params(model) == (sum(p.numel() for p in model.parameters()) - norms, 0)

    result = run_bench_train(BenchTrainConfig(model=tiny_dir, seq_len=32, batch_size=2, steps=1, warmup=0,
                                              hf_baseline=False, matmul_sizes="128"))
    for mode in ("sft_full", "sft_lora", "reward"):
        assert result[f"{mode}_peak_fraction"] > 0
        assert result["modes"][mode]["tokens_per_step"] == 64
    assert result["modes"]["sft_lora"]["lora_params"] > 0
    assert result["modes"]["reward"]["matmul_params"] < result["modes"]["sft_lora"]["matmul_params"]  # no LM head
    assert "of peak" in format_bench_train(result)


def test_a_setting_added_later_resumes_a_run_recorded_without_it(tmp_path):
    """A checkpointed run recorded before a setting existed resumes under a version that has it, at the value
    that keeps the old behaviour; at any other value it is refused."""
    import json

    from selfmotivated.training import check_resume_config

    (tmp_path / "config.json").write_text(json.dumps({"learning_rate": 1e-4}))
    check_resume_config(tmp_path, {"learning_rate": 1e-4, "policy_pairs": None, "policy_pairs_per_question": 16})
    with pytest.raises(ValueError, match="policy_pairs_per_question differ"):
        check_resume_config(tmp_path, {"learning_rate": 1e-4, "policy_pairs": None, "policy_pairs_per_question": 4})
