"""PPO against a reward (stage 4): the proof that it learns, and the machinery around it.

Toy task: the reward is the share of lowercase ASCII letters in the response, a known function that a
random tiny model scores ~0.1 on. The tiny model's LM head is tied to its embeddings and follows a
frozen RMSNorm, so LoRA on the attention/MLP layers alone can barely move its (nearly uniform)
output distribution; the toy runs therefore also put LoRA on `lm_head` (still an adapter on frozen
SFT weights, which is what the LoRA path is about).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from selfmotivated.ppo.actor_critic import POLICY, build_actor_critic, lora_config
from selfmotivated.ppo.experience import collate, generate_rollouts, make_experience
from selfmotivated.ppo.guard import FailureGuard, GuardTripped
from selfmotivated.ppo.rewards import SharedRewardModel, check_rollouts, sequence_scores
from selfmotivated.ppo.trainer import PPOConfig, PPOTrainer
from selfmotivated.tiny import build_tiny_model

TARGETS = "q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj,lm_head"
LETTERS = set("abcdefghijklmnopqrstuvwxyz")


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny matmuls: one thread beats two on shared cores


def letter_reward(prompts, responses):
    """Known reward: share of the response's characters that are lowercase ASCII letters. (B,)"""
    return torch.tensor([sum(c in LETTERS for c in r) / max(len(r), 1) for r in responses])


def toy_prompts(tokenizer, n=16):
    return [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": f"question {i}" + " word" * (i % 4)}],
            tokenize=False,
            add_generation_prompt=True,
        )
        for i in range(n)
    ]


def toy_config(**overrides) -> PPOConfig:
    settings = dict(
        iterations=16,
        prompts_per_iteration=8,
        samples_per_prompt=2,
        max_new_tokens=8,
        learning_rate=1e-2,
        critic_learning_rate=1e-2,
        kl_coef=0.0,
        truncation_penalty=0.0,  # 8-token toy responses are all cut off
        advantage="gae",  # the textbook path; the group baseline has tests of its own below
        critic_warmup_iterations=0,
        target_kl=0.0,
        mini_batch_size=8,
        micro_batch_size=8,
        ppo_epochs=2,
        lora_r=8,
        lora_alpha=16,
        lora_target_modules=TARGETS,
        eval_steps=0,
        guard_max_kl=0,
        guard_min_entropy=0,
        guard_accuracy_drop=0,
        tensorboard=False,
        progress=False,
        # At learning rate 1e-2 this toy's runs are chaotic after ~8 iterations (KL past 6 nats): float rounding
        # picks the branch, so these tests run torch's own matmuls; the packed path is pinned against this one
        # in test_ppo_speed.py (whole runs end alike) and test_generation.py.
        pack_weights=False,
    )
    settings.update(overrides)
    return PPOConfig(**settings)


def toy_trainer(config: PPOConfig, out=None, eval_fn=None, reward_fn=letter_reward):
    model, tokenizer = build_tiny_model()
    lora = lora_config(config.lora_r, config.lora_alpha, config.lora_dropout, config.lora_target_modules)
    ac = build_actor_critic(model, config.method, lora)
    return PPOTrainer(config, ac, tokenizer, reward_fn, toy_prompts(tokenizer), eval_fn=eval_fn, out=out)


def scores(trainer) -> list[float]:
    return [r["ppo/score_mean"] for r in trainer.history if "ppo/score_mean" in r]


def snapshot(module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in module.named_parameters()}


# ----------------------------------------------------------------------------------------------------
# The proof that it learns


@pytest.fixture(scope="module")
def learned():
    """One LoRA run of the toy task (shared by the tests below), with the weights before and after."""
    torch.set_num_threads(1)
    trainer = toy_trainer(toy_config())
    before = snapshot(trainer.ac)
    trainer.train()
    return trainer, before, snapshot(trainer.ac)


def test_ppo_raises_the_toy_reward_clearly(learned):
    trainer, _, _ = learned
    s = scores(trainer)
    assert len(s) == 16
    assert s[0] < 0.15  # a random model writes few lowercase letters
    assert sum(s[-3:]) / 3 > 0.6, s
    assert sum(s[-3:]) / 3 > s[0] + 0.45, s


def test_same_run_with_learning_rate_zero_does_not_learn():
    trainer = toy_trainer(toy_config(learning_rate=0.0, critic_learning_rate=0.0, iterations=10))
    before = {k: v.clone() for k, v in trainer.ac.trainable_state().items()}
    trainer.train()
    s = scores(trainer)
    assert max(s) < 0.25 and sum(s[-3:]) / 3 < s[0] + 0.1, s
    assert all(torch.equal(before[k], v) for k, v in trainer.ac.trainable_state().items())
    # With lr 0 the policy stays the reference: no KL at any step.
    assert all(abs(r["ppo/kl"]) < 1e-5 for r in trainer.history)


def test_lora_changes_adapters_and_value_head_but_not_the_backbone(learned):
    trainer, before, after = learned
    lora_or_head = [n for n in before if "lora_" in n or n.startswith("value_head.")]
    backbone = [n for n in before if n not in lora_or_head]
    assert backbone and all(torch.equal(before[n], after[n]) for n in backbone)
    policy = [n for n in lora_or_head if f".{POLICY}." in n]
    critic = [n for n in lora_or_head if ".critic." in n]
    assert policy and critic
    # LoRA's B starts at 0 (policy == SFT model): every policy B matrix must have moved.
    assert all(not torch.equal(before[n], after[n]) for n in policy if "lora_B" in n)
    assert any(not torch.equal(before[n], after[n]) for n in critic)
    assert not torch.equal(before["value_head.linear.weight"], after["value_head.linear.weight"])
    assert set(trainer.ac.trainable_state()) == set(
        policy + critic + ["value_head.linear.weight", "value_head.linear.bias"]
    )


