"""Properties and hand-computed values for the PPO maths in selfmotivated.ppo.core (CPU, milliseconds)."""

from __future__ import annotations

import math

import pytest
import torch

from selfmotivated.ppo.core import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    explained_variance,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalty,
    logprobs_from_logits,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def ragged_mask(lengths: list[int], T: int) -> torch.Tensor:
    """Right-padded (B, T) mask with the given response lengths."""
    return (torch.arange(T)[None, :] < torch.tensor(lengths)[:, None]).float()


def fill_padding(x: torch.Tensor, mask: torch.Tensor, value: float) -> torch.Tensor:
    return torch.where(mask.bool(), x, torch.full_like(x, value))


# --------------------------------------------------------------------------------------------------
# masked statistics


def test_masked_stats_ignore_garbage_on_padding():
    g = torch.Generator().manual_seed(0)
    mask = ragged_mask([3, 5, 1], T=5)
    x = fill_padding(torch.randn(3, 5, generator=g, dtype=torch.float64), mask, math.nan)
    x[0, 4] = math.inf
    picked = x[mask.bool()]
    assert masked_sum(x, mask).item() == pytest.approx(picked.sum().item())
    assert masked_mean(x, mask).item() == pytest.approx(picked.mean().item())
    assert masked_var(x, mask).item() == pytest.approx(picked.var(unbiased=True).item())
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(picked.var(unbiased=False).item())
    row_means = masked_mean(x, mask, dim=1)
    for b, n in enumerate([3, 5, 1]):
        assert row_means[b].item() == pytest.approx(x[b, :n].mean().item())
    # bool masks behave the same as float masks
    assert masked_mean(x, mask.bool()).item() == pytest.approx(picked.mean().item())


def test_masked_mean_of_empty_mask_is_zero_and_var_needs_two_entries():
    x = torch.randn(2, 3)
    assert masked_mean(x, torch.zeros(2, 3)).item() == 0.0
    one = torch.zeros(2, 3)
    one[1, 2] = 1
    with pytest.raises(ValueError):
        masked_var(x, one)
    assert masked_var(x, one, unbiased=False).item() == 0.0


def test_whitening_gives_mean_zero_and_unit_variance_over_masked_entries():
    g = torch.Generator().manual_seed(1)
    mask = ragged_mask([4, 7, 2, 6], T=7)
    x = 3.0 + 5.0 * torch.randn(4, 7, generator=g, dtype=torch.float64)
    x = fill_padding(x, mask, 1e6)  # huge padding values must not shift the statistics
    w = masked_whiten(x, mask)
    picked = w[mask.bool()]
    assert picked.mean().item() == pytest.approx(0.0, abs=1e-9)
    assert picked.var(unbiased=True).item() == pytest.approx(1.0, rel=1e-6)
    assert torch.all(w[~mask.bool()] == 0)

    kept = masked_whiten(x, mask, shift_mean=False)[mask.bool()]
    assert kept.mean().item() == pytest.approx(x[mask.bool()].mean().item(), rel=1e-9)
    assert kept.var(unbiased=True).item() == pytest.approx(1.0, rel=1e-6)


# --------------------------------------------------------------------------------------------------
# KL estimators


def test_kl_estimators_hand_values():
    lp, ref = torch.tensor([math.log(0.5)]), torch.tensor([math.log(0.25)])  # log ratio = log 2
    assert kl_k1(lp, ref).item() == pytest.approx(math.log(2))
    assert kl_k2(lp, ref).item() == pytest.approx(0.5 * math.log(2) ** 2)
    # r = q/p = 1/2: (r - 1) - log r = -0.5 + log 2
    assert kl_k3(lp, ref).item() == pytest.approx(-0.5 + math.log(2))
    for kind, fn in [("k1", kl_k1), ("k2", kl_k2), ("k3", kl_k3)]:
        assert torch.equal(kl_penalty(lp, ref, kind), fn(lp, ref))
    with pytest.raises(ValueError):
        kl_penalty(lp, ref, "kl")


