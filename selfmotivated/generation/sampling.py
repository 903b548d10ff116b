"""Decoding rules shared by every backend: logits processing, sampling, EOS and stop strings.

The rules follow Hugging Face `generate` exactly so that backends agree:
- greedy (temperature 0) takes the argmax of the raw logits;
- sampling applies temperature, then top-k, then top-p (HF's warper order), then draws from the
  softmax of what is left;
- a returned log-probability is `log_softmax(logits / temperature)[token]` (temperature 1 when greedy)
  with no top-k/top-p filter, and the entropy of that same distribution comes with it. PPO takes
  log-probs and KL of the policy at its sampling temperature, not of the truncated distribution the
  token was drawn from, so the filters are deliberately left out (a filtered-out token could not have
  been drawn, so its value never matters).
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Sequence

import torch
import torch.nn.functional as F

from selfmotivated.generation import Completion, SamplingParams


def eos_token_ids(model, tokenizer) -> set[int]:
    """Every token id that ends a row: the generation config's EOS ids and the tokenizer's EOS."""
    ids: set[int] = set()
    config = getattr(model, "generation_config", None)
    eos = getattr(config, "eos_token_id", None) if config is not None else None
    if isinstance(eos, int):
        ids.add(eos)
    elif eos is not None:
        ids.update(int(i) for i in eos)
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@contextmanager
def eval_mode(model):
    """Run with every module in eval mode (no dropout, LoRA dropout included), then restore each
    module's own mode: a PPO policy is usually in train mode between rollouts."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Apply temperature, then top-k, then top-p to (B, V) float logits; removed entries become -inf.

    Same semantics as HF's TemperatureLogitsWarper, TopKLogitsWarper and TopPLogitsWarper: top-k keeps
    every token tied with the k-th largest value; top-p removes the low tail whose total probability is
    at most 1 - top_p and always keeps the most likely token."""
    scores = logits / temperature if temperature != 1.0 else logits
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (B, 1)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, sorted_idx = torch.sort(scores, dim=-1, descending=False)  # ascending: tail first
        cumulative = sorted_scores.softmax(dim=-1).cumsum(dim=-1)  # (B, V)
        remove_sorted = cumulative <= (1 - top_p)
        remove_sorted[..., -1:] = False  # the most likely token always stays
        remove = remove_sorted.scatter(-1, sorted_idx, remove_sorted)
        scores = scores.masked_fill(remove, float("-inf"))
    return scores


def row_seed(seed: int, prompt_index: int, sample_index: int) -> int:
    """A well-mixed 63-bit seed for one row (splitmix64 of the triple), so that each row's random stream
    depends only on the call's seed and the row's identity, not on batching or scheduling."""
    x = seed * 0x9E3779B97F4A7C15 + prompt_index * 0xBF58476D1CE4E5B9 + sample_index * 0x94D049BB133111EB
    x &= (1 << 64) - 1
    for mult in (0xBF58476D1CE4E5B9, 0x94D049BB133111EB):
        x ^= x >> 31
        x = (x * mult) & ((1 << 64) - 1)
    x ^= x >> 29
    return x & ((1 << 63) - 1)


def call_seed(params: SamplingParams) -> int:
    """The call's seed; without one, draw it from torch's global RNG (so `torch.manual_seed` still rules)."""
    if params.seed is not None:
        return int(params.seed)
    return int(torch.randint(0, 2**62, (1,)).item())


# Nucleus sampling looks for the nucleus among this many most likely tokens first: a top-k of 256 reads the
# row once, where the full sort HF's rule is written with took ~70% of a 64-row decoding step on this CPU.
# A row whose 256 best tokens hold less than top_p of the mass (a flat distribution) takes the full sort.
NUCLEUS_CANDIDATES = 256
# Inverse-CDF sampling finds a row's block of this many tokens from the blocks' sums, then cumulates only
# inside it: two short passes instead of a float64 cumulative sum over the whole vocabulary.
CDF_BLOCK = 1024


def sample_next(
    logits: torch.Tensor, params: SamplingParams, generators: Sequence[torch.Generator] | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Pick the next token of each row from (B, V) logits.

    Returns (tokens (B,) long, logprobs (B,) float or None, entropies (B,) float or None). With sampling, row
    b draws with `generators[b]`, its own stream. With return_logprobs, the entropy of the same tempered
    distribution comes along (PPO's entropy signal without another forward pass; B x V operations)."""
    logits = logits.float()
    if params.temperature == 0:
        tokens = logits.argmax(dim=-1)  # (B,)
    else:
        assert generators is not None and len(generators) == logits.shape[0]
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64, device=logits.device) for g in generators])
        tokens = _sample(logits, params, u)
    logprobs = entropies = None
    if params.return_logprobs:  # of the tempered distribution the token was drawn from (PPO's old log-probs)
        scale = params.temperature if params.temperature > 0 else 1.0
        log_p = torch.log_softmax(logits / scale, dim=-1)  # (B, V)
        logprobs = log_p.gather(-1, tokens[:, None])[:, 0]  # (B,)
        entropies = -(log_p.exp() * log_p).nan_to_num().sum(-1)  # (B,); 0 * -inf (a -inf logit) counts 0
    return tokens, logprobs, entropies