def exact_kl(trainer) -> float:
    """KL(policy || reference) per response, summed over the vocabulary (no sampling noise in the estimate),
    on fresh rollouts of the trained policy."""
    prompts, examples = trainer.prompt_batch(0)
    rollouts = generate_rollouts(
        trainer.generator, prompts, examples, trainer.tokenizer, trainer.sampling_params(0, seed=123)
    )
    seq, attn, mask, P = collate(rollouts, trainer.pad_id)
    with torch.no_grad():
        logp = trainer.ac.policy_logits(seq, attn, P).log_softmax(-1)  # (B, T, V)
        logq = trainer.ac.reference_logits(seq, attn, P).log_softmax(-1)
    per_token = (logp.exp() * (logp - logq)).sum(-1)  # (B, T)
    return float((per_token * mask).sum(-1).mean())


def test_kl_penalty_keeps_the_policy_near_the_reference():
    kl, gain = {}, {}
    # beta 0.1 and 1.0 both hold this toy policy within ~1 nat, and their order then turns on float rounding
    # (it differs between seeds); 0.03 sits clearly between "free" and "held".
    for beta in (0.0, 0.03, 1.0):
        trainer = toy_trainer(toy_config(kl_coef=beta, iterations=10))
        trainer.train()
        kl[beta] = exact_kl(trainer)
        s = scores(trainer)
        gain[beta] = sum(s[-3:]) / 3 - s[0]
    assert kl[0.0] > kl[0.03] > kl[1.0], kl  # the larger beta, the closer to the reference
    assert kl[0.0] > 4.0 and kl[1.0] < 0.1 * kl[0.0], kl
    assert kl[1.0] < 1.0, kl  # nats per 8-token response: with beta high the policy barely moves
    assert gain[0.0] > gain[1.0] + 0.15 and abs(gain[1.0]) < 0.1, gain


def test_adaptive_kl_coefficient_follows_the_measured_kl():
    trainer = toy_trainer(
        toy_config(kl_coef=0.05, adaptive_kl=True, kl_target=0.01, kl_horizon=64, iterations=4)
    )
    trainer.train()
    coefs = [r["ppo/kl_coef"] for r in trainer.history]
    kls = [r["ppo/kl"] for r in trainer.history]
    assert coefs[0] == pytest.approx(0.05)
    for i in range(1, len(coefs)):  # beta grows after an iteration above target, shrinks below it
        expected = coefs[i - 1] * (1 + max(min((kls[i - 1] - 0.01) / 0.01, 0.2), -0.2) * 16 / 64)
        assert coefs[i] == pytest.approx(expected, rel=1e-4)
    assert coefs[-1] != coefs[0]


def test_full_finetuning_learns_and_keeps_the_reference_frozen():
    trainer = toy_trainer(
        toy_config(method="full", learning_rate=5e-3, critic_learning_rate=1e-3, iterations=14)
    )
    ref_before = snapshot(trainer.ac.reference)
    policy_before = snapshot(trainer.ac.policy)
    trainer.train()
    s = scores(trainer)
    assert sum(s[-3:]) / 3 > s[0] + 0.3, s
    assert all(
        torch.equal(v, dict(trainer.ac.reference.named_parameters())[k]) for k, v in ref_before.items()
    )
    changed = [k for k, v in trainer.ac.policy.named_parameters() if not torch.equal(v, policy_before[k])]
    assert len(changed) == len(policy_before)


# ----------------------------------------------------------------------------------------------------
# PPO that optimises: several minibatches move the ratio, target_kl stops them, the group baseline


def update_rows(trainer) -> list[dict]:
    return [r for r in trainer.history if "ppo/minibatches" in r]


def test_several_minibatches_move_the_ratio_off_one():
    # 16 rollouts in minibatches of 4, 2 epochs: 8 steps an iteration. From the second step on, the policy
    # is no longer the one that sampled, so the ratio leaves 1 (approx_kl > 0) and the clip acts.
    trainer = toy_trainer(toy_config(iterations=3, mini_batch_size=4, micro_batch_size=4, learning_rate=3e-2))
    trainer.train()
    rows = update_rows(trainer)
    assert all(r["ppo/minibatches"] == 8 and r["ppo/epochs"] == 2 for r in rows)
    assert all(r["ppo/approx_kl"] > 0 for r in rows), rows
    assert all(r["ppo/clipfrac"] > 0 for r in rows), [r["ppo/clipfrac"] for r in rows]
    # One minibatch per iteration (the old presets): the ratio is exactly 1, nothing is ever clipped.
    single = toy_trainer(toy_config(iterations=2, ppo_epochs=1, mini_batch_size=16, micro_batch_size=8))
    single.train()
    assert all(r["ppo/clipfrac"] == 0 and abs(r["ppo/approx_kl"]) < 1e-6 for r in update_rows(single))