def test_k1_and_k3_are_unbiased_monte_carlo_estimates_of_kl_and_k3_has_lower_variance():
    p = torch.tensor([0.1, 0.2, 0.3, 0.4], dtype=torch.float64)  # policy (samples come from here)
    q = torch.tensor([0.2, 0.2, 0.25, 0.35], dtype=torch.float64)  # reference
    true_kl = (p * (p / q).log()).sum().item()
    g = torch.Generator().manual_seed(0)
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, ref = p.log()[x], q.log()[x]
    k1, k3 = kl_k1(lp, ref), kl_k3(lp, ref)
    for k in (k1, k3):
        std_err = k.std().item() / math.sqrt(len(k))
        assert abs(k.mean().item() - true_kl) < 4 * std_err
        assert abs(k.mean().item() - true_kl) < 0.1 * true_kl
    assert k3.var() < k1.var()  # the point of k3 when p and q are close


def test_k3_is_nonnegative_everywhere_and_zero_at_equality():
    g = torch.Generator().manual_seed(0)
    lp = -10 * torch.rand(1000, generator=g)
    ref = -10 * torch.rand(1000, generator=g)
    assert torch.all(kl_k3(lp, ref) >= 0)
    assert torch.all(kl_k2(lp, ref) >= 0)
    assert torch.all(kl_k3(lp, lp) == 0)
    tiny = torch.tensor([1e-6, -1e-6], dtype=torch.float32)  # expm1 keeps precision near 0
    assert torch.all(kl_k3(tiny, torch.zeros(2)) > 0)


# --------------------------------------------------------------------------------------------------
# rewards


def test_compute_rewards_puts_score_on_last_token_of_each_ragged_row():
    T = 5
    mask = torch.tensor(
        [
            [1, 1, 1, 0, 0],  # right-padded, last token at 2
            [1, 1, 1, 1, 1],  # full, last at 4
            [1, 0, 0, 0, 0],  # one token, last at 0
            [0, 0, 1, 1, 1],  # left-padded, last at 4
            [0, 0, 0, 0, 0],  # empty response: no score anywhere
        ],
        dtype=torch.float32,
    )
    g = torch.Generator().manual_seed(0)
    logprobs = -torch.rand(5, T, generator=g)
    ref = -torch.rand(5, T, generator=g)
    ref = fill_padding(ref, mask, -math.inf)  # garbage on padding
    score = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    rewards, kl = compute_rewards(score, logprobs, ref, mask, kl_coef=0.1)

    expected = torch.where(mask.bool(), -0.1 * (logprobs - ref), 0)
    for b, last in [(0, 2), (1, 4), (2, 0), (3, 4)]:
        expected[b, last] += score[b]
    torch.testing.assert_close(rewards, expected)
    torch.testing.assert_close(kl, torch.where(mask.bool(), logprobs - ref, 0))
    assert torch.all(rewards[4] == 0)
    assert torch.isfinite(rewards).all() and torch.isfinite(kl).all()

    # with kl_coef 0 only the score is left: one non-zero per non-empty row, summing to the score
    rewards0, _ = compute_rewards(score, logprobs, ref, mask, kl_coef=0.0, kind="k3")
    torch.testing.assert_close(rewards0.sum(1), torch.tensor([1.0, 2.0, 3.0, 4.0, 0.0]))
    assert (rewards0 != 0).sum().item() == 4


# --------------------------------------------------------------------------------------------------
# GAE


def naive_gae(rewards, values, mask, gamma, lam):
    """Per-row python reference: GAE over the response tokens of each row, value 0 after the last."""
    adv = torch.zeros_like(rewards)
    for b in range(rewards.shape[0]):
        idx = [t for t in range(rewards.shape[1]) if mask[b, t]]
        gae = 0.0
        for k in reversed(range(len(idx))):
            t = idx[k]
            next_value = values[b, idx[k + 1]].item() if k + 1 < len(idx) else 0.0
            delta = rewards[b, t].item() + gamma * next_value - values[b, t].item()
            gae = delta + gamma * lam * gae
            adv[b, t] = gae
    return adv


