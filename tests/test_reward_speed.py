"""Reward-model training with each question's prompt encoded once for its responses is the same training:
the same scores, loss and gradients as encoding every response with its prompt, and the same trained model."""

import json
import random

import pytest
import torch

from selfmotivated.reward import (
    RewardConfig, collate_groups, load_scoring_backbone, reward_loss, reward_loss_shared, run_reward,
)
from selfmotivated.training import add_lora

pytestmark = pytest.mark.usefixtures("one_thread")


class Lora:
    lora_target_modules, lora_r, lora_alpha, lora_dropout = "all-linear", 4, 8, 0.0


def questions(tokenizer, n_questions=3, seed=0):
    """Items as tokenize_groups makes them: per question its prompt + responses of several lengths (some
    starting alike, so the shared part runs into the responses), tiers and pairs."""
    rng = random.Random(seed)
    items = []
    for q in range(n_questions):
        prompt = tokenizer(f"Question {q}: how many legs has a {'spider dog ant'.split()[q % 3]}?" + " Think." * q,
                           add_special_tokens=False)["input_ids"]
        texts = [f" It has {rng.randint(0, 9)} legs" + "." * rng.randint(0, 6) for _ in range(2 + q)] + [" No idea"]
        seqs = [prompt + tokenizer(t, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
                for t in texts]
        tiers = [3] + [2] * (len(seqs) - 2) + [1]
        pairs = [(b, w) for b in range(len(seqs)) for w in range(len(seqs)) if tiers[b] > tiers[w]]
        items.append({"question_id": f"q{q}", "seqs": seqs, "tiers": tiers, "pairs": pairs})
    return items


@pytest.mark.parametrize("call_tokens", [16, 0], ids=["one-chunk", "chunked-by-length"])
def test_shared_prompt_gives_the_plain_scores_loss_and_gradients(tiny_dir, call_tokens, monkeypatch):
    import selfmotivated.shared_prefix as shared_prefix

    monkeypatch.setattr(shared_prefix, "CHUNK_CALL_TOKENS", call_tokens)  # 0: a response pass per length
    model, tok = load_scoring_backbone(tiny_dir)
    model = add_lora(model, Lora, "SEQ_CLS", modules_to_save=["score"])
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():  # a reward model that is not the identity: random adapter and head
        for name, p in model.named_parameters():
            if "lora_B" in name or "score" in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
    items = questions(tok)
    results = {}
    for shared in (False, True):
        model.zero_grad(set_to_none=True)
        if shared:
            loss, stats = reward_loss_shared(model, items, tok.pad_token_id, margin_per_tier_gap=0.5)
        else:
            loss, stats = reward_loss(model, collate_groups(items, tok.pad_token_id, margin_per_tier_gap=0.5))
        loss.backward()
        results[shared] = (loss.item(), stats, {n: p.grad.clone() for n, p in model.named_parameters()
                                                if p.grad is not None})
    (plain_loss, plain_stats, plain_grads), (shared_loss, shared_stats, shared_grads) = results[False], results[True]
    assert shared_loss == pytest.approx(plain_loss, abs=1e-6) and plain_stats["accuracy"] == shared_stats["accuracy"]
    assert 0.05 < plain_stats["accuracy"] < 0.95  # scores that disagree with the tiers: the loss is not trivial
    assert plain_grads.keys() == shared_grads.keys() and any("score" in n for n in plain_grads)
    for name, grad in plain_grads.items():
        assert (grad - shared_grads[name]).norm() <= 1e-5 * grad.norm() + 1e-8, name
    # Each prompt counted once: fewer positions computed than the padded plain batch.
    assert shared_stats["positions"] < plain_stats["positions"]
    assert shared_stats["pairs"] == plain_stats["pairs"]


def write_pairs(path, n=40, seed=0):
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            right = i % 7
            for k, wrong in enumerate(rng.sample([x for x in range(10) if x != right], 3)):
                fh.write(json.dumps({"question_id": f"q{i}", "prompt": f"Q{i}: what is {right} + 0?\nA:",
                                     "chosen": f" {right}, as {right} + 0 = {right}." + " yes" * k,
                                     "rejected": f" {wrong}.", "chosen_tier": 3, "rejected_tier": 1}) + "\n")
    return str(path)


def test_training_with_a_shared_prompt_ends_where_plain_training_ends(tiny_dir, tmp_path):
    metrics = {}
    for shared in (False, True):
        cfg = RewardConfig(model=tiny_dir, train_file=write_pairs(tmp_path / "pairs.jsonl"),
                           out=str(tmp_path / f"out-{shared}"), method="lora", lora_r=4, lora_alpha=8,
                           lora_dropout=0.0, learning_rate=3e-3, epochs=2, batch_size=4, val_fraction=0.25,
                           save_steps=0, progress=False, early_stopping_patience=0, warmup_ratio=0.0,
                           share_prompt=shared, cpu=True)  # float32: bf16 on a GPU rounds the paths apart
        metrics[shared] = run_reward(cfg)
    plain, fast = metrics[False]["heldout"], metrics[True]["heldout"]
    start = metrics[False]["heldout_start"]
    assert plain["val_loss"] < start["val_loss"] - 1e-3  # it trained, so ending alike means something
    assert fast["val_loss"] == pytest.approx(plain["val_loss"], abs=1e-5)
    assert fast["pairwise_accuracy"] == plain["pairwise_accuracy"]
    assert metrics[True]["steps"] == metrics[False]["steps"]


def test_bench_train_reports_the_reward_pair_speedup_measured_side_by_side(tiny_dir):
    from selfmotivated.bench_train import BenchTrainConfig, format_bench_train, run_bench_train

    result = run_bench_train(BenchTrainConfig(model=tiny_dir, modes="", steps=1, warmup=0, matmul_sizes="128",
                                              pair_questions=4, pair_rounds=1))
    pairs = result["reward_pairs"]
    assert result["reward_pair_speedup"] == pairs["speedup"] > 0
    assert pairs["speedup"] == pytest.approx(pairs["plain_seconds_per_pair"] / pairs["shared_seconds_per_pair"],
                                             rel=0.01)
    assert pairs["loss_difference"] < 1e-5 and pairs["pairs"] == 4 * 8  # tiers 3,2,2,1,1: 8 pairs a question
    assert "reward model per pair" in format_bench_train(result)