def test_minibatches_by_question_hold_whole_questions(monkeypatch):
    """minibatch_by_question: each minibatch holds whole questions (4 samples each, 2 questions a minibatch
    of 8), in an order that changes with the epoch; off, samples of a question are scattered."""
    from selfmotivated.ppo.trainer import PPOTrainer

    seen = []
    step = PPOTrainer.minibatch_step

    def spy(self, exp, index, *args, **kwargs):
        seen.append(self._prompt_ids(exp)[index].tolist())
        return step(self, exp, index, *args, **kwargs)

    monkeypatch.setattr(PPOTrainer, "minibatch_step", spy)
    settings = dict(iterations=2, advantage="rloo", samples_per_prompt=4, prompts_per_iteration=4,
                    mini_batch_size=8, micro_batch_size=4)
    toy_trainer(toy_config(minibatch_by_question=True, **settings)).train()
    assert len(seen) == 8 and all(len(set(q)) == 2 and all(q.count(x) == 4 for x in q) for q in seen), seen
    assert len({tuple(dict.fromkeys(q)) for q in seen}) > 1  # the questions' order is shuffled
    seen.clear()
    toy_trainer(toy_config(**settings)).train()
    assert any(len(set(q)) > 2 for q in seen)


def test_target_kl_stops_the_epochs_early_only_when_exceeded():
    settings = dict(iterations=2, mini_batch_size=4, micro_batch_size=4, ppo_epochs=3, learning_rate=3e-2)
    loose = toy_trainer(toy_config(target_kl=100.0, **settings))
    loose.train()
    assert all(r["ppo/minibatches"] == 12 and r["ppo/early_stop"] == 0 for r in update_rows(loose))
    tight = toy_trainer(toy_config(target_kl=1e-9, **settings))
    tight.train()
    # The first minibatch has ratio 1 (KL 0); the second is the first that can pass the target.
    assert all(r["ppo/minibatches"] == 2 and r["ppo/early_stop"] == 1 for r in update_rows(tight))


def test_group_baseline_learns_without_a_critic():
    config = toy_config(advantage="rloo", samples_per_prompt=4, prompts_per_iteration=4, iterations=14)
    trainer = toy_trainer(config)
    before = snapshot(trainer.ac)
    trainer.train()
    s = scores(trainer)
    assert sum(s[-3:]) / 3 > s[0] + 0.4, s
    after = snapshot(trainer.ac)
    critic = [n for n in before if ".critic." in n or n.startswith("value_head.")]
    assert critic and all(torch.equal(before[n], after[n]) for n in critic)  # no critic trained, none run
    assert all("losses/value" not in r and "ppo/explained_variance" not in r for r in update_rows(trainer))


def test_group_baseline_gives_zero_advantage_when_a_question_s_samples_score_alike():
    trainer = toy_trainer(toy_config(advantage="rloo", samples_per_prompt=3, max_new_tokens=5))
    prompts, examples = trainer.prompt_batch(0)
    rollouts = generate_rollouts(
        trainer.generator, prompts, examples, trainer.tokenizer, trainer.sampling_params(0, seed=5)
    )
    per_question = torch.tensor([float(r.group) for r in rollouts]) * 0.37  # equal within a question
    exp, _ = make_experience(trainer.ac, rollouts, per_question, trainer.pad_id, kl_coef=0.0, advantage="rloo")
    assert exp.advantages.abs().max() < 1e-6
    scores_ = per_question.clone()
    scores_[0] += 1.0  # one sample better than its question's others: only that question moves
    exp, _ = make_experience(trainer.ac, rollouts, scores_, trainer.pad_id, kl_coef=0.0, advantage="rloo",
                             whiten=None)
    row_adv = exp.advantages.sum(-1) / exp.response_mask.sum(-1)
    same = [i for i, r in enumerate(rollouts) if r.group == rollouts[0].group]
    assert row_adv[0] == pytest.approx(1.0) and all(row_adv[i] == pytest.approx(-0.5) for i in same[1:])
    assert all(abs(row_adv[i]) < 1e-6 for i in range(len(rollouts)) if i not in same)


def test_critic_warmup_trains_only_the_critic_first():
    trainer = toy_trainer(toy_config(advantage="gae", critic_warmup_iterations=2, iterations=2))
    before = snapshot(trainer.ac)
    trainer.train()
    after = snapshot(trainer.ac)
    policy = [n for n in before if f".{POLICY}." in n]
    critic = [n for n in before if ".critic." in n or n.startswith("value_head.")]
    assert all(torch.equal(before[n], after[n]) for n in policy)
    assert any(not torch.equal(before[n], after[n]) for n in critic)
    rows = update_rows(trainer)
    assert [r["ppo/critic_warmup"] for r in rows] == [1.0, 1.0]
    assert all("ppo/explained_variance" in r and "losses/policy" not in r for r in rows)
    # From iteration 3 on the actor trains.
    trainer.config.iterations = 3
    trainer.train()
    assert update_rows(trainer)[-1]["ppo/critic_warmup"] == 0.0 and "losses/policy" in update_rows(trainer)[-1]
    assert any(not torch.equal(after[n], v) for n, v in snapshot(trainer.ac).items() if n in policy)


