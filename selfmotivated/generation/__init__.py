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
    return_logprobs: bool = False  # per-token log-probs of the sampled tokens under logits / temperature (1 when greedy)

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


BACKENDS: tuple[str, ...] = ("engine", "hf", "hf-single")


@dataclass
class EngineConfig:
    """How a generator batches work and bounds memory (fields of the `engine` backend; the `hf`
    backend reads `max_seqs` as its static batch size)."""

    max_seqs: int = field(default=64, metadata={"help": "Sequences decoded at once (engine slots; the hf "
                                                        "backend's batch size). Decoding on CPU is bound by "
                                                        "reading the weights, so more rows per step are "
                                                        "nearly free: 64 gives ~1.7x the tokens/s of 16."})
    max_tokens: int = field(default=32768, metadata={"help": "Most tokens whose keys/values are held at once: "
                                                             "the shared prefix plus, per slot, the longest "
                                                             "prompt suffix and max_new_tokens. Bounds KV memory "
                                                             "(about 46 KB per token for SmolLM2-135M in fp32)."})
    prefix_reuse: bool = field(default=True, metadata={"help": "Encode the prompts' longest common token "
                                                               "prefix once and share its keys/values."})
    min_prefix_tokens: int = field(default=8, metadata={"help": "Shorter common prefixes are not shared."})
    prefill_tokens: int = field(default=4096, metadata={"help": "Most prompt tokens encoded in one forward "
                                                                "pass; bounds activation memory."})
    pack_weights: bool = field(default=True, metadata={"help": "On CPU in float32, run every linear layer "
                                                               "from a oneDNN-packed copy of its weight made "
                                                               "once per generate call (~1.3x faster matmuls; "
                                                               "holds a second copy of the weights during the "
                                                               "call)."})

    def __post_init__(self):
        for name in ("max_seqs", "max_tokens", "prefill_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def make_generator(model, tokenizer, backend: str = "engine", **options) -> Generator:
    """The generator every stage uses. `backend`: "engine" (default), "hf" (batched `model.generate`,
    the reference) or "hf-single" (one prompt at a time). `options` are `EngineConfig` fields;
    `max_batch_size` is accepted as another name for `max_seqs`."""
    if "max_batch_size" in options:
        options["max_seqs"] = options.pop("max_batch_size")
    config = EngineConfig(**options)
    if backend == "engine":
        from selfmotivated.generation.engine import EngineGenerator

        return EngineGenerator(model, tokenizer, config)
    if backend == "hf":
        from selfmotivated.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, batch_size=config.max_seqs)
    if backend == "hf-single":
        from selfmotivated.generation.hf import HFGenerator

        return HFGenerator(model, tokenizer, batch_size=1)
    raise ValueError(f"unknown generation backend {backend!r}; choose from {', '.join(BACKENDS)}")
