"""PPO's speed options are the same PPO: the sampler's log-probs and entropies are a forward pass's, a prompt
encoded once for its samples gives a plain pass's states and gradients, and a whole run with the options on
ends where the plain run ends (to float rounding)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_ppo import TARGETS, letter_reward, snapshot, toy_config, toy_prompts, toy_trainer  # noqa: E402

from selfmotivated.generation import SamplingParams, make_generator  # noqa: E402
from selfmotivated.ppo.actor_critic import build_actor_critic, lora_config  # noqa: E402
from selfmotivated.ppo.core import entropy_from_logits  # noqa: E402
from selfmotivated.ppo.experience import collate, generate_rollouts, make_experience  # noqa: E402
from selfmotivated.ppo.rewards import SharedRewardModel  # noqa: E402
from selfmotivated.tiny import build_tiny_model  # noqa: E402


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one thread beats two on shared cores


def trained_ac(seed: int = 0):
    """A LoRA actor-critic whose adapters are not zero: a policy away from the reference, with a peaked
    output distribution (LoRA on the LM head too) whose entropy varies from token to token."""
    model, tok = build_tiny_model()
    ac = build_actor_critic(model, "lora", lora_config(8, 16, 0.0, TARGETS))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in ac.named_parameters():
            if "lora_B" in name:
                p.add_((2.0 if "lm_head" in name else 0.05) * torch.randn(p.shape, generator=g))
    return ac, tok


def sample(ac, tok, n_prompts=4, n=3, tokens=10, temperature=0.7, backend="engine"):
    prompts = toy_prompts(tok, n_prompts)
    params = SamplingParams(max_new_tokens=tokens, temperature=temperature, n=n, seed=11, return_logprobs=True)
    generator = make_generator(ac.policy, tok, backend, max_seqs=16)
    return generate_rollouts(generator, prompts, [None] * n_prompts, tok, params)


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_sampler_logprobs_and_entropies_are_a_forward_pass_s(backend):
    ac, tok = trained_ac()
    ac.temperature = 0.7
    rollouts = sample(ac, tok, temperature=0.7, backend=backend)
    seq, attn, mask, P = collate(rollouts, tok.pad_token_id)
    with torch.no_grad():
        logprobs, _ = ac.policy_logprobs(seq, attn, P)  # (B, T), logits / 0.7
        entropy = entropy_from_logits(ac.policy_logits(seq, attn, P))  # (B, T)
    for b, r in enumerate(rollouts):
        n = len(r.response_ids)
        assert len(r.sampler_logprobs) == len(r.sampler_entropies) == n
        assert torch.allclose(torch.tensor(r.sampler_logprobs), logprobs[b, :n], atol=1e-4)
        assert torch.allclose(torch.tensor(r.sampler_entropies), entropy[b, :n], atol=1e-4)
    assert entropy[mask.bool()].std() > 1e-2  # entropies that vary, so agreeing means something


def test_reused_sampler_logprobs_give_the_forward_s_experience():
    ac, tok = trained_ac()
    rollouts = sample(ac, tok, temperature=1.0)
    score = letter_reward(None, [r.response for r in rollouts])
    args = dict(kl_coef=0.1, advantage="rloo", batch_size=4)
    forward, f_stats = make_experience(ac, rollouts, score, tok.pad_token_id, **args)
    reused, r_stats = make_experience(ac, rollouts, score, tok.pad_token_id, reuse_sampler_logprobs=True, **args)
    assert f_stats["rollout/sampler_logprobs_reused"] == 0 and r_stats["rollout/sampler_logprobs_reused"] == 1
    assert f_stats["rollout/logprob_diff"] < 1e-5  # what the reused log-probs stand in for
    mask = forward.response_mask.bool()
    assert forward.kl[mask].abs().max() > 1e-3  # a policy away from the reference: the KL is not trivially 0
    for name in ("old_logprobs", "kl", "rewards", "advantages"):
        assert torch.allclose(getattr(forward, name), getattr(reused, name), atol=1e-4), name
    assert r_stats["ppo/entropy"] == pytest.approx(f_stats["ppo/entropy"], abs=1e-4)
    # A rollout without sampler log-probs (another backend) falls back to the forward pass.
    rollouts[0].sampler_logprobs = None
    fallback, stats = make_experience(ac, rollouts, score, tok.pad_token_id, reuse_sampler_logprobs=True, **args)
    assert stats["rollout/sampler_logprobs_reused"] == 0
    assert torch.equal(fallback.old_logprobs, forward.old_logprobs)


@pytest.mark.parametrize("call_tokens", [16, 0], ids=["one-chunk", "chunked-by-length"])
def test_shared_prompts_give_the_plain_passes_states_and_gradients(call_tokens, monkeypatch):
    import selfmotivated.shared_prefix as shared_prefix

    # 0: every distinct response length its own response pass (each padded to its own longest row)
    monkeypatch.setattr(shared_prefix, "CHUNK_CALL_TOKENS", call_tokens)
    ac, tok = trained_ac()
    rollouts = sample(ac, tok, n_prompts=3, n=3, tokens=9, temperature=1.0)
    for b, r in enumerate(rollouts):  # responses of several lengths (as if some had ended): padding in both parts
        r.response_ids = r.response_ids[: 9 - b % 4]
    seq, attn, mask, P = collate(rollouts, tok.pad_token_id)
    assert len({tuple(r.prompt_ids) for r in rollouts}) == 3 and len({len(r.response_ids) for r in rollouts}) > 1
    m = mask.bool()
    results = {}
    for share in (False, True):
        ac.share_prompts = share
        ac.zero_grad(set_to_none=True)
        logprobs, _ = ac.policy_logprobs(seq, attn, P)
        (logprobs[m] * torch.linspace(-1, 1, int(m.sum()))).sum().backward()
        with torch.no_grad():
            results[share] = {"policy": logprobs.detach(), "reference": ac.reference_logprobs(seq, attn, P),
                              "values": ac.values(seq, attn, P),
                              "grads": {n: p.grad.clone() for n, p in ac.named_parameters() if p.grad is not None}}
    plain, shared = results[False], results[True]
    for key in ("policy", "reference", "values"):
        assert torch.allclose(plain[key][m], shared[key][m], atol=1e-5), key
    assert plain["grads"].keys() == shared["grads"].keys() and plain["grads"]
    for name, g in plain["grads"].items():  # float rounding of other matmul shapes, relative to the gradient
        assert (g - shared["grads"][name]).norm() <= 1e-5 * g.norm() + 1e-7, name
    assert any(g.abs().max() > 1e-3 for g in plain["grads"].values())


def test_length_chunks_split_rows_at_the_least_padding():
    import itertools

    from selfmotivated.shared_prefix import length_chunks

    lengths = torch.tensor([40, 3, 38, 5, 96, 4, 90, 41])
    chunks = length_chunks(lengths, call_tokens=16)
    assert sorted(torch.cat(chunks).tolist()) == list(range(8))  # a partition of the rows
    cost = sum(len(c) * int(lengths[c].max()) + 16 for c in chunks)
    # exact: no split of the sorted rows into consecutive groups computes fewer positions
    ordered = sorted(lengths.tolist())
    best = min(sum((b - a) * ordered[b - 1] + 16 for a, b in zip((0,) + cuts, cuts + (8,)))
               for k in range(8) for cuts in itertools.combinations(range(1, 8), k))
    assert cost == best < 8 * 96 + 16
    assert [sorted(lengths[c].tolist()) for c in chunks] == [[3, 4, 5], [38, 40, 41], [90, 96]]
    assert [c.tolist() for c in length_chunks(torch.tensor([5, 6, 5]), call_tokens=16)] == [[0, 1, 2]]
    # the reward model's "positions" statistic counts what the grouped passes computed
    from selfmotivated.shared_prefix import suffix_positions

    mask = (torch.arange(40)[None] < torch.tensor([[2], [3], [40], [38]])).long()
    assert suffix_positions(mask) == 2 * 3 + 2 * 40 < mask.numel()


def test_shared_reward_model_scores_alike_with_and_without_prompt_sharing():
    ac, tok = trained_ac()
    lora = lora_config(4, 8, 0.0, "all-linear")
    g = torch.Generator().manual_seed(3)
    rm = SharedRewardModel(ac, tok, lora, {"weight": torch.randn(1, 64, generator=g), "bias": torch.zeros(1)},
                           batch_size=4)
    with torch.no_grad():
        for name, p in ac.policy.named_parameters():
            if ".reward." in name and "lora_B" in name:
                p.normal_(0, 0.2, generator=g)
    prompts = [p for p in toy_prompts(tok, 3) for _ in range(3)] + toy_prompts(tok, 5)[4:]  # 3 x 3, then 1
    responses = ["The answer is yes.", "no", "Let me think", "a", "b c", "yes yes", "It is 4.", "four", "", "x"]
    finished = [True, False, True, True, False, True, False, True, True, False]
    ac.share_prompts = False
    plain = rm(prompts, responses, finished=finished)
    ac.share_prompts = True
    shared = rm(prompts, responses, finished=finished)
    assert plain.std() > 1e-2
    assert torch.allclose(plain, shared, atol=1e-5)
    assert ac.policy.active_adapter == "policy"


def test_a_run_with_the_speed_options_ends_where_the_plain_run_ends():
    settings = dict(advantage="rloo", samples_per_prompt=4, prompts_per_iteration=4, iterations=3, ppo_epochs=2,
                    mini_batch_size=8, micro_batch_size=4, kl_coef=0.05)
    runs = {}
    for fast in (False, True):
        trainer = toy_trainer(toy_config(reuse_sampler_logprobs=fast, share_prompts=fast, pack_weights=fast,
                                         **settings))
        before = snapshot(trainer.ac)
        trainer.train()
        runs[fast] = (trainer, before, snapshot(trainer.ac))
    (plain, before, after_plain), (fast, _, after_fast) = runs[False], runs[True]
    moved = [n for n in before if not torch.equal(before[n], after_plain[n])]
    assert moved  # the runs trained, so ending alike means something
    for n in moved:
        assert torch.allclose(after_plain[n], after_fast[n], atol=1e-4), n
    rows = {k: [r for r in t.history if "ppo/score_mean" in r] for k, (t, _, _) in runs.items()}
    assert [r["ppo/score_mean"] for r in rows[False]] == pytest.approx([r["ppo/score_mean"] for r in rows[True]],
                                                                      abs=1e-5)
    assert all(r["rollout/sampler_logprobs_reused"] == 1 and r["rollout/logprob_diff"] < 1e-5 for r in rows[True])
    assert all(r["ppo/entropy"] > 0 for r in rows[True])
    # packed weights (CPU, oneDNN) are for the no-grad passes only: every forward is the module's own after it
    assert not [m for m in fast.ac.modules() if "forward" in m.__dict__]


def test_micro_batch_order_is_a_permutation_that_groups_questions():
    from selfmotivated.ppo.trainer import _micro_batch_order

    index = torch.tensor([5, 0, 3, 1, 4, 2])
    prompt_of = torch.tensor([0, 1, 0, 1, 2, 2])
    lengths = torch.tensor([3, 9, 4, 2, 1, 1])
    order = _micro_batch_order(index, prompt_of, lengths).tolist()
    assert sorted(order) == sorted(index.tolist())
    assert [prompt_of[b].item() for b in order] == [2, 2, 0, 0, 1, 1]  # by each question's longest response


def test_speed_options_count_in_no_stage_fingerprint(tmp_path):
    from selfmotivated.pipeline import stage_settings
    from selfmotivated.ppo.config import PPOConfig
    from selfmotivated.reward import RewardConfig

    assert stage_settings([("ppo", PPOConfig())], tmp_path) == stage_settings(
        [("ppo", PPOConfig(reuse_sampler_logprobs=False, share_prompts=False, pack_weights=False))], tmp_path)
    assert stage_settings([("reward", RewardConfig())], tmp_path) == stage_settings(
        [("reward", RewardConfig(share_prompt=False))], tmp_path)
    assert stage_settings([("ppo", PPOConfig())], tmp_path) != stage_settings([("ppo", PPOConfig(top_p=0.9))],
                                                                              tmp_path)


def test_bench_ppo_times_the_plain_path_side_by_side():
    from selfmotivated.ppo.bench import BenchPPOConfig, format_bench_ppo, run_bench_ppo

    r = run_bench_ppo(BenchPPOConfig(model="tiny-random", iterations=1, warmup=1, prompts_per_iteration=2,
                                     max_new_tokens=8, mini_batch_size=4, micro_batch_size=2, memory=False,
                                     minibatch_by_question=True, temperature=0.8))
    # the settings reach both trainers alike; the paths differ in the speed options only
    assert r["same_settings"] and r["ppo_settings"]["minibatch_by_question"] is True
    assert r["ppo_settings"]["temperature"] == 0.8
    # the reused sampler log-probs are the forward's at that temperature, on both paths
    assert max(r["sampler_logprob_diff"].values()) < 1e-3
    assert r["rollouts_per_second"] > 0 and r["baseline_rollouts_per_second"] > 0
    assert r["speedup"] == pytest.approx(r["rollouts_per_second"] / r["baseline_rollouts_per_second"], rel=0.01)
    # same weights and seeds: the first iterations sample the same tokens (packed matmuls may round a near-tie
    # the other way, which makes a row differ)
    assert r["first_rollouts_identical"] >= 0.5
    assert set(r["phase_seconds"]) == set(r["baseline_phase_seconds"]) and r["baseline"]
    assert "ppo_peak_mb" not in r and "against the plain path" in format_bench_ppo(r)
    # on a CPU in float32 every speed option is on by default; on a GPU prompt sharing and packing are off
    on_cpu = not torch.cuda.is_available()
    assert r["speed_options"] == {"reuse_sampler_logprobs": True, "share_prompts": on_cpu, "pack_weights": on_cpu}


def test_prompt_sharing_defaults_to_the_cpu_only():
    from selfmotivated.ppo.config import PPOConfig, shares_prompts

    assert shares_prompts(PPOConfig(), "cpu") and not shares_prompts(PPOConfig(), "cuda")
    assert shares_prompts(PPOConfig(share_prompts=True), "cuda")
    assert not shares_prompts(PPOConfig(share_prompts=False), "cpu")
    trainer = toy_trainer(toy_config(iterations=1))
    assert trainer.share_prompts and trainer.ac.share_prompts


def test_a_run_resumes_under_other_speed_options(tmp_path):
    from dataclasses import asdict

    from selfmotivated.ppo.config import PPOConfig
    from selfmotivated.training import check_resume_config, write_json

    write_json(tmp_path / "config.json", asdict(PPOConfig(share_prompts=True)))
    check_resume_config(tmp_path, asdict(PPOConfig(share_prompts=None, pack_weights=False,
                                                   reuse_sampler_logprobs=False)))
    with pytest.raises(ValueError, match="top_p"):
        check_resume_config(tmp_path, asdict(PPOConfig(top_p=0.9)))