def test_logprobs_are_those_of_the_sampling_temperature():
    config = toy_config(temperature=0.6, max_new_tokens=6)
    trainer = toy_trainer(config)
    assert trainer.ac.temperature == 0.6  # the trainer itself, however it was built (`sml bench ppo` builds its own)
    prompts, examples = trainer.prompt_batch(0)
    rollouts = generate_rollouts(
        trainer.generator, prompts, examples, trainer.tokenizer, trainer.sampling_params(0, seed=3)
    )
    _, stats = make_experience(trainer.ac, rollouts, torch.zeros(len(rollouts)), trainer.pad_id, kl_coef=0.0)
    assert stats["rollout/logprob_diff"] < 1e-4  # the engine's tempered log-probs = the forward's
    trainer.ac.temperature = 1.0
    _, stats = make_experience(trainer.ac, rollouts, torch.zeros(len(rollouts)), trainer.pad_id, kl_coef=0.0)
    assert stats["rollout/logprob_diff"] > 1e-2  # at temperature 1 they would be another distribution's


def test_reward_validity_gate(tmp_path):
    from selfmotivated.ppo.trainer import RewardModelInvalid, check_reward_validity

    model = tmp_path / "reward" / "model"
    model.mkdir(parents=True)
    assert check_reward_validity(model, 0.6) is None  # no report: a warning, not a refusal
    (tmp_path / "reward" / "validity.json").write_text(json.dumps({"auroc": 0.52, "n": 200}))
    with pytest.raises(RewardModelInvalid, match=r"AUROC .* 200 fresh samples .* 0\.520, below min_reward_auroc=0\.6"):
        check_reward_validity(model, 0.6)
    assert check_reward_validity(model, 0.0) is None  # 0: the gate is off
    assert check_reward_validity(model, 0.5)["auroc"] == 0.52
    # A per-question baseline (rloo) learns only from the order of a question's own samples: a score that
    # tells easy questions from hard ones (overall AUROC 0.68) but not a question's right samples from its
    # wrong ones (0.49) is refused.
    report = {"auroc": 0.68, "n": 400, "within_question_auroc": 0.49, "n_questions_with_both": 39}
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(report))
    assert check_reward_validity(model, 0.55)["auroc"] == 0.68
    with pytest.raises(RewardModelInvalid, match=r"each question's own samples .* 39 held-out .* 0\.490, below"):
        check_reward_validity(model, 0.55, within_question=True)
    # Too few questions with both kinds of sample for the within-question figure: the overall AUROC decides.
    (tmp_path / "reward" / "validity.json").write_text(json.dumps({**report, "n_questions_with_both": 4}))
    assert check_reward_validity(model, 0.55, within_question=True)["auroc"] == 0.68
    # A yes/no reward model that prefers "no" whatever the question (coin_flip's: 0.67 within a question, 0.91
    # on the "no" questions, 0.43 on the "yes" ones) is refused on its weaker side; a side with too few
    # questions does not count.
    habit = {"auroc": 0.69, "n": 400, "within_question_auroc": 0.67, "n_questions_with_both": 85,
             "within_question_auroc_by_gold": {"no": {"auroc": 0.91, "n_questions": 43},
                                               "yes": {"auroc": 0.43, "n_questions": 42}}}
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(habit))
    with pytest.raises(RewardModelInvalid, match=r"gold is yes .* is 0\.430 .* 0\.670\): it prefers some answers"):
        check_reward_validity(model, 0.55, within_question=True)
    habit["within_question_auroc_by_gold"]["yes"]["n_questions"] = 9
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(habit))
    assert check_reward_validity(model, 0.55, within_question=True)["within_question_auroc"] == 0.67
    # chain_sum's policy-pairs reward model: 0.68 within a question on the SFT model's samples (which never state a
    # negative number), but every right held-out sample scored below its copy with the answer negated.
    sign = {**report, "within_question_auroc": 0.68,
            "answer_edit_probe": {"negated": {"original_above": 0.0, "n": 109},
                                  "other": {"original_above": 0.477, "n": 109}}}
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(sign))
    with pytest.raises(RewardModelInvalid, match=r"does not check answers: .* answer negated in 0\.000 of 109"):
        check_reward_validity(model, 0.55, within_question=True)
    sign["answer_edit_probe"]["negated"] = {"original_above": 0.95, "n": 109}
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(sign))
    with pytest.raises(RewardModelInvalid, match=r"changed to another wrong number in 0\.477 of 109"):
        check_reward_validity(model, 0.55, within_question=True)
    sign["answer_edit_probe"]["other"] = {"original_above": 0.2, "n": 9}  # too few edits to read
    (tmp_path / "reward" / "validity.json").write_text(json.dumps(sign))
    assert check_reward_validity(model, 0.55, within_question=True)["within_question_auroc"] == 0.68
    assert check_reward_validity(model, 0.0) is None


# ----------------------------------------------------------------------------------------------------
# Experience: alignment, padding, KL at the start


