"""PPO maths for language models as pure tensor functions (torch only, no model, no config).

Token-level PPO on the response: every per-token tensor is (B, T) and aligned with the response
tokens, and `mask` (B, T) is 1 on response tokens and 0 on padding. Rows may have different
lengths. At position t, `logprobs[:, t]` is log pi(token_t | prefix), `values[:, t]` is V(prefix),
the value of the state *before* token t is emitted, and `rewards[:, t]` is the reward for emitting it.

Padding positions may hold anything (0, garbage, even inf or nan from a model that never saw them):
every function here selects with `torch.where` rather than multiplying by the mask, so padding
never reaches a result on response tokens, nor a gradient (0 * inf would be nan).

Orchestration (rollouts, minibatches, optimiser steps) lives elsewhere; these functions are what the
tests in tests/test_ppo_core.py pin down.
"""

from __future__ import annotations

import math

import torch

# --------------------------------------------------------------------------------------------------
# masked statistics


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of `x` over entries where `mask` is 1. x, mask: same shape. dim None -> a scalar."""
    x = torch.where(mask.bool(), x, 0)  # where, not x * mask: 0 * inf is nan
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of `x` over entries where `mask` is 1; 0 where the mask is empty. x, mask: same shape.

    dim None -> a scalar (the token mean of a batch); dim=1 on (B, T) -> (B,) per-row means.
    """
    count = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of `x` over all entries where `mask` is 1 (a scalar). unbiased: divide by n - 1.

    Raises ValueError when the mask selects too few entries (0, or 1 with unbiased=True).
    """
    n = mask.to(x.dtype).sum()
    if n < (2 if unbiased else 1):  # one host sync per call; an empty batch is a caller bug
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} masked entries, got {int(n)}")
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    return var * n / (n - 1) if unbiased else var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise `x` to mean 0 and (unbiased) variance 1 over the masked entries; 0 on padding.

    shift_mean=False keeps the original mean and only rescales (used on rewards, where the sign of
    the mean matters). Whitening advantages per batch is the usual PPO practice (OpenAI baselines).
    x, mask: (B, T) -> (B, T).
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask.bool(), out, 0)


# --------------------------------------------------------------------------------------------------
# KL between policy and reference, per token
#
# Source for all three: J. Schulman, "Approximating KL Divergence" (2020),
# http://joschu.net/blog/kl-approx.html. Tokens are sampled from the policy p; the reference is q;
# log_ratio = log p(x) - log q(x). Each estimator's mean over samples estimates KL(p || q).


def kl_k1(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k1 = log p - log q: unbiased, high variance, negative on some tokens. (B, T) -> (B, T)."""
    return logprobs - ref_logprobs


