"""Expert iteration (the sft_round2 control): PPO's sampling budget and order, only correct samples kept and
rendered like the first SFT round's rows, the SFT model fine-tuned on them, samples reused on a rerun."""

import json

import pytest

from selfmotivated.data import DataConfig
from selfmotivated.expert_iteration import ExpertIterationConfig, question_schedule, run_expert_iteration
from selfmotivated.ppo.trainer import prompt_order

pytestmark = pytest.mark.usefixtures("one_thread")


def test_schedule_follows_ppo_prompt_order_across_passes():
    schedule = question_schedule(n_questions=3, samples=20, per_prompt=4, seed=7)
    assert len(schedule) == 5  # ceil(20 / 4) prompts
    assert schedule == prompt_order(3, 7, 0) + prompt_order(3, 7, 1)[:2]


def test_expert_iteration_fine_tunes_on_correct_samples_only(tiny_dir, tmp_path, monkeypatch):
    import selfmotivated.answers as answers
    from safetensors.torch import load_file

    calls = {"n": 0}

    def every_third_right(text, example):  # a tiny random model is never right: decide by position
        calls["n"] += 1
        return ("yes", calls["n"] % 3 == 0)

    monkeypatch.setattr(answers, "check_answer", every_third_right)
    config = ExpertIterationConfig(
        sft_model=tiny_dir, out=str(tmp_path / "ei"), samples=12, samples_per_prompt=2, max_new_tokens=6,
        progress=False, sft={"max_steps": 2, "batch_size": 2, "save_steps": 0, "eval_steps": 0, "progress": False,
                             "val_fraction": 0.0},
        data=DataConfig(dataset="synthetic_coin_flip", split="train", limit=4))
    result = run_expert_iteration(config)
    samples = [json.loads(x) for x in (tmp_path / "ei" / "samples.jsonl").read_text().splitlines()]
    kept = [json.loads(x) for x in (tmp_path / "ei" / "kept.jsonl").read_text().splitlines()]
    assert len(samples) == 12 and result["samples"] == {"samples": 12, "correct": 4, "reused": False}
    assert len(kept) == 4 and all(r["response"].rstrip().endswith(".") and "The answer is" in r["response"]
                                  for r in kept)
    before = load_file(f"{tiny_dir}/model.safetensors")
    after = load_file(str(tmp_path / "ei" / "model" / "model.safetensors"))
    assert any(not (before[k] == after[k]).all() for k in before)  # fine-tuned
    # Same settings: the samples are reused, not drawn again.
    assert run_expert_iteration(config)["samples"]["reused"] is True