def test_experience_recomputes_sampler_logprobs_and_starts_at_the_reference():
    config = toy_config(max_new_tokens=6)
    trainer = toy_trainer(config)
    prompts, examples = trainer.prompt_batch(0)
    rollouts = generate_rollouts(
        trainer.generator, prompts, examples, trainer.tokenizer, trainer.sampling_params(0, seed=3)
    )
    assert len(rollouts) == len(prompts) * config.samples_per_prompt
    score = letter_reward(None, [r.response for r in rollouts]) + 1.0
    exp, stats = make_experience(trainer.ac, rollouts, score, trainer.pad_id, kl_coef=0.1, batch_size=3)
    # A shifted or misaligned slice would give log-probs of other tokens: far from the sampler's.
    assert stats["rollout/logprob_diff"] < 1e-4
    # Fresh LoRA (B = 0): the policy is exactly the reference, so the KL and its penalty are 0 ...
    assert torch.allclose(exp.old_logprobs, exp.ref_logprobs, atol=1e-5)
    assert exp.kl.abs().max() < 1e-5
    # ... and each row's rewards sum to its score, placed on its last response token.
    assert torch.allclose(exp.rewards.sum(-1), score, atol=1e-4)
    last = exp.response_mask.sum(-1) - 1
    assert torch.allclose(exp.rewards[torch.arange(len(exp)), last], score, atol=1e-4)
    assert torch.all(exp.returns[exp.response_mask == 0] == 0)


def test_padding_and_minibatch_trimming_do_not_change_logprobs():
    trainer = toy_trainer(toy_config(max_new_tokens=5))
    ac, tok = trainer.ac, trainer.tokenizer
    prompts = toy_prompts(tok, 4)  # different lengths: left padding differs per row
    rollouts = generate_rollouts(
        trainer.generator, prompts, [None] * 4, tok, trainer.sampling_params(0, seed=7, n=1)
    )
    with torch.no_grad():
        seq, attn, mask, P = collate(rollouts, trainer.pad_id)
        batched, _ = ac.policy_logprobs(seq, attn, P)  # (4, T)
        for b, r in enumerate(rollouts):
            s1, a1, m1, p1 = collate([r], trainer.pad_id)
            alone, _ = ac.policy_logprobs(s1, a1, p1)
            n = len(r.response_ids)
            assert torch.allclose(batched[b, :n], alone[0, :n], atol=1e-5)
        exp, _ = make_experience(ac, rollouts, torch.zeros(4), trainer.pad_id, kl_coef=0.0)
        sub = exp.select([1, 3])
        assert sub.sequences.shape[1] <= exp.sequences.shape[1]
        trimmed, _ = ac.policy_logprobs(sub.sequences, sub.attention_mask, sub.prompt_width)
        for i, b in enumerate([1, 3]):
            n = int(exp.response_mask[b].sum())
            assert torch.allclose(trimmed[i, :n], exp.old_logprobs[b, :n], atol=1e-5)


def test_sequence_scores_combine_reward_model_checker_and_penalties():
    from selfmotivated.records import Example

    ex = Example(id="q1", question="Is the coin still heads up?", gold="yes", answer_type="yes_no")
    texts = ["It was flipped twice. The answer is yes.", "The answer is no.", "I am not sure what happens"]
    correct, no_answer = check_rollouts(texts, [ex, ex, ex])
    assert correct.tolist() == [1.0, 0.0, 0.0] and no_answer.tolist() == [0.0, 0.0, 1.0]
    rm = torch.tensor([0.5, 2.0, -1.0])
    truncated = torch.tensor([0.0, 0.0, 1.0])

    def score(**kw):
        config = PPOConfig(**{"truncation_penalty": 0.0, **kw})
        return sequence_scores(config, rm, correct, no_answer, truncated).tolist()

    assert score(reward="rm") == [0.5, 2.0, -1.0]
    assert score(reward="checker") == [1.0, 0.0, 0.0]
    assert score(reward="checker", checker_reward=2.0) == [2.0, 0.0, 0.0]
    assert score(reward="rm+checker") == [1.5, 2.0, -1.0]
    assert score(reward="checker", truncation_penalty=1.0) == [1.0, 0.0, -1.0]
    assert score(reward="rm", correct_bonus=1.0, no_answer_penalty=0.5) == [1.5, 2.0, -1.5]
    with pytest.raises(ValueError, match="needs the reward model"):
        sequence_scores(PPOConfig(reward="rm"), None, correct, no_answer, truncated)


# ----------------------------------------------------------------------------------------------------
# The failure guard


def test_guard_signals():
    g = FailureGuard(max_kl=5.0, min_entropy=0.1, patience=2)
    assert g.observe(1, {"ppo/score_mean": 0.1, "ppo/kl": float("nan")}).signal == "nan"
    assert g.observe(2, {"ppo/kl": 6.0, "ppo/entropy": 1.0}) is None  # one strike: not yet
    assert g.observe(3, {"ppo/kl": 7.0, "ppo/entropy": 1.0}).signal == "kl"
    g = FailureGuard(max_kl=5.0, min_entropy=0.1, patience=2)
    g.observe(1, {"ppo/kl": 6.0, "ppo/entropy": 0.05})
    assert g.observe(2, {"ppo/kl": 1.0, "ppo/entropy": 0.05}).signal == "entropy"  # kl streak broken
    g = FailureGuard(min_response_length=2.0)
    assert g.observe(1, {"rollout/response_length": 1.2}).signal == "length"


def test_guard_reward_hacking_needs_accuracy_down_and_reward_up():
    g = FailureGuard(accuracy_drop=0.05)
    assert g.observe_accuracy(0, 0.50) == (None, True)
    g.observe(1, {"ppo/score_mean": 0.2})  # rollouts of the step-0 policy: the reward that goes with 0.50
    g.observe(2, {"ppo/score_mean": 0.3})
    assert g.observe_accuracy(2, 0.48) == (None, True)  # within the tolerance
    g.observe(3, {"ppo/score_mean": 0.1})
    alarm, good = g.observe_accuracy(3, 0.30)  # accuracy fell, but so did the reward: not hacking
    assert alarm is None and not good
    g.observe(4, {"ppo/score_mean": 0.9})
    alarm, good = g.observe_accuracy(4, 0.30)
    assert alarm.signal == "reward_hacking" and not good
    assert "0.300" in alarm.message and "0.500" in alarm.message


