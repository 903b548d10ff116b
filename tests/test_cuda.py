"""GPU checks, skipped without CUDA: the engine decodes like HF on the GPU (float32 exactly, bfloat16 with
log-probs that match a full forward), training steps run in bf16 autocast and learn, and every stage of
the method runs there end to end. Run on a GPU machine with `pytest tests/test_cuda.py`."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

DEMO = Path(__file__).resolve().parents[1] / "configs" / "demo.yaml"
QUESTIONS = ["What is 2+2?", "Hi", "Tom has 3 apples and buys 5 more. How many?", "Is a coin heads up?"]


def cuda_tiny(dtype):
    from selfmotivated.tiny import build_tiny_model

    model, tokenizer = build_tiny_model()
    return model.to("cuda", dtype), tokenizer


def chat_prompts(tokenizer):
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]


def test_engine_greedy_matches_hf_on_cuda_float32():
    from selfmotivated.generation import SamplingParams, make_generator

    model, tokenizer = cuda_tiny(torch.float32)
    prompts = chat_prompts(tokenizer)
    params = SamplingParams(max_new_tokens=24, temperature=0.0)
    expected = make_generator(model, tokenizer, "hf").generate(prompts, params)
    for options in ({}, {"max_seqs": 2, "prefix_reuse": False}):
        got = make_generator(model, tokenizer, "engine", **options).generate(prompts, params)
        assert [[c.token_ids for c in r] for r in got] == [[c.token_ids for c in r] for r in expected]


def test_engine_bf16_logprobs_match_a_full_forward():
    from selfmotivated.generation import SamplingParams, make_generator

    model, tokenizer = cuda_tiny(torch.bfloat16)
    prompts = chat_prompts(tokenizer)
    params = SamplingParams(max_new_tokens=16, temperature=1.0, n=2, seed=0, return_logprobs=True)
    results = make_generator(model, tokenizer, "engine", max_seqs=4).generate(prompts, params)
    for prompt, completions in zip(prompts, results):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in completions:
            assert len(c.logprobs) == len(c.token_ids) > 0
            ids = torch.tensor([prompt_ids + c.token_ids], device="cuda")
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt_ids) - 1 : -1].float()
            expected = torch.log_softmax(logits, -1).gather(-1, ids[0, len(prompt_ids):, None])[:, 0].cpu()
            # bf16 keeps ~3 significant digits; a KV cache and a full forward round differently.
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=0.1), (c.logprobs, expected)


@pytest.mark.parametrize("method", ["full", "lora"])
def test_sft_learns_in_bf16_autocast_on_cuda(tmp_path, tiny_dir, method):
    from selfmotivated.sft import run_sft
    from tests.test_sft import base_config

    lr = 3e-3 if method == "full" else 1e-2
    metrics = run_sft(base_config(tiny_dir, tmp_path, method=method, lora_r=4, learning_rate=lr, epochs=3))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["distributed"]["device"].startswith("cuda")
    assert record["distributed"]["mixed_precision"] == "bf16"
    # LoRA moves less in 3 epochs (on the CPU too); both must clearly learn, not just run.
    assert metrics["val_loss_final"] < (0.8 if method == "full" else 0.9) * metrics["val_loss_start"], metrics


def test_ppo_lora_learns_the_toy_reward_in_bf16_on_cuda():
    from selfmotivated.ppo.actor_critic import build_actor_critic, lora_config
    from selfmotivated.ppo.trainer import PPOTrainer
    from tests.test_ppo import letter_reward, scores, toy_config, toy_prompts

    config = toy_config()
    model, tokenizer = cuda_tiny(torch.bfloat16)
    lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    ac = build_actor_critic(model, config.method, lora)
    # Adapters and the value head train in float32 on a bf16 backbone (PEFT upcasts them).
    assert all(p.dtype == torch.float32 for p in ac.actor_parameters + ac.critic_parameters)
    trainer = PPOTrainer(config, ac, tokenizer, letter_reward, toy_prompts(tokenizer))
    trainer.train()
    s = scores(trainer)
    assert all(torch.isfinite(torch.tensor(s))), s
    assert sum(s[-3:]) / 3 > s[0] + 0.3, s


def test_demo_pipeline_runs_on_cuda(tmp_path):
    from selfmotivated.pipeline import STAGES, load_pipeline_config, run_pipeline, smoke_config

    config = smoke_config(load_pipeline_config(DEMO))
    config.controls = ("ppo_checker", "sft_round2")
    config.best_of_n, config.few_shot_baseline = 2, True  # the demo leaves both out; here every row is made
    run = tmp_path / "run"
    summary = run_pipeline(config, run)
    stages = json.loads((run / "stages.json").read_text())
    assert [s for s in STAGES if stages[s]["status"] == "done"] == list(STAGES)
    assert set(summary["models"]) == {"base", "base_few_shot", "sft", "sml", "ppo_checker", "sft_round2",
                                      "sml_best_of_n"}
    for stage in ("sft", "reward"):
        record = json.loads((run / stage / "run.json").read_text())
        assert record["distributed"]["device"].startswith("cuda"), (stage, record["distributed"])
    assert (run / "ppo" / "policy" / "config.json").exists()
    assert (run / "report.html").exists()


def test_load_model_defaults_to_cuda_in_bf16(tiny_dir):
    from selfmotivated.models import load_model

    model, _ = load_model(tiny_dir)
    assert model.device.type == "cuda" and model.dtype == torch.bfloat16
    model, _ = load_model(tiny_dir, device="cpu")
    assert model.device.type == "cpu" and model.dtype == torch.float32
