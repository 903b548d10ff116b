"""Steps 1 and 2 of a PPO iteration: generate rollouts, then make experience from them.

    rollouts   = generate_rollouts(...)       # sample responses with the policy (generation engine)
    experience = make_experience(...)         # no-grad: old/ref log-probs, values, KL-shaped rewards, GAE

(OpenRLHF's split; step 3, the PPO update, is in trainer.py.) The old log-probs are either recomputed by
a forward pass (reuse_sampler_logprobs False) or taken from the sampler, which computed them for the tokens
it drew from the same policy at the same temperature (ppo.reuse_sampler_logprobs, the default: one forward
pass fewer per iteration, and the per-token entropy comes from the sampler too). The two differ by float
rounding only (a KV-cached decode against a full pass: ~1e-6 in float32, tested), so the first
minibatch's ratio is 1 to that precision rather than exactly. A forward pass reports the difference as
`rollout/logprob_diff`; a large value means the sampler and the trained model disagree (wrong tokens,
misaligned positions, a stale model, or reduced precision on a GPU, where a forward is the safer choice).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Callable, Sequence

import torch

from .actor_critic import ActorCritic
from .core import (
    compute_gae, compute_rewards, explained_variance, group_advantages, masked_mean, masked_sum, masked_whiten,
)


@dataclass
class Rollout:
    """One sampled response to one prompt."""

    prompt: str  # prompt text (chat template applied)
    prompt_ids: list[int]
    response: str  # decoded response text (what the reward model scores)
    response_ids: list[int]  # sampled tokens, EOS included when it ended the row
    sampler_logprobs: list[float] | None  # the engine's log-probs of response_ids
    finish_reason: str  # eos | stop | length
    example: object = None  # the training question (records.Example) when known
    group: int = 0  # which prompt of the batch: the samples of one question share it (group baseline)
    sampler_entropies: list[float] | None = None  # the sampling distribution's entropy at each token


@dataclass
class Experience:
    """A rollout batch ready for PPO updates. B samples, prompts left-padded to P columns, responses
    right-padded to T columns: sequence column P + t holds response token t."""

    # what was generated
    sequences: torch.Tensor  # (B, P + T) prompt then response token ids; pad elsewhere
    attention_mask: torch.Tensor  # (B, P + T) 1 on real tokens
    response_mask: torch.Tensor  # (B, T) 1 on response tokens
    prompt_width: int  # P
    # from the no-grad forward passes
    old_logprobs: torch.Tensor  # (B, T) log pi_old(token), the policy before this iteration's updates
    ref_logprobs: torch.Tensor  # (B, T) log pi_ref(token), the frozen SFT model
    old_values: torch.Tensor  # (B, T) V(state before the token), the critic before the updates (0: rloo)
    # reward shaping and advantages
    scores: torch.Tensor  # (B,) sequence reward: reward-model score (+ answer bonus/penalty)
    kl: torch.Tensor  # (B, T) per-token KL(policy || reference) estimate
    rewards: torch.Tensor  # (B, T) -beta * kl on every token, + score on the last one
    advantages: torch.Tensor  # (B, T) GAE advantages, or the row's group advantage on each of its tokens
    returns: torch.Tensor  # (B, T) value targets: raw advantages + old values (0: rloo, no critic)

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, index: torch.Tensor | Sequence[int]) -> "Experience":
        """Rows `index`, with columns that are padding in all of them cut off (left of the prompts,
        right of the responses): a minibatch of short responses runs at its own length."""
        index = torch.as_tensor(index, dtype=torch.long, device=self.sequences.device)
        attn = self.attention_mask[index]
        resp = self.response_mask[index]
        P = self.prompt_width
        lead = int((attn[:, :P].sum(0) == 0).long().cumprod(0).sum())  # leading all-pad prompt columns
        T = int(resp.sum(-1).max()) if len(index) else 0
        T = max(T, 1)
        rows = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("sequences", "attention_mask"):
                rows[f.name] = value[index][:, lead : P + T]
            elif f.name == "prompt_width":
                rows[f.name] = P - lead
            elif value.dim() == 2:
                rows[f.name] = value[index][:, :T]
            else:
                rows[f.name] = value[index]
        return Experience(**rows)


def collate(rollouts: Sequence[Rollout], pad_id: int, device=None):
    """(sequences (B, P + T), attention_mask (B, P + T), response_mask (B, T), P) from rollouts."""
    P = max(len(r.prompt_ids) for r in rollouts)
    T = max(max(len(r.response_ids) for r in rollouts), 1)
    B = len(rollouts)
    sequences = torch.full((B, P + T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, P + T), dtype=torch.long)
    for b, r in enumerate(rollouts):
        p, t = len(r.prompt_ids), len(r.response_ids)
        sequences[b, P - p : P] = torch.tensor(r.prompt_ids)
        sequences[b, P : P + t] = torch.tensor(r.response_ids, dtype=torch.long)
        attention_mask[b, P - p : P + t] = 1
    response_mask = attention_mask[:, P:].clone()
    if device is not None:
        sequences, attention_mask, response_mask = (
            x.to(device) for x in (sequences, attention_mask, response_mask)
        )
    return sequences, attention_mask, response_mask, P


def generate_rollouts(
    generator, prompts: Sequence[str], examples: Sequence, tokenizer, params
) -> list[Rollout]:
    """Sample `params.n` responses per prompt with the current policy (the generation engine runs it in
    eval mode, without gradients). Rows: prompt order, the samples of a prompt side by side."""
    completions = generator.generate(list(prompts), params)
    rollouts = []
    for group, (prompt, example, samples) in enumerate(zip(prompts, examples, completions, strict=True)):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in samples:
            rollouts.append(
                Rollout(
                    prompt=prompt,
                    prompt_ids=prompt_ids,
                    response=c.text,
                    response_ids=list(c.token_ids),
                    sampler_logprobs=c.logprobs,
                    finish_reason=c.finish_reason,
                    example=example,
                    group=group,
                    sampler_entropies=c.extra.get("entropies"),
                )
            )
    return rollouts


def _in_chunks(fn: Callable, batch_size: int, *tensors: torch.Tensor, **kw) -> list:
    """fn over row chunks of the tensors; outputs concatenated along rows (fn returns a tensor or a tuple)."""
    outs = []
    for start in range(0, tensors[0].shape[0], batch_size):
        outs.append(fn(*(t[start : start + batch_size] for t in tensors), **kw))
    if isinstance(outs[0], tuple):
        return [torch.cat(parts) for parts in zip(*outs)]
    return [torch.cat(outs)]


@torch.no_grad()
def make_experience(
    ac: ActorCritic,
    rollouts: Sequence[Rollout],
    scores: torch.Tensor,
    pad_id: int,
    kl_coef: float,
    kl_estimator: str = "k1",
    gamma: float = 1.0,
    lam: float = 0.95,
    whiten: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = masked_whiten,
    batch_size: int = 8,
    advantage: str = "gae",
    reuse_sampler_logprobs: bool = False,
) -> tuple[Experience, dict[str, float]]:
    """Experience from rollouts and their sequence scores (B,), and this process's rollout stats.

    advantage "gae": the critic's values and GAE over the KL-shaped per-token rewards; whiten(advantages,
    mask) normalises them (masked_whiten, or a version whose statistics span every process; None: raw).
    advantage "rloo": no critic; each row's return (score - beta * its summed KL) minus the mean return of
    the other samples of its question (`Rollout.group`), the same on every token of the row; `whiten` given
    divides by the advantages' standard deviation over this process's rows, keeping their sign.
    reuse_sampler_logprobs: the old log-probs (and entropies) are the sampler's, when every rollout has them
    (see the module docstring); else a forward pass computes them.
    """
    device = next(ac.parameters()).device
    seq, attn, mask, P = collate(rollouts, pad_id, device)
    reused = reuse_sampler_logprobs and all(
        r.sampler_logprobs is not None and r.sampler_entropies is not None for r in rollouts)
    if reused:
        old_logprobs = _response_aligned([r.sampler_logprobs for r in rollouts], mask)  # (B, T)
        entropy = _response_aligned([r.sampler_entropies for r in rollouts], mask)  # (B, T)
    else:
        old_logprobs, entropy = _in_chunks(
            ac.policy_logprobs, batch_size, seq, attn, prompt_width=P, with_entropy=True
        )  # (B, T) each
    (ref_logprobs,) = _in_chunks(ac.reference_logprobs, batch_size, seq, attn, prompt_width=P)  # (B, T)
    if advantage == "gae":
        (values,) = _in_chunks(ac.values, batch_size, seq, attn, prompt_width=P)  # (B, T)
    else:
        values = torch.zeros_like(old_logprobs)  # no critic: nothing to run
    scores = scores.to(device=device, dtype=torch.float32)

    rewards, kl = compute_rewards(
        scores, old_logprobs, ref_logprobs, mask, kl_coef, kl_estimator
    )  # (B, T) x2
    if advantage == "gae":
        advantages, returns = compute_gae(rewards, values, mask, gamma, lam)  # (B, T) x2
        if whiten is not None:
            advantages = whiten(advantages, mask)
    elif advantage == "rloo":
        groups = torch.tensor([r.group for r in rollouts], device=device)
        row_advantage = group_advantages(rewards.sum(-1), groups)  # (B,)
        # Scale only a real spread: rounding noise of equal scores must stay ~0, not become +-1.
        if whiten is not None and len(row_advantage) > 1 and row_advantage.std() > 1e-4:
            row_advantage = row_advantage / row_advantage.std()
        advantages = torch.where(mask.bool(), row_advantage[:, None], 0)  # (B, T)
        returns = torch.zeros_like(advantages)
    else:
        raise ValueError(f"unknown advantage {advantage!r}; expected 'gae' or 'rloo'")

    exp = Experience(
        sequences=seq,
        attention_mask=attn,
        response_mask=mask,
        prompt_width=P,
        old_logprobs=old_logprobs,
        ref_logprobs=ref_logprobs,
        old_values=values,
        scores=scores,
        kl=kl,
        rewards=rewards,
        advantages=advantages,
        returns=returns,
    )
    lengths = mask.sum(-1).float()  # (B,)
    stats = {
        "ppo/kl": masked_sum(kl, mask, dim=-1).mean().item(),  # per sequence, summed over its tokens
        "ppo/kl_per_token": masked_mean(kl, mask).item(),
        "ppo/entropy": masked_mean(entropy, mask).item(),  # per token, of the policy on its own samples
        "ppo/reward_mean": rewards.sum(-1).mean().item(),  # score - beta * KL, per sequence
        "ppo/score_mean": scores.mean().item(),
        "ppo/score_std": scores.std().item() if len(scores) > 1 else 0.0,
        "ppo/values_mean": masked_mean(values, mask).item(),
        "ppo/advantage_abs_mean": masked_mean(advantages.abs(), mask).item(),
        "rollout/response_length": lengths.mean().item(),
        "rollout/truncated_frac": sum(r.finish_reason == "length" for r in rollouts) / len(rollouts),
    }
    if advantage == "gae":
        # How much of the returns' variance the critic's rollout values explain (1 perfect, <= 0 useless).
        stats["ppo/explained_variance"] = _explained_variance(values, returns, mask)
        stats["ppo/returns_mean"] = masked_mean(returns, mask).item()
    stats["rollout/sampler_logprobs_reused"] = float(reused)  # then the update's first minibatch checks them
    sampler = [r.sampler_logprobs for r in rollouts]
    if not reused and all(s is not None for s in sampler):
        from_sampler = _response_aligned(sampler, mask)
        stats["rollout/logprob_diff"] = masked_mean((from_sampler - old_logprobs).abs(), mask).item()
    return exp, stats


def _response_aligned(values: Sequence[Sequence[float]], mask: torch.Tensor) -> torch.Tensor:
    """Per-token lists (one per row, as long as its response) as a (B, T) float32 tensor, 0 on padding."""
    out = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device)
    for b, v in enumerate(values):
        out[b, : len(v)] = torch.tensor(v, dtype=torch.float32)
    return out


def _explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> float:
    """explained_variance as a float; 0 where it is undefined (fewer than 2 tokens, constant returns)."""
    if mask.sum() < 2:
        return 0.0
    ev = explained_variance(values, returns, mask).item()
    return ev if math.isfinite(ev) else 0.0