def test_gae_hand_computed():
    # gamma = lam = 0.5, so gamma * lam = 0.25.
    # Row 0 (3 tokens + padding holding 9s that must not leak):
    #   t=2: delta = 2 + 0.5*0 - 0.5 = 1.5                   A2 = 1.5
    #   t=1: delta = 0 + 0.5*0.5 - 1.0 = -0.75               A1 = -0.75 + 0.25*1.5 = -0.375
    #   t=0: delta = 1 + 0.5*1.0 - 0.5 = 1.0                 A0 = 1.0 + 0.25*(-0.375) = 0.90625
    #   returns = A + V = [1.40625, 0.625, 2.0]
    # Row 1 (4 tokens, V = 1 everywhere, reward 1 at the end):
    #   t=3: delta = 1 + 0 - 1 = 0                           A3 = 0
    #   t=2: delta = 0 + 0.5*1 - 1 = -0.5                    A2 = -0.5
    #   t=1: delta = -0.5                                    A1 = -0.5 + 0.25*(-0.5) = -0.625
    #   t=0: delta = -0.5                                    A0 = -0.5 + 0.25*(-0.625) = -0.65625
    #   returns = A + 1 = [0.34375, 0.375, 0.5, 1.0]
    rewards = torch.tensor([[1.0, 0.0, 2.0, 9.0], [0.0, 0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 1.0, 0.5, 9.0], [1.0, 1.0, 1.0, 1.0]])
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    adv, ret = compute_gae(rewards, values, mask, gamma=0.5, lam=0.5)
    expected_adv = torch.tensor([[0.90625, -0.375, 1.5, 0.0], [-0.65625, -0.625, -0.5, 0.0]])
    torch.testing.assert_close(adv, expected_adv)
    torch.testing.assert_close(ret, torch.tensor([[1.40625, 0.625, 2.0, 0.0], [0.34375, 0.375, 0.5, 1.0]]))


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    rewards = torch.tensor([[1.0, 2.0, 3.0]])
    values = torch.tensor([[0.5, 0.25, 4.0]])
    adv, ret = compute_gae(rewards, values, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(ret, torch.tensor([[6.0, 5.0, 3.0]]))
    torch.testing.assert_close(adv, torch.tensor([[5.5, 4.75, -1.0]]))


@pytest.mark.parametrize("seed", range(5))
def test_gae_matches_naive_per_row_reference_on_ragged_batches(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 6, 9
    lengths = torch.randint(0, T + 1, (B,), generator=g).tolist()
    lengths[0], lengths[1] = T, 1  # always a full row and a one-token row
    mask = ragged_mask(lengths, T)
    rewards = torch.randn(B, T, generator=g, dtype=torch.float64)
    values = torch.randn(B, T, generator=g, dtype=torch.float64)
    gamma, lam = (0.5 + 0.5 * torch.rand(2, generator=g, dtype=torch.float64)).tolist()
    adv, ret = compute_gae(rewards, values, mask, gamma, lam)
    expected = naive_gae(rewards, values, mask, gamma, lam)
    torch.testing.assert_close(adv, expected)
    torch.testing.assert_close(ret, torch.where(mask.bool(), expected + values, 0))


@pytest.mark.parametrize("seed", range(3))
def test_gae_ignores_anything_at_padding_positions(seed):
    g = torch.Generator().manual_seed(seed)
    B, T = 5, 8
    mask = ragged_mask(torch.randint(1, T, (B,), generator=g).tolist(), T)
    rewards, values = torch.randn(B, T, generator=g), torch.randn(B, T, generator=g)
    adv, ret = compute_gae(rewards, values, mask, gamma=0.9, lam=0.8)
    pad = ~mask.bool()
    inf, nan = torch.full((B, T), math.inf), torch.full((B, T), math.nan)
    noises = (100 * torch.randn(B, T, generator=g), inf, nan)
    for noise in noises:
        adv2, ret2 = compute_gae(
            torch.where(pad, noise, rewards), torch.where(pad, -noise, values), mask, gamma=0.9, lam=0.8
        )
        torch.testing.assert_close(adv2, adv)
        torch.testing.assert_close(ret2, ret)


def test_gae_left_padding_equals_right_padding():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(1, 3, generator=g), torch.randn(1, 3, generator=g)
    pad = torch.zeros(1, 2)
    right_mask = torch.tensor([[1, 1, 1, 0, 0]])
    right = compute_gae(torch.cat([rewards, pad], 1), torch.cat([values, pad], 1), right_mask, 0.9, 0.7)
    left_mask = torch.tensor([[0, 0, 1, 1, 1]])
    left = compute_gae(torch.cat([pad, rewards], 1), torch.cat([pad, values], 1), left_mask, 0.9, 0.7)
    torch.testing.assert_close(left[0][:, 2:], right[0][:, :3])
    torch.testing.assert_close(left[1][:, 2:], right[1][:, :3])


# --------------------------------------------------------------------------------------------------
# policy loss


def test_policy_loss_at_ratio_one_is_minus_mean_advantage_with_matching_gradient():
    g = torch.Generator().manual_seed(0)
    mask = ragged_mask([4, 2, 3], T=4)
    old = -torch.rand(3, 4, generator=g, dtype=torch.float64)
    logprobs = old.clone().requires_grad_(True)
    adv = torch.randn(3, 4, generator=g, dtype=torch.float64)
    loss, stats = policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    n = mask.sum()
    assert loss.item() == pytest.approx((-(adv * mask).sum() / n).item())
    assert stats["clipfrac"].item() == 0.0
    assert stats["approx_kl"].item() == pytest.approx(0.0, abs=1e-12)
    loss.backward()
    # d/dlogp of -A * exp(logp - old) at ratio 1 is -A, averaged over response tokens
    torch.testing.assert_close(logprobs.grad, torch.where(mask.bool(), -adv / n, 0))


def test_policy_loss_clips_exactly_outside_the_range_in_the_advantage_direction():
    eps = 0.2
    ratios = torch.tensor([0.7, 0.799, 0.801, 1.0, 1.199, 1.201, 1.5], dtype=torch.float64)
    # row 0: A = +1, row 1: A = -1; a padding column (ratio 3, huge A) that must not count
    ratio = torch.stack([ratios, ratios])
    ratio = torch.cat([ratio, torch.full((2, 1), 3.0, dtype=torch.float64)], 1)
    adv = torch.tensor([[1.0] * 7 + [1e9], [-1.0] * 7 + [-1e9]], dtype=torch.float64)
    mask = torch.ones(2, 8)
    mask[:, 7] = 0
    old = torch.full((2, 8), -1.0, dtype=torch.float64)
    logprobs = (old + ratio.log()).requires_grad_(True)
    loss, stats = policy_loss(logprobs, old, adv, mask, clip_range=eps)
    loss.backward()

    # A > 0: gradient zero only above 1 + eps; A < 0: only below 1 - eps.
    clipped = torch.tensor(
        [
            [False, False, False, False, False, True, True, False],
            [True, True, False, False, False, False, False, False],
        ]
    )
    n = 14
    unclipped_grad = -adv * ratio / n  # d/dlogp of -A * exp(logp - old)
    expected_grad = torch.where(clipped | ~mask.bool(), 0, unclipped_grad)
    torch.testing.assert_close(logprobs.grad, expected_grad)

    # loss: A = +1 -> -min(r, clip(r)); A = -1 -> max(r, clip(r))
    clip_r = ratios.clamp(1 - eps, 1 + eps)
    expected = (-torch.minimum(ratios, clip_r).sum() + torch.maximum(ratios, clip_r).sum()) / n
    assert loss.item() == pytest.approx(expected.item())
    assert stats["clipfrac"].item() == pytest.approx(4 / 14)
    approx_kl = ((ratios - 1) - ratios.log()).sum() * 2 / n
    assert stats["approx_kl"].item() == pytest.approx(approx_kl.item())


def test_policy_loss_is_not_poisoned_by_garbage_on_padding():
    mask = ragged_mask([2, 1], T=3)
    old = torch.tensor([[-1.0, -2.0, -math.inf], [-1.0, math.nan, 5.0]])
    logprobs = torch.tensor([[-0.9, -2.1, 80.0], [-1.1, math.inf, -math.inf]], requires_grad=True)
    adv = torch.tensor([[1.0, -1.0, math.nan], [0.5, math.inf, 1.0]])
    loss, stats = policy_loss(logprobs, old, adv, mask, clip_range=0.2)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(v) for v in stats.values())
    assert torch.isfinite(logprobs.grad).all()
    assert torch.all(logprobs.grad[~mask.bool()] == 0)


# --------------------------------------------------------------------------------------------------
# value loss


def test_value_loss_hand_example():
    # clip 0.2, old values 0:
    #   tok0 v=0.1  R=1: err 0.81, v_clip 0.1  -> 0.81 (equal, not clipped)
    #   tok1 v=0.5  R=1: err 0.25, v_clip 0.2  -> 0.64 (clipped error wins)
    #   tok2 v=0.5  R=0: err 0.25, v_clip 0.2  -> 0.04, max 0.25
    #   tok3 v=-0.5 R=0: err 0.25, v_clip -0.2 -> 0.04, max 0.25
    #   loss = 0.5 * (0.81 + 0.64 + 0.25 + 0.25) / 4 = 0.24375; vf_clipfrac = 1/4
    # Padding column (v=100) must not count.
    values = torch.tensor([[0.1, 0.5, 0.5, -0.5, 100.0]], dtype=torch.float64, requires_grad=True)
    old = torch.zeros(1, 5, dtype=torch.float64)
    returns = torch.tensor([[1.0, 1.0, 0.0, 0.0, -100.0]], dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 1, 0]])
    loss, stats = value_loss(values, old, returns, mask, clip_range_value=0.2)
    assert loss.item() == pytest.approx(0.24375)
    assert stats["vf_clipfrac"].item() == pytest.approx(0.25)
    loss.backward()
    # unclipped tokens: 0.5 * 2 * (v - R) / 4; the clipped token and padding get no gradient
    torch.testing.assert_close(
        values.grad, torch.tensor([[-0.225, 0.0, 0.125, -0.125, 0.0]], dtype=torch.float64)
    )

    unclipped, stats = value_loss(values, old, returns, mask, clip_range_value=None)
    assert unclipped.item() == pytest.approx(0.5 * (0.81 + 0.25 + 0.25 + 0.25) / 4)
    assert stats["vf_clipfrac"].item() == 0.0


