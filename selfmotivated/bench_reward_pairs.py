"""Reward-model training per pair, each question's prompt encoded once for its responses (RewardConfig.share_prompt)
against the plain path (every response encoded with its prompt), in one process: part of `sml bench train`.

The data has the shape of the reward stage's real data (the README's runs: a ~115-token zero-shot prompt,
~4.7 distinct responses per question of ~110 tokens on average, ~6 pairs per question): `questions` questions of
random tokens, `prompt_tokens` shared by a question's `responses` responses whose lengths are drawn uniformly
from [response_min, response_max], tiers 3, 2, 2, 1, 1, ... and every pair of different tiers. Both paths train
the same LoRA reward model (`training.optimizer_step` with the stage's loss) on the same micro-batches of
`batch_questions` questions, batched as the stage batches them (length-grouped); their steps alternate, so
other load on the machine slows both alike. Per path: the best and the median seconds per pair over the timed
rounds (each round one pass over the batches); `reward_pair_speedup` is the ratio of the bests. The two losses
on the first batch before any step say the paths compute the same thing.
"""

from __future__ import annotations

import random
import statistics
import time


def run_reward_pairs(model_name: str, accelerator, questions: int = 12, prompt_tokens: int = 115,
                     responses: int = 5, response_min: int = 40, response_max: int = 180,
                     batch_questions: int = 4, rounds: int = 3, warmup: int = 1, lora_r: int = 16,
                     seed: int = 0) -> dict:
    import torch

    from .reward import RewardConfig, collate_groups, load_scoring_backbone, reward_loss, reward_loss_shared
    from .training import add_lora, length_grouped_batches, make_optimizer, make_scheduler, optimizer_step

    cfg = RewardConfig(model=model_name, lora_r=lora_r, lora_alpha=2 * lora_r, lora_dropout=0.0, progress=False)
    model, tokenizer = load_scoring_backbone(model_name)
    model.config.use_cache = False
    model = add_lora(model, cfg, task_type="SEQ_CLS", modules_to_save=["score"])
    items = synthetic_questions(model.config.vocab_size, questions, prompt_tokens, responses, response_min,
                                response_max, seed)
    batches = [[items[i] for i in b] for b in length_grouped_batches(
        [sum(len(s) for s in it["seqs"]) for it in items], batch_questions, seed, 0)]
    pad, device = tokenizer.pad_token_id, accelerator.device
    optimizer = make_optimizer(model, cfg, 1e-5)
    scheduler = make_scheduler(optimizer, cfg, 1000)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    losses = {
        "plain": lambda m, group: reward_loss(m, collate_groups(group, pad, device=device)),
        "shared": lambda m, group: reward_loss_shared(m, group, pad, device=device),
    }
    model.eval()
    with torch.no_grad():
        first = {name: fn(model, batches[0])[0].item() for name, fn in losses.items()}
    times: dict[str, list[float]] = {"plain": [], "shared": []}
    cpu: dict[str, list[float]] = {"plain": [], "shared": []}
    for r in range(warmup + rounds):
        for name in (("plain", "shared") if r % 2 == 0 else ("shared", "plain")):
            t0, c0 = time.perf_counter(), time.process_time()
            for group in batches:
                optimizer_step(accelerator, model, optimizer, scheduler, [group], losses[name], 1.0)
            if r >= warmup:
                times[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    n_pairs = sum(len(it["pairs"]) for it in items)
    out = {"questions": questions, "pairs": n_pairs, "responses_per_question": responses,
           "prompt_tokens": prompt_tokens, "response_tokens": [response_min, response_max],
           "batch_questions": batch_questions, "loss_plain": round(first["plain"], 6),
           "loss_shared": round(first["shared"], 6), "loss_difference": abs(first["plain"] - first["shared"])}
    for name in times:
        out[f"{name}_seconds_per_pair"] = round(min(times[name]) / n_pairs, 5)
        out[f"{name}_seconds_per_pair_median"] = round(statistics.median(times[name]) / n_pairs, 5)
        out[f"{name}_cpu_seconds_per_pair"] = round(min(cpu[name]) / n_pairs, 5)
    out["speedup"] = round(out["plain_seconds_per_pair"] / out["shared_seconds_per_pair"], 3)
    out["speedup_median"] = round(out["plain_seconds_per_pair_median"] / out["shared_seconds_per_pair_median"], 3)
    out["speedup_cpu"] = round(out["plain_cpu_seconds_per_pair"] / out["shared_cpu_seconds_per_pair"], 3)
    del model, optimizer
    accelerator.free_memory()
    return out


def synthetic_questions(vocab: int, questions: int, prompt_tokens: int, responses: int, response_min: int,
                        response_max: int, seed: int) -> list[dict]:
    """Items as `reward.tokenize_groups` makes them, of random tokens (see the module docstring)."""
    rng = random.Random(seed)
    tiers_cycle = [3, 2, 2, 1, 1]
    items = []
    for q in range(questions):
        prompt = [rng.randrange(3, vocab) for _ in range(prompt_tokens)]
        seqs = [prompt + [rng.randrange(3, vocab) for _ in range(rng.randint(response_min, response_max))]
                for _ in range(responses)]
        tiers = [tiers_cycle[k % len(tiers_cycle)] for k in range(responses)]
        pairs = [(b, w) for b in range(responses) for w in range(responses) if tiers[b] > tiers[w]]
        items.append({"question_id": f"q{q}", "seqs": seqs, "tiers": tiers, "pairs": pairs})
    return items