def kl_k2(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k2 = (log p - log q)^2 / 2: biased (exact to second order as q -> p), low variance, >= 0."""
    return 0.5 * (logprobs - ref_logprobs) ** 2


def kl_k3(logprobs: torch.Tensor, ref_logprobs: torch.Tensor) -> torch.Tensor:
    """k3 = (r - 1) - log r with r = q/p: unbiased, low variance when p ~ q, and >= 0 on every token.

    Computed as expm1(-log_ratio) + log_ratio, which keeps precision when p ~ q. Not clamped: when
    the reference gives a token far more mass than the policy (log_ratio << 0) it grows like exp,
    which is the signal "KL is blowing up", not something to hide. (B, T) -> (B, T).
    """
    log_ratio = logprobs - ref_logprobs
    return torch.expm1(-log_ratio) + log_ratio


def kl_penalty(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, kind: str = "k1") -> torch.Tensor:
    """Per-token KL(policy || reference) estimate, kind "k1", "k2" or "k3" (see above). (B, T) -> (B, T)."""
    if kind == "k1":
        return kl_k1(logprobs, ref_logprobs)
    if kind == "k2":
        return kl_k2(logprobs, ref_logprobs)
    if kind == "k3":
        return kl_k3(logprobs, ref_logprobs)
    raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1', 'k2' or 'k3'")


# --------------------------------------------------------------------------------------------------
# rewards, advantages, returns


@torch.no_grad()
def compute_rewards(
    score: torch.Tensor,
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
    kind: str = "k1",
) -> tuple[torch.Tensor, torch.Tensor]:
    """KL-shaped per-token reward (Ziegler et al. 2019, arXiv:1909.08593; InstructGPT, arXiv:2203.02155).

    rewards[b, t] = -kl_coef * kl[b, t] on response tokens, plus score[b] on the last response token
    of row b (the reward model scores the whole rationale once, at its end). Rows with no response
    token get no score. Padding holds 0 in both outputs.

    score (B,); logprobs, ref_logprobs, mask (B, T) -> rewards (B, T), kl (B, T).
    """
    mask = mask.bool()
    kl = torch.where(mask, kl_penalty(logprobs, ref_logprobs, kind), 0)
    rewards = -kl_coef * kl
    # Last response position per row: the largest t with mask 1 (-1 for an empty row). Works for
    # right padding, left padding and holes alike.
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).amax(dim=1)  # (B,)
    has_response = last >= 0
    bonus = torch.where(has_response, score.to(rewards.dtype), 0)  # (B,)
    rewards = rewards.scatter_add(1, last.clamp(min=0)[:, None], bonus[:, None])
    return rewards, kl


@torch.no_grad()
def compute_gae(
    rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, arXiv:1506.02438), per response token.

        delta_t = r_t + gamma * V_{t+1} - V_t
        A_t     = delta_t + gamma * lam * A_{t+1}
        returns = A + V            (the value targets)

    The reverse loop walks only over response tokens of each row: padding is skipped, carrying the
    next response token's value and advantage through it, so the value after the last response token
    is 0 (the episode ends there) and nothing at a padding position (value or reward) can leak into
    a response token. Rewards must therefore sit on response tokens (compute_rewards puts them there).
    Holes inside a row (masked tool output, say) are skipped the same way. Outputs are targets: no
    gradient; 0 on padding.

    rewards, values, mask (B, T) -> advantages (B, T), returns (B, T).
    """
    mask = mask.bool()
    dtype = torch.promote_types(torch.promote_types(rewards.dtype, values.dtype), torch.float32)
    rewards, values = rewards.to(dtype), values.to(dtype)
    B, T = rewards.shape
    next_value = rewards.new_zeros(B)  # V of the next response token, 0 past the end
    next_adv = rewards.new_zeros(B)  # A of the next response token, 0 past the end
    advantages = torch.zeros_like(rewards)
    for t in reversed(range(T)):
        m = mask[:, t]
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        adv = delta + gamma * lam * next_adv
        advantages[:, t] = torch.where(m, adv, 0)
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = torch.where(mask, advantages + values, 0)
    return advantages, returns


@torch.no_grad()
def group_advantages(returns: torch.Tensor, groups: torch.Tensor) -> torch.Tensor:
    """Leave-one-out baseline per question (RLOO: Kool et al. 2019; Ahmadian et al. 2024, arXiv:2402.14740).

        A_i = R_i - mean(R_j for the other samples j of the same question)

    A reward model trained on pairs of one question only ranks responses to the same question; its offset
    between questions is noise, and this baseline removes it. Equal returns within a question give 0. A
    question with one sample gets 0 (nothing to compare with).

    returns (B,) float, groups (B,) int question ids -> advantages (B,).
    """
    _, inverse = torch.unique(groups, return_inverse=True)
    n_groups = int(inverse.max()) + 1 if len(inverse) else 0
    sums = returns.new_zeros(n_groups).index_add_(0, inverse, returns)
    counts = returns.new_zeros(n_groups).index_add_(0, inverse, torch.ones_like(returns))
    n = counts[inverse]  # (B,) samples of each row's question
    others_mean = (sums[inverse] - returns) / (n - 1).clamp(min=1)
    return torch.where(n > 1, returns - others_mean, torch.zeros_like(returns))


# --------------------------------------------------------------------------------------------------
# losses


def _token_mean(x: torch.Tensor, mask: torch.Tensor, num_tokens: float | None) -> torch.Tensor:
    """masked mean of x, or its masked sum / num_tokens: a micro-batch's share of a whole minibatch's token
    mean (so short and long micro-batches weigh by their tokens, not by their rows)."""
    return masked_mean(x, mask) if num_tokens is None else masked_sum(x, mask) / max(num_tokens, 1)


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_range: float,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017, arXiv:1707.06347, eq. 7), as a loss to minimise.

        ratio = exp(logprobs - old_logprobs)
        loss  = token_mean(max(-A * ratio, -A * clip(ratio, 1 - eps, 1 + eps)))

    The clipped term wins (and the gradient is 0) where the ratio left [1 - eps, 1 + eps] in the
    direction the advantage pushes: ratio > 1 + eps with A > 0, ratio < 1 - eps with A < 0.
    Stats (detached scalars):
      clipfrac  - fraction of response tokens where the clipped term won (gradient zeroed);
      approx_kl - mean of (ratio - 1) - log ratio, the k3 estimator of KL(old || new) on tokens
                  sampled from the old policy (Schulman, "Approximating KL Divergence", 2020; as in
                  CleanRL's ppo.py).

    num_tokens: the response tokens of the whole minibatch this micro-batch belongs to; the loss is then
    the micro-batch's share of the minibatch token mean (see _token_mean).

    logprobs (B, T) with grad; old_logprobs, advantages, mask (B, T) -> loss (scalar), stats.
    """
    mask = mask.bool()
    # Zero padding before exp: a garbage log-prob there would give inf * 0 = nan in the gradient.
    log_ratio = torch.where(mask, logprobs - old_logprobs, 0)
    advantages = torch.where(mask, advantages.detach(), 0)
    ratio = torch.exp(log_ratio)
    pg_unclipped = -advantages * ratio
    pg_clipped = -advantages * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = _token_mean(torch.maximum(pg_unclipped, pg_clipped), mask, num_tokens)
    with torch.no_grad():
        clipfrac = masked_mean((pg_clipped > pg_unclipped).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1) - log_ratio, mask)
    return loss, {"clipfrac": clipfrac, "approx_kl": approx_kl}


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip_range_value: float | None,
    num_tokens: float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Clipped value loss (OpenAI baselines ppo2; discussed in Engstrom et al. 2020, arXiv:2005.12729).

        v_clipped = old_values + clip(values - old_values, -c, c)
        loss      = 0.5 * token_mean(max((values - returns)^2, (v_clipped - returns)^2))

    The max is pessimistic: a value that moved more than c from its rollout estimate gets no gradient
    when moving further helps. clip_range_value None: plain 0.5 * squared error.
    Stats: vf_clipfrac, the fraction of response tokens where the clipped error won (detached).

    values (B, T) with grad; old_values, returns, mask (B, T) -> loss (scalar), stats.
    """
    mask = mask.bool()
    values = torch.where(mask, values, 0)
    old_values = torch.where(mask, old_values.detach(), 0)
    returns = torch.where(mask, returns.detach(), 0)
    err = (values - returns) ** 2
    if clip_range_value is None:
        return 0.5 * _token_mean(err, mask, num_tokens), {"vf_clipfrac": torch.zeros((), device=values.device)}
    v_clipped = old_values + torch.clamp(values - old_values, -clip_range_value, clip_range_value)
    err_clipped = (v_clipped - returns) ** 2
    loss = 0.5 * _token_mean(torch.maximum(err, err_clipped), mask, num_tokens)
    with torch.no_grad():
        vf_clipfrac = masked_mean((err_clipped > err).to(err.dtype), mask)
    return loss, {"vf_clipfrac": vf_clipfrac}


# --------------------------------------------------------------------------------------------------
# from logits


class _LogProbOfLabel(torch.autograd.Function):
    """log_softmax(logits)[label] without materialising the (N, V) log_softmax.

    Forward keeps one logsumexp per row; backward rebuilds the softmax one chunk of rows at a time,
    so with bf16 logits the extra memory is chunk_size x V floats instead of a float32 copy of the
    whole (N, V) tensor kept alive for backward (gigabytes for a 150k vocabulary).
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor, chunk_size: int) -> torch.Tensor:
        # logits (N, V), labels (N,) -> (N,) in float32 (float64 for float64 logits)
        acc = torch.promote_types(logits.dtype, torch.float32)
        out = torch.empty(logits.shape[0], dtype=acc, device=logits.device)  # (N,)
        lse = torch.empty_like(out)  # (N,)
        for start in range(0, logits.shape[0], chunk_size):
            rows = slice(start, start + chunk_size)
            x = logits[rows].to(acc)  # (n, V)
            # Shift by the row max first: x - max is exact near the max, so large logits lose no
            # precision in the final subtraction (logit[label] - logsumexp would cancel).
            row_max = x.amax(dim=-1, keepdim=True)  # (n, 1)
            shifted = x - row_max
            lse_shifted = torch.logsumexp(shifted, dim=-1)  # (n,)
            out[rows] = shifted.gather(-1, labels[rows, None]).squeeze(-1) - lse_shifted
            lse[rows] = row_max.squeeze(-1) + lse_shifted
        ctx.save_for_backward(logits, labels, lse)
        ctx.chunk_size = chunk_size
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        logits, labels, lse = ctx.saved_tensors
        # d logp[label] / d logits[v] = 1[v == label] - softmax(logits)[v]
        grad = torch.empty_like(logits)  # (N, V), the logits' dtype
        for start in range(0, logits.shape[0], ctx.chunk_size):
            rows = slice(start, start + ctx.chunk_size)
            g = grad_out[rows, None]  # (n, 1)
            chunk = (logits[rows].to(lse.dtype) - lse[rows, None]).exp_().mul_(-g)  # -g * softmax
            chunk.scatter_add_(-1, labels[rows, None], g)
            grad[rows] = chunk
        return grad, None, None


def logprobs_from_logits(logits: torch.Tensor, labels: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """log softmax(logits)[labels]: the log-probability of each given token.

    Equals log_softmax(logits).gather(labels) but computed as gather - logsumexp in float32, chunk by
    chunk of rows, with a hand-written backward (see _LogProbOfLabel): no full-vocab float copy is
    kept. Labels must be valid token ids everywhere (put any id on padding and mask the result).

    logits (B, T, V) any float dtype, labels (B, T) int -> (B, T) float32 (float64 for float64 logits).
    """
    vocab = logits.shape[-1]
    flat = _LogProbOfLabel.apply(logits.reshape(-1, vocab), labels.reshape(-1), chunk_size)
    return flat.view(labels.shape)


def entropy_from_logits(logits: torch.Tensor, chunk_size: int = 512) -> torch.Tensor:
    """Entropy of softmax(logits) per position: H = logsumexp(x) - sum_v softmax(x)_v * x_v.

    Stable for large logits (logsumexp), exact for -inf logits (masked vocabulary entries count 0,
    with no nan in value or gradient). Computed in float32 a chunk of rows at a time; usually a
    no-grad metric (under grad, autograd keeps each chunk's float32 tensors for backward).

    logits (B, T, V) -> (B, T) float32 (float64 for float64 logits).
    """
    vocab = logits.shape[-1]
    acc = torch.promote_types(logits.dtype, torch.float32)
    parts = []
    for chunk in logits.reshape(-1, vocab).split(chunk_size):
        x = chunk.to(acc)  # (n, V)
        # H is shift-invariant; subtracting the row max keeps lse and sum(p * x) small, so their
        # difference does not cancel away float32 precision for large logits.
        x = x - x.amax(dim=-1, keepdim=True).detach()
        lse = torch.logsumexp(x, dim=-1)  # (n,)
        p = torch.softmax(x, dim=-1)  # (n, V)
        x_safe = torch.where(p > 0, x, 0)  # p * x with x = -inf and p = 0 would be nan
        parts.append(lse - (p * x_safe).sum(-1))
    return torch.cat(parts).view(logits.shape[:-1])


@torch.no_grad()
def explained_variance(values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """1 - Var(returns - values) / Var(returns) over response tokens (as in OpenAI baselines).

    1: the critic predicts returns perfectly (up to a constant offset); 0: no better than a constant;
    < 0: worse. nan when the returns have no variance. values, returns, mask (B, T) -> scalar.
    """
    var_returns = masked_var(returns, mask, unbiased=False)
    var_residual = masked_var(returns - values, mask, unbiased=False)
    ev = 1 - var_residual / var_returns
    return torch.where(var_returns > 0, ev, torch.full_like(ev, math.nan))


# --------------------------------------------------------------------------------------------------
# KL coefficient controllers


class FixedKLController:
    """A constant KL coefficient beta. `update` does nothing; it exists so both controllers swap freely."""

    def __init__(self, value: float):
        self.value = float(value)

    def update(self, current_kl: float, n_steps: int) -> None:
        pass


class AdaptiveKLController:
    """Adaptive KL coefficient (Ziegler et al. 2019, "Fine-Tuning Language Models from Human
    Preferences", arXiv:1909.08593, section 2.2): a proportional controller that moves beta to keep
    the measured KL near `target`.

        error = clip((current_kl - target) / target, -0.2, 0.2)
        beta  <- beta * (1 + error * n_steps / horizon)

    KL above target raises beta (a stronger pull to the reference), below lowers it; at most 20% per
    `horizon` steps. n_steps: samples (or steps) seen since the last update.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got target={target}, horizon={horizon}")
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = horizon

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max((float(current_kl) - self.target) / self.target, -0.2), 0.2)
        self.value *= 1 + error * n_steps / self.horizon