# --------------------------------------------------------------------------------------------------
# from logits


def test_entropy_of_uniform_is_log_vocab_even_for_huge_logits():
    for V in (2, 7, 1000):
        for offset in (0.0, 1e4, -1e4):
            h = entropy_from_logits(torch.full((2, 3, V), offset))
            torch.testing.assert_close(h, torch.full((2, 3), math.log(V)))


def test_entropy_matches_categorical_and_handles_minus_inf_logits():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(2, 5, 11, generator=g)
    expected = torch.distributions.Categorical(logits=logits).entropy()
    torch.testing.assert_close(entropy_from_logits(logits, chunk_size=3), expected)

    masked = torch.zeros(1, 1, 4, requires_grad=True)
    x = torch.cat([masked[..., :3], torch.full((1, 1, 1), -math.inf)], -1)  # one token banned
    h = entropy_from_logits(x)
    assert h.item() == pytest.approx(math.log(3))
    h.sum().backward()
    assert torch.isfinite(masked.grad).all()


def test_logprobs_from_logits_matches_categorical_with_chunking():
    g = torch.Generator().manual_seed(0)
    logits = 5 * torch.randn(3, 4, 13, generator=g) + 1e3  # large offset: needs a stable logsumexp
    labels = torch.randint(0, 13, (3, 4), generator=g)
    expected = torch.distributions.Categorical(logits=logits.double()).log_prob(labels).float()
    for chunk in (1, 5, 512):
        torch.testing.assert_close(logprobs_from_logits(logits, labels, chunk_size=chunk), expected)


