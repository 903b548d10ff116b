"""Text generation behind one interface, with interchangeable backends.

Every stage (evaluation, rationale sampling, best-of-N, PPO rollouts) calls `Generator.generate`.
Backends: `engine` (ours, the default: shared-prefix KV reuse, continuous batching) and `hf`
(plain `model.generate`, the reference). A GPU backend such as vLLM can be added by implementing
the same `generate` method; callers do not change.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, Sequence


@dataclass
class SamplingParams:
    """How to decode. temperature == 0 means greedy."""

    max_new_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = no top-k filter
    n: int = 1  # samples per prompt
    stop: tuple[str, ...] = ()  # generation of a row ends after the first stop string (kept in text)
    seed: int | None = None  # same seed and inputs -> same outputs
    return_logprobs: bool = False  # per-token log-probs of the sampled tokens (under temperature 1 logits)

    def __post_init__(self):
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        if self.n < 1:
            raise ValueError(f"n must be >= 1, got {self.n}")
        self.stop = tuple(self.stop)


@dataclass
class Completion:
    """One generated continuation of one prompt."""

    text: str  # decoded new text (truncated after a stop string, which is kept)
    token_ids: list[int]  # new tokens, matching `text` (EOS included when it ended the row)
    finish_reason: str  # "eos", "stop" or "length"
    logprobs: list[float] | None = None  # one per token in token_ids, when requested
    prompt_tokens: int = 0
    extra: dict = field(default_factory=dict)


class Generator(Protocol):
    """A text generator bound to one model and tokenizer (the model's weights may change between calls)."""

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = False
    ) -> list[list[Completion]]:
        """Return, for each prompt, `params.n` completions. Prompts are final text (chat template
        already applied); the tokenizer adds no special tokens beyond what the text holds."""
        ...
