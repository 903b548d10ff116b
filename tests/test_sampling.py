"""The sampler's fast paths (nucleus among the top candidates, block-wise inverse CDF) draw exactly the token
the plain rule draws: HF's warpers over the whole vocabulary, then the first token whose cumulative probability
in vocabulary order exceeds u."""

import pytest
import torch

from selfmotivated.generation import SamplingParams
from selfmotivated.generation.sampling import NUCLEUS_CANDIDATES, _sample, process_logits, sample_next


def plain_rule(logits: torch.Tensor, params: SamplingParams, u: torch.Tensor) -> torch.Tensor:
    probs = process_logits(logits.float(), params.temperature, params.top_k, params.top_p).softmax(-1).double()
    cdf = probs.cumsum(-1)
    tokens = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]
    return torch.minimum(tokens, torch.tensor(probs.shape[-1] - 1))


def lm_like_logits(rows: int, vocab: int, seed: int) -> torch.Tensor:
    """Peaked rows (a few likely tokens over a long tail, as a language model's), with some flat rows whose
    nucleus is wider than the candidates (the full-sort path)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, vocab, generator=g) * 2
    likely = torch.randint(0, vocab, (rows, 40), generator=g)
    logits.scatter_add_(1, likely, torch.randn(rows, 40, generator=g) * 3 + 9)
    logits[-3:] = torch.randn(3, vocab, generator=g) * 0.05
    return logits


@pytest.mark.parametrize("vocab", [300, 5000])  # one block, and several blocks with a ragged last one
@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 0, 1.0), (0.7, 0, 1.0), (0.8, 0, 0.95),
                                                     (1.3, 20, 0.9), (0.5, 0, 0.3), (1.0, 7, 1.0)])
def test_fast_paths_draw_the_plain_rules_token(vocab, temperature, top_k, top_p):
    logits = lm_like_logits(24, vocab, seed=vocab)
    params = SamplingParams(temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=1)
    if top_p < 1 and vocab > 10 * NUCLEUS_CANDIDATES:
        probs = (logits / temperature).softmax(-1)
        head = probs.topk(NUCLEUS_CANDIDATES, dim=-1).values.sum(-1)
        assert (head >= top_p).any() and (head < top_p).any()  # both the candidate and the full-sort paths run
    for seed in range(30):
        u = torch.rand(24, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
        assert torch.equal(_sample(logits, params, u), plain_rule(logits, params, u)), seed
    # The ends of [0, 1): never a filtered token (at the top end the last token with mass, up to rounding
    # of the totals, which the paths sum in different orders).
    kept = torch.isfinite(process_logits(logits, temperature, top_k, top_p))
    zero = torch.zeros(24, dtype=torch.float64)
    assert torch.equal(_sample(logits, params, zero), plain_rule(logits, params, zero))
    top = _sample(logits, params, torch.full((24,), 1 - 2**-53, dtype=torch.float64))
    assert kept.gather(1, top[:, None]).all()


def test_zero_weight_tokens_are_never_drawn_across_blocks():
    """Whole blocks of zero probability (a top-k of 3 in 5000 tokens) are skipped, whatever u is."""
    logits = torch.full((1, 5000), -30.0)
    logits[0, [10, 2500, 4999]] = torch.tensor([1.0, 2.0, 3.0])
    params = SamplingParams(temperature=1.0, top_k=3, max_new_tokens=1)
    drawn = {_sample(logits, params, torch.tensor([u], dtype=torch.float64)).item()
             for u in torch.linspace(0, 1 - 1e-12, 200).tolist()}
    assert drawn == {10, 2500, 4999}


def test_sample_next_uses_each_rows_generator():
    logits = lm_like_logits(4, 3000, seed=1)
    params = SamplingParams(temperature=0.9, top_p=0.95, max_new_tokens=1, return_logprobs=True)
    first = sample_next(logits, params, [torch.Generator().manual_seed(i) for i in range(4)])
    # Row 2 alone with its own generator draws what it drew in the batch.
    alone = sample_next(logits[2:3], params, [torch.Generator().manual_seed(2)])
    assert first[0][2] == alone[0][0]
    assert torch.allclose(first[1][2], alone[1][0]) and torch.allclose(first[2][2], alone[2][0])


def test_rows_with_no_token_to_draw_are_an_error_not_a_token():
    logits = lm_like_logits(3, 5000, seed=3)
    logits[1] = float("nan")
    params = SamplingParams(temperature=1.0, max_new_tokens=1)
    with pytest.raises(ValueError, match=r"row\(s\) \[1\].*NaN or all -inf"):
        _sample(logits, params, torch.rand(3, dtype=torch.float64))