def test_logprobs_from_logits_gradient_is_correct():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 3, 6, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 6, (2, 3), generator=g)
    assert torch.autograd.gradcheck(lambda x: logprobs_from_logits(x, labels, chunk_size=4), (logits,))

    weights = torch.randn(2, 3, generator=g, dtype=torch.float64)
    (logprobs_from_logits(logits, labels, chunk_size=4) * weights).sum().backward()
    ours = logits.grad.clone()
    logits.grad = None
    ref = torch.log_softmax(logits, -1).gather(-1, labels[..., None]).squeeze(-1)
    (ref * weights).sum().backward()
    torch.testing.assert_close(ours, logits.grad)


def test_logprobs_from_bf16_logits_are_computed_in_float32():
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(2, 5, 50, generator=g) + 30).to(torch.bfloat16).requires_grad_(True)
    labels = torch.randint(0, 50, (2, 5), generator=g)
    out = logprobs_from_logits(logits, labels, chunk_size=3)
    assert out.dtype == torch.float32
    reference_input = logits.detach().float().requires_grad_(True)
    expected = torch.log_softmax(reference_input, -1).gather(-1, labels[..., None]).squeeze(-1)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-5)  # a bf16 logsumexp would be ~0.1 off
    out.sum().backward()
    expected.sum().backward()
    assert logits.grad.dtype == torch.bfloat16
    torch.testing.assert_close(logits.grad.float(), reference_input.grad, rtol=1e-2, atol=1e-2)


# --------------------------------------------------------------------------------------------------
# explained variance