def _sample(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    """Tokens (B,) drawn by `process_logits`' rules with one uniform per row, u (B,) float64 in [0, 1).

    Each row takes the token where u * (total mass) falls in the cumulative distribution in vocabulary order,
    whichever path computes it, so a row draws the same token from the same u on every path (up to float
    rounding in the last place). Exactly tied scores at the nucleus boundary (rare in float32, common in bf16
    logits) may keep a different one of the tied tokens than the full sort does, as two sorts may: the
    distribution is the same."""
    top_k, top_p = params.top_k, params.top_p
    scores = logits / params.temperature if params.temperature != 1.0 else logits
    if top_k > 0 and top_k < scores.shape[-1]:
        kth = torch.topk(scores, top_k, dim=-1).values[..., -1:]  # (B, 1); ties with the k-th stay (HF)
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p >= 1.0:
        return _inverse_cdf_sample(scores.softmax(dim=-1), u)
    tokens = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
    head = min(NUCLEUS_CANDIDATES, scores.shape[-1])
    values, index = torch.topk(scores, head, dim=-1)  # (B, head), most likely first
    probs = (values - torch.logsumexp(scores, dim=-1, keepdim=True)).exp()
    # HF keeps a token when the mass at or below it (ascending) exceeds 1 - top_p, i.e. when the mass strictly
    # above it is below top_p. The candidates hold the nucleus when their mass reaches top_p.
    above = probs.cumsum(dim=-1) - probs
    covered = probs.sum(dim=-1) >= top_p
    if covered.any():
        rows = covered.nonzero()[:, 0]
        kept = torch.where(above[rows] < top_p, probs[rows], 0.0)
        kept[:, 0] = probs[rows, 0]  # the most likely token always stays
        order = index[rows].argsort(dim=-1)  # candidates in vocabulary order
        pick = _inverse_cdf_sample(kept.gather(-1, order), u[rows])
        tokens[rows] = index[rows].gather(-1, order).gather(-1, pick[:, None])[:, 0]
    if not covered.all():
        rows = (~covered).nonzero()[:, 0]
        tokens[rows] = _inverse_cdf_sample(process_logits(scores[rows], 1.0, 0, top_p).softmax(dim=-1), u[rows])
    return tokens


def _inverse_cdf_sample(probs: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """One draw per row of (B, V) non-negative weights with the row's uniform u (B,): the first token whose
    cumulative weight exceeds u * (row total). Exact like `torch.multinomial`, but one uniform per row instead
    of V exponentials (multinomial's cost, ~1.5 ms per row at V=49k on this CPU). A zero-weight token is
    never drawn: its cumulative value equals its predecessor's, which is <= u * total.

    Long rows go in two steps (see CDF_BLOCK): the block where the target falls, from float64 sums of the
    blocks, then the token inside that block."""
    B, V = probs.shape
    total = probs.sum(dim=-1)
    if not bool(torch.isfinite(total).all() and (total > 0).all()):
        bad = (~(torch.isfinite(total) & (total > 0))).nonzero()[:, 0].tolist()
        raise ValueError(f"cannot sample row(s) {bad[:8]}: their logits are NaN or all -inf (a model in half "
                         "precision that overflowed, or a filter that left no token)")
    if V <= 2 * CDF_BLOCK:
        cdf = probs.double().cumsum(dim=-1)
        token = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
        return torch.minimum(token, _last_positive(probs))  # u * total can round up to the total
    rows = torch.arange(B, device=probs.device)
    n_blocks = -(-V // CDF_BLOCK)
    padded = F.pad(probs, (0, n_blocks * CDF_BLOCK - V)).view(B, n_blocks, CDF_BLOCK)
    sums = padded.sum(dim=-1, dtype=torch.float64)  # (B, n_blocks)
    cumulative = sums.cumsum(dim=-1)
    target = u * cumulative[:, -1]
    block = torch.searchsorted(cumulative, target[:, None], right=True)[:, 0]
    block = torch.minimum(block, _last_positive(sums))  # u * total rounding up to the total
    offset = torch.where(block > 0, cumulative[rows, (block - 1).clamp(min=0)], 0.0)
    within = padded[rows, block]  # (B, CDF_BLOCK)
    cdf = within.double().cumsum(dim=-1)
    token = torch.searchsorted(cdf, (target - offset)[:, None], right=True)[:, 0]
    token = torch.minimum(token, _last_positive(within))  # rounding past the block's last weight
    return block * CDF_BLOCK + token


def _last_positive(weights: torch.Tensor) -> torch.Tensor:
    """Index (B,) of each row's last positive entry (rows have one: `_inverse_cdf_sample` checks)."""
    n = weights.shape[-1]
    return n - 1 - (weights.flip(-1) > 0).int().argmax(dim=-1)


def find_stop(text: str, stop: Sequence[str]) -> int:
    """End index (exclusive) of the earliest-ending stop string in `text`, or -1 when none occurs."""
    ends = [i + len(s) for s in stop if s and (i := text.find(s)) >= 0]
    return min(ends) if ends else -1


def finish_completion(
    tokenizer,
    token_ids: list[int],
    logprobs: list[float] | None,
    params: SamplingParams,
    eos_ids: set[int],
    prompt_tokens: int,
    entropies: list[float] | None = None,
) -> Completion:
    """Turn raw new tokens into a Completion: cut after the first EOS (kept) or after the first stop
    string (kept in the text; the tokens are cut to the shortest prefix whose text covers it). Per-token
    entropies, when given, go to `extra["entropies"]`, cut like the log-probs."""
    finish = "length"
    for i, token in enumerate(token_ids):
        if token in eos_ids:
            token_ids, finish = token_ids[: i + 1], "eos"
            break
    text = tokenizer.decode(token_ids, skip_special_tokens=True)
    end = find_stop(text, params.stop) if params.stop else -1
    if end >= 0:
        # The shortest token prefix whose text reaches `end`: usually all tokens, since generation stops
        # at the token that completes the stop string, but not when the hf backend ran past it.
        keep = len(token_ids)
        for k in range(1, len(token_ids) + 1):
            if len(tokenizer.decode(token_ids[:k], skip_special_tokens=True)) >= end:
                keep = k
                break
        token_ids, text, finish = token_ids[:keep], text[:end], "stop"
    if logprobs is not None:
        logprobs = [float(x) for x in logprobs[: len(token_ids)]]
    extra = {"entropies": [float(x) for x in entropies[: len(token_ids)]]} if entropies is not None else {}
    return Completion(text=text, token_ids=list(token_ids), finish_reason=finish, logprobs=logprobs,
                      prompt_tokens=prompt_tokens, extra=extra)