def test_guard_stop_keeps_the_last_good_checkpoint_as_the_model(tmp_path):
    config = toy_config(guard_max_kl=1.0, guard_patience=1, save_steps=100)
    trainer = toy_trainer(config, out=tmp_path)
    with pytest.raises(GuardTripped, match=r"\[kl\].*KL to the reference") as info:
        trainer.train()
    assert info.value.signal == "kl" and info.value.last_good == 0
    # The saved model is the last good one (step 0: the SFT model itself).
    from selfmotivated.models import load_model

    saved, _ = load_model(str(tmp_path / "policy"), device="cpu")
    reference, tok = build_tiny_model()
    ids = torch.tensor([tok("hello there", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(saved(ids).logits, reference(ids).logits, atol=1e-5)
    assert (tmp_path / "checkpoints" / "step-0000000").is_dir()
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "stopped"
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert "stopped: [kl]" in rows[-1]["note"]


def test_reward_hacking_rolls_back_to_the_last_good_checkpoint_then_stops(tmp_path):
    from safetensors.torch import load_file

    accuracy = {0: 0.5, 3: 0.5, 6: 0.1, 9: 0.1}  # test accuracy falls while the toy reward climbs
    config = toy_config(
        iterations=12,
        eval_steps=3,
        guard_accuracy_drop=0.05,
        guard_action="rollback",
        max_rollbacks=1,
        save_steps=100,
    )
    trainer = toy_trainer(config, out=tmp_path, eval_fn=lambda model, tok, step: accuracy[step])
    with pytest.raises(GuardTripped, match="reward_hacking") as info:
        trainer.train()
    assert info.value.step == 9 and info.value.last_good == 3
    rollback = [r for r in trainer.history if r.get("guard/rollback")]
    assert len(rollback) == 1 and rollback[0]["step"] == 6 and rollback[0]["guard/rolled_back_to"] == 3
    good = load_file(str(tmp_path / "checkpoints" / "step-0000003" / "trainable.safetensors"))
    now = trainer.ac.trainable_state()
    assert all(torch.equal(good[k], v.detach()) for k, v in now.items())  # stopped on the step-3 weights


# ----------------------------------------------------------------------------------------------------
# Checkpoints, resume, the stage end to end


def test_resume_continues_exactly_where_it_stopped(tmp_path):
    config = toy_config(iterations=4, save_steps=2)
    straight = toy_trainer(config, out=tmp_path / "a")
    straight.train()

    first = toy_trainer(toy_config(iterations=4, save_steps=2, stop_after_steps=2), out=tmp_path / "b")
    assert first.train()["status"] == "interrupted"
    second = toy_trainer(config, out=tmp_path / "b")
    assert second.resume() and second.state.step == 2
    second.train()
    a, b = straight.ac.trainable_state(), second.ac.trainable_state()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    steps = [json.loads(line)["step"] for line in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]


@pytest.fixture(scope="module")
def tiny_run_folders(tmp_path_factory):
    """An SFT model folder (tiny-random) and a LoRA reward model on it, as `sml reward` saves them."""
    from selfmotivated.reward import load_scoring_backbone
    from selfmotivated.tiny import save_tiny_random
    from selfmotivated.training import add_lora

    root = tmp_path_factory.mktemp("ppo-run")
    sft = save_tiny_random(root / "sft")
    model, _ = load_scoring_backbone(str(sft))

    class LoraSettings:
        lora_target_modules, lora_r, lora_alpha, lora_dropout = "all-linear", 4, 8, 0.0

    reward = add_lora(model, LoraSettings, "SEQ_CLS", modules_to_save=["score"])
    torch.manual_seed(1)
    with torch.no_grad():  # a reward model that is not the identity: random adapter and head
        for name, p in reward.named_parameters():
            if "lora_B" in name or "score" in name:
                p.normal_(0, 0.2)
    reward.save_pretrained(root / "reward")
    (root / "reward" / "reward_model.json").write_text(json.dumps({"backbone": str(sft)}))
    return sft, root / "reward"


def test_shared_reward_model_scores_like_the_reward_module(tiny_run_folders):
    from selfmotivated.models import load_model
    from selfmotivated.reward import load_reward_model, score_texts

    sft, reward_dir = tiny_run_folders
    model, tok = load_model(str(sft), device="cpu")
    ac = build_actor_critic(model, "lora", lora_config(4, 8, 0.0, "all-linear"), critic_from=str(reward_dir))
    shared = SharedRewardModel.from_folder(ac, tok, reward_dir, batch_size=2)
    prompts = toy_prompts(tok, 3)
    responses = ["The answer is yes.", "no", "Let me think step by step about it"]
    rm, rm_tok = load_reward_model(reward_dir)
    expected = torch.tensor(score_texts(rm, rm_tok, prompts, responses))
    got = shared(prompts, responses)
    assert expected.std() > 1e-3  # the scores differ, so agreeing means something
    assert torch.allclose(got, expected, atol=1e-4)
    # The critic starts as the reward model: its value at the EOS that ends a finished response (the state
    # before the token after it) is the reward score.
    ids = tok(prompts[0], add_special_tokens=False)["input_ids"]
    resp = tok(responses[0], add_special_tokens=False)["input_ids"]
    seq = torch.tensor([ids + resp + [tok.eos_token_id, tok.eos_token_id]])
    with torch.no_grad():
        values = ac.values(seq, torch.ones_like(seq), len(ids))  # V before each response token
    assert values[0, -1].item() == pytest.approx(expected[0].item(), abs=1e-4)
    # Scoring used the reward adapter, then handed the backbone back to the policy.
    assert ac.policy.active_adapter == POLICY


def test_heldout_evaluation_uses_training_questions_ppo_does_not_train_on(tiny_run_folders, tmp_path):
    """Choosing the checkpoint (and the guard) must not look at the test split: eval_split 'heldout' reads the
    eval_limit training questions right after PPO's own."""
    from selfmotivated.data import DataConfig, load_examples
    from selfmotivated.models import load_model
    from selfmotivated.ppo.trainer import make_eval_fn

    sft, _ = tiny_run_folders
    data = DataConfig(dataset="synthetic_coin_flip", split="train", n_train=8, n_test=4, limit=4)
    templates = tmp_path / "templates.json"  # PPO's prompts follow the run's templates
    templates.write_text(json.dumps({"response_start": "Let us count."}))
    config = PPOConfig(sft_model=str(sft), eval_split="heldout", eval_limit=3, max_new_tokens=4, data=data,
                       templates=str(templates))
    model, tok = load_model(str(sft), device="cpu")
    accuracy = make_eval_fn(config, str(sft), tmp_path)(model, tok, 0)
    assert 0.0 <= accuracy <= 1.0
    rows = [json.loads(x) for x in (tmp_path / "eval" / "step-0000000" / "predictions.jsonl").read_text().splitlines()]
    assert all(r["prompt"].endswith("Let us count.") for r in rows)
    ids = [r["id"] for r in rows]
    train = [ex.id for ex in load_examples(DataConfig(**{**data.__dict__, "limit": None}))]
    assert ids == train[4:7]  # after the 4 PPO trains on, none from the test split
    with pytest.raises(ValueError, match="heldout"):  # no data.limit: nothing marks where PPO's questions end
        make_eval_fn(PPOConfig(eval_split="heldout", data=DataConfig(dataset="synthetic_coin_flip", split="train")),
                     str(sft), tmp_path)


def test_run_ppo_end_to_end(tiny_run_folders, tmp_path):
    from selfmotivated.data import DataConfig
    from selfmotivated.models import load_model
    from selfmotivated.ppo.trainer import run_ppo

    sft, reward_dir = tiny_run_folders
    config = PPOConfig(
        sft_model=str(sft),
        reward_model=str(reward_dir),
        out=str(tmp_path),
        iterations=2,
        prompts_per_iteration=2,
        samples_per_prompt=2,
        max_new_tokens=6,
        mini_batch_size=4,
        micro_batch_size=2,
        eval_steps=2,
        eval_limit=2,
        save_steps=1,
        progress=False,
        cpu=True,  # fp32: the merged and adapter policies below must agree to 1e-5 (bf16 on a GPU rounds)
        data=DataConfig(dataset="synthetic_coin_flip", split="train", n_train=8, n_test=4),
    )
    summary = run_ppo(config)
    assert summary["status"] == "finished" and summary["steps"] == 2
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "eval/accuracy" in r] == [0, 2]
    train_rows = [r for r in rows if "ppo/score_mean" in r]
    for key in (
        "ppo/score_mean",
        "ppo/reward_mean",
        "ppo/kl",
        "ppo/entropy",
        "ppo/clipfrac",
        "ppo/approx_kl",
        "losses/policy",
        "ppo/rm_score_mean",
        "rollout/correct_frac",
        "rollout/truncated_frac",
        "rollout/response_length",
        "rollout/logprob_diff",
        "time/generate",
        "time/score",
        "time/forward",
        "time/update",
    ):
        assert all(key in r and math.isfinite(r[key]) for r in train_rows), key
    # The reward model's AUROC against correctness on each iteration's rollouts (nan when all agree).
    assert all("ppo/rm_auroc" in r for r in train_rows)
    assert list((tmp_path / "tensorboard").glob("events.out.tfevents.*"))
    assert (tmp_path / "eval" / "step-0000002" / "predictions.jsonl").is_file()
    # The merged policy folder and the adapter on the SFT model are the same model.
    merged, tok = load_model(str(tmp_path / "policy"), device="cpu")
    adapted, _ = load_model(str(sft), adapter=str(tmp_path / "policy_adapter"), device="cpu")
    ids = torch.tensor([tok("The coin is heads up.", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert torch.allclose(merged(ids).logits, adapted(ids).logits, atol=1e-5)
    # Run again: it resumes from the final checkpoint and has nothing left to do.
    assert run_ppo(config)["steps"] == 2


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="temperature"):
        PPOConfig(temperature=0.0)
    with pytest.raises(ValueError, match="method"):
        PPOConfig(method="qlora")
    with pytest.raises(ValueError, match="mini_batch_size"):
        PPOConfig(mini_batch_size=0)
    assert PPOConfig().learning_rate == 2e-5 and PPOConfig(method="full").learning_rate == 1e-6


# ----------------------------------------------------------------------------------------------------
# Distributed and benchmark (slow: separate processes)


DISTRIBUTED_SCRIPT = """
import json, os, sys, torch
torch.set_num_threads(1)
from selfmotivated.data import DataConfig
from selfmotivated.ppo.trainer import PPOConfig, build_trainer
out = sys.argv[2]
seen = []
def reward_fn(prompts, responses):
    seen.append(sorted(set(prompts)))
    return torch.tensor([sum(c in "abcdefghijklmnopqrstuvwxyz" for c in r) / max(len(r), 1) for r in responses])
config = PPOConfig(sft_model=sys.argv[1], out=out, iterations=3, prompts_per_iteration=4, samples_per_prompt=2,
                   max_new_tokens=6, mini_batch_size=4, micro_batch_size=2, eval_steps=2, save_steps=2,
                   learning_rate=1e-2, tensorboard=False, progress=False,
                   data=DataConfig(dataset="synthetic_coin_flip", split="train", n_train=16, n_test=4))
# Only the main process evaluates; a process that computed another number must still use the main one's.
eval_fn = lambda model, tok, step: 0.25 if os.environ["RANK"] == "0" else 0.75
trainer = build_trainer(config, reward_fn=reward_fn, eval_fn=eval_fn)
trainer.train()
weights = {k: float(v.detach().double().sum()) for k, v in trainer.ac.trainable_state().items()}
json.dump({"seen": seen, "weights": weights, "world": trainer.world, "evals": trainer.state.evals}, open(f"{out}/rank{trainer.rank}.json", "w"))
"""


@pytest.mark.slow
def test_two_cpu_processes_split_rollouts_and_stay_in_sync(tiny_run_folders, tmp_path):
    sft, _ = tiny_run_folders
    script = tmp_path / "run.py"
    script.write_text(textwrap.dedent(DISTRIBUTED_SCRIPT))
    out = tmp_path / "out"
    accelerate = Path(sys.executable).with_name("accelerate")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}  # CPU processes, also on a GPU machine
    # accelerate starts several processes only through its multi-GPU launcher (torchrun); without a GPU
    # each process runs on the CPU and torch.distributed uses gloo.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [
            str(accelerate),
            "launch",
            "--multi_gpu",
            "--num_processes",
            "2",
            "--num_machines",
            "1",
            "--mixed_precision",
            "no",
            "--dynamo_backend",
            "no",
            "--main_process_port",
            str(port),
            str(script),
            str(sft),
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["world"] == 2
    for step in range(3):  # each process scored its own half of the step's prompts
        assert not set(ranks[0]["seen"][step]) & set(ranks[1]["seen"][step])
    assert ranks[0]["weights"] == ranks[1]["weights"]  # gradients averaged: identical updates
    assert (
        ranks[0]["evals"]
        == ranks[1]["evals"]
        == [{"step": 0, "accuracy": 0.25}, {"step": 2, "accuracy": 0.25}]
    )
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2, 3]  # logged once, by the main process
    assert (out / "policy" / "model.safetensors").is_file()


@pytest.mark.slow
def test_bench_ppo_reports_phases_and_memory():
    from selfmotivated.ppo.bench import BenchPPOConfig, format_bench_ppo, run_bench_ppo

    result = run_bench_ppo(
        BenchPPOConfig(
            model="tiny-random",
            iterations=1,
            warmup=1,
            prompts_per_iteration=2,
            max_new_tokens=8,
            mini_batch_size=4,
            micro_batch_size=2,
        )
    )
    for key in (
        "seconds_per_iteration",
        "rollout_seconds",
        "scoring_seconds",
        "forward_seconds",
        "update_seconds",
    ):
        assert result[key] > 0, key
    assert result["seconds_per_iteration"] >= result["rollout_seconds"] + result["update_seconds"]
    assert result["ppo_peak_mb"] > 0 and result["sft_peak_mb"] > 0
    assert result["memory_ratio"] == pytest.approx(result["ppo_peak_mb"] / result["sft_peak_mb"], rel=1e-2)
    assert "ratio" in format_bench_ppo(result)


def test_reward_model_reads_rollouts_as_it_read_its_training_rationales():
    """A rollout that states an answer and runs on to the token limit is read ending at our answer line, with
    its EOS, like the rationales of the reward model's training pairs (rank.response_of); one with no answer
    stays as written, unfinished only when cut off."""
    from selfmotivated.rationales.rank import is_finished, response_of, reward_views
    from selfmotivated.records import Example

    ex = Example(id="q", question="What is 3 + 4?", gold="7", answer_type="number")
    runaway = "3 + 4 = 7. The answer is 7.\nThe answer is 7.\nThe answer is 7.\nThe ans"
    texts = [runaway, "Let me think about", "I do not know."]
    views, finished = reward_views(texts, [ex, ex, ex], [True, True, False])
    assert finished == [True, False, True]
    assert views[0].endswith("The answer is 7.") and views[1:] == ["Let me think about", "I do not know."]
    stored = {"text": runaway, "answer": "7", "finish_reason": "length"}  # the same text in the rationale store
    assert (views[0], finished[0]) == (response_of(stored, "number"), is_finished(stored))
    assert reward_views(["anything"], [None], [True]) == (["anything"], [False])