def test_explained_variance():
    g = torch.Generator().manual_seed(0)
    mask = ragged_mask([5, 3], T=5)
    returns = torch.randn(2, 5, generator=g, dtype=torch.float64)
    values = fill_padding(returns, mask, 1e6)
    assert explained_variance(values, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(values + 3.0, returns, mask).item() == pytest.approx(1.0)  # offset-blind
    mean = returns[mask.bool()].mean()
    assert explained_variance(torch.full_like(returns, mean.item()), returns, mask).item() == pytest.approx(
        0.0, abs=1e-12
    )
    noisy = returns + torch.randn(2, 5, generator=g, dtype=torch.float64)
    assert explained_variance(noisy, returns, mask).item() < 1.0
    assert math.isnan(explained_variance(values, torch.ones(2, 5), mask).item())


# --------------------------------------------------------------------------------------------------
# KL controllers


def test_fixed_kl_controller_never_moves():
    ctl = FixedKLController(0.05)
    ctl.update(current_kl=100.0, n_steps=10_000)
    assert ctl.value == 0.05


def test_adaptive_kl_controller_moves_beta_toward_target():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.0, n_steps=1000)
    assert ctl.value == pytest.approx(0.1)  # on target: no change

    ctl.update(current_kl=9.0, n_steps=1000)  # error (9-6)/6 = 0.5, clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 1000 / 10_000))
    above = ctl.value

    ctl.update(current_kl=1.0, n_steps=1000)  # below target: beta falls, by at most 2% here
    assert ctl.value == pytest.approx(above * (1 - 0.2 * 0.1))

    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10_000)
    ctl.update(current_kl=6.6, n_steps=10_000)  # error 0.1 (inside the clip) over a whole horizon
    assert ctl.value == pytest.approx(0.11)


# --------------------------------------------------------------------------------------------------
# group (leave-one-out) advantages


def test_group_advantages_are_zero_when_a_question_s_samples_score_alike():
    from selfmotivated.ppo.core import group_advantages

    torch.manual_seed(0)
    for _ in range(20):
        n_groups, k = 5, 4
        per_group = torch.randn(n_groups)
        returns = per_group.repeat_interleave(k)  # every sample of a question scores the same
        groups = torch.arange(n_groups).repeat_interleave(k)
        perm = torch.randperm(len(returns))  # rows of one question need not be adjacent
        assert torch.allclose(group_advantages(returns[perm], groups[perm]), torch.zeros(n_groups * k), atol=1e-6)


def test_group_advantages_leave_one_out_by_hand():
    from selfmotivated.ppo.core import group_advantages

    returns = torch.tensor([1.0, 0.0, 0.0, 3.0, 5.0, 7.0])
    groups = torch.tensor([0, 0, 0, 1, 1, 2])
    # q0: 1 - (0+0)/2 = 1, 0 - (1+0)/2 = -0.5 (twice); q1: 3 - 5, 5 - 3; q2 alone: 0
    assert group_advantages(returns, groups).tolist() == [1.0, -0.5, -0.5, -2.0, 2.0, 0.0]
    # Shifting a whole question's returns (the reward model's offset between questions) changes nothing.
    shifted = returns + torch.tensor([10.0, 10.0, 10.0, -4.0, -4.0, 0.0])
    assert torch.allclose(group_advantages(shifted, groups), group_advantages(returns, groups))


def test_micro_batches_give_the_minibatch_token_mean():
    """policy/value losses with num_tokens: micro-batch losses add up to the token mean of the whole
    minibatch, whatever the split (a short micro-batch does not weigh as much as a long one)."""
    torch.manual_seed(1)
    B, T = 6, 7
    mask = (torch.rand(B, T) > 0.3).float()
    mask[:, 0] = 1
    logits = torch.randn(B, T, requires_grad=True)
    old = torch.randn(B, T)
    adv = torch.randn(B, T)
    whole, _ = policy_loss(logits, old, adv, mask, 0.2)
    n = float(mask.sum())
    parts = sum(policy_loss(logits[i : i + 2], old[i : i + 2], adv[i : i + 2], mask[i : i + 2], 0.2, n)[0]
                for i in range(0, B, 2))
    assert torch.allclose(parts, whole, atol=1e-6)
    v_whole, _ = value_loss(logits, old, adv, mask, 0.2)
    v_parts = sum(value_loss(logits[i : i + 3], old[i : i + 3], adv[i : i + 3], mask[i : i + 3], 0.2, n)[0]
                  for i in range(0, B, 3))
    assert torch.allclose(v_parts, v_whole, atol=1e-6)
