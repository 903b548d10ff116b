"""The `engine` backend: shared-prefix KV reuse and continuous batching over a live HF model.

How one `generate` call runs:
1. Tokenise the prompts; their longest common token prefix (few-shot exemplars, system prompt) is
   encoded once and its keys/values (KV) are shared, read-only, by every row.
2. Rows (prompt, sample) are queued longest prompt first, so rows of similar length run together.
3. A fixed set of slots holds the rows in flight, each with its own KV cache for its prompt suffix
   and new tokens. Whenever a slot is free, the next rows are prefilled (a prompt's suffix is
   encoded once for its n samples) and get their first token; otherwise every active row decodes
   one token. A finished row frees its slot at once, so no row waits on the longest one.

The model is run through its own submodules (embeddings, norms, q/k/v/o projections, MLPs, head),
never through copies of its weights: an in-place optimizer step or a PEFT LoRA adapter (whose
wrapped projections add the adapter when called) takes effect on the next call. Only the attention
arithmetic, the rotary application and the KV cache are ours. Supported: the Llama family (Llama,
SmolLM2, Mistral, Qwen2). Any other model is handed to the `hf` backend with one warning.

Attention of a decoding row = softmax over [shared prefix keys ; its own keys]. The prefix part is
one batched matmul for all rows (queries of every row against the same prefix keys), so the prefix
KV is read once per step, not once per row. Prompt suffixes are prefilled packed, without padding.

Memory: the slot caches are allocated once per call, (layers, slots, kv_heads, cap, head_dim) with
cap = longest suffix + max_new_tokens - 1; the number of slots is `max_seqs`, lowered so that
prefix + slots * (cap + 1) <= `max_tokens`. A prompt that cannot fit even alone is a ValueError.

Sampling: each row draws from its own generator seeded by (call seed, prompt index, sample index), so
a row's samples do not depend on the batch it happened to run in. Decoding rules: `sampling.py`.

Weights on CPU: at the start of a call every plain float32 `nn.Linear` the engine reaches (q/k/v/o, MLP,
LM head, and the base layers inside LoRA wrappers) computes from a oneDNN-packed copy of its weight until
the call ends (`EngineConfig.pack_weights`; `selfmotivated/packed.py` says why and what it costs): ~1.3x
faster decoder matmuls and ~1.7x for the LM head at a decoding step's few rows. Outputs match `F.linear` to
float rounding. The next call packs again, so optimizer steps between calls still take effect.

Rotary cos/sin come from the model's own rotary module for all positions of the call at once, which
is exact for static rope scalings (default, linear, llama3, yarn); a "dynamic" NTK scaling would be
applied as for the call's longest sequence from the first token on.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Sequence

import torch
import torch.nn.functional as F

from selfmotivated.generation import Completion, EngineConfig, SamplingParams
from selfmotivated.generation.hf import HFGenerator, _progress_bar
from selfmotivated.packed import packed_linears
from selfmotivated.generation.sampling import (
    call_seed,
    eos_token_ids,
    eval_mode,
    find_stop,
    finish_completion,
    row_seed,
    sample_next,
)

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")


def _base_model(model):
    """The HF causal LM inside a PEFT wrapper (LoRA layers stay in place inside it), or the model itself."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def unsupported_reason(model) -> str | None:
    """Why the engine cannot run this model (None when it can)."""
    base = _base_model(model)
    config = getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {', '.join(SUPPORTED_MODEL_TYPES)}"
    body = getattr(base, "model", None)
    needed = ("embed_tokens", "layers", "norm", "rotary_emb")
    if body is None or not all(hasattr(body, name) for name in needed) or not hasattr(base, "lm_head"):
        return "the model does not have the Llama module layout (model.{embed_tokens,layers,norm}, lm_head)"
    for layer in body.layers:
        attn = getattr(layer, "self_attn", None)
        if attn is None or not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
            return "a decoder layer lacks self_attn.{q,k,v,o}_proj"
        if hasattr(attn, "q_norm") or hasattr(attn, "k_norm"):
            return "attention with q/k norms is not supported"
    return None


def sliding_window(model) -> int | None:
    """The attention window of Mistral / Qwen2 models that use one (None: full attention)."""
    config = _base_model(model).config
    if config.model_type == "mistral" or "sliding_attention" in (getattr(config, "layer_types", None) or ()):
        return getattr(config, "sliding_window", None)
    return None


@dataclass
class _Row:
    """One sequence being generated: sample `sample` of prompt `prompt`."""

    prompt: int
    sample: int
    slot: int = -1
    length: int = 0  # tokens of this row (suffix + generated) whose keys/values are in its slot
    tokens: list[int] = field(default_factory=list)  # generated tokens
    logprobs: list[float] = field(default_factory=list)
    entropies: list[float] = field(default_factory=list)
    generator: torch.Generator | None = None
    done: bool = False


class EngineGenerator:
    """Generator backed by our engine (see the module docstring). Falls back to `hf` for other models."""

    def __init__(self, model, tokenizer, config: EngineConfig | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.config = config or EngineConfig()
        self.hf = HFGenerator(model, tokenizer, batch_size=self.config.max_seqs)
        self.fallback_reason = unsupported_reason(model)
        if self.fallback_reason:
            warnings.warn(f"generation engine: {self.fallback_reason}; using the hf backend instead",
                          stacklevel=2)
        self._warned_window = False

    # ------------------------------------------------------------------------------------------
    # The public call: tokenise, schedule, collect.

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = False
    ) -> list[list[Completion]]:
        if self.fallback_reason:
            return self.hf.generate(prompts, params, progress)
        if not prompts:
            return []
        tokenizer, config = self.tokenizer, self.config
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        if min(len(ids) for ids in encoded) == 0:
            raise ValueError("cannot generate from an empty prompt")
        longest = max(range(len(prompts)), key=lambda i: len(encoded[i]))
        needed = len(encoded[longest]) + params.max_new_tokens
        if needed > config.max_tokens:
            raise ValueError(
                f"prompt {longest} has {len(encoded[longest])} tokens; with max_new_tokens="
                f"{params.max_new_tokens} it needs {needed} tokens of KV cache, more than "
                f"max_tokens={config.max_tokens}. Raise max_tokens or shorten the prompt."
            )
        window = sliding_window(self.model)
        if window is not None and needed > window:
            if not self._warned_window:
                warnings.warn(f"generation engine: sequences of {needed} tokens exceed the sliding window "
                              f"({window}); using the hf backend for such calls", stacklevel=2)
                self._warned_window = True
            return self.hf.generate(prompts, params, progress)

        with eval_mode(self.model), torch.inference_mode(), self.packed_weights():
            return _Run(self, encoded, params, progress).run()

    def packed_weights(self):
        """The context of a call's packed weights (see the module docstring); a no-op where packing does not apply."""
        if not self.config.pack_weights:
            return contextlib.nullcontext()
        base = _base_model(self.model)
        return packed_linears([*base.model.layers.modules(), base.lm_head])

    def shared_prefix_length(self, encoded: list[list[int]]) -> int:
        """Tokens shared by every prompt, kept below each prompt's length (each row needs >= 1 own token)."""
        if not self.config.prefix_reuse:
            return 0
        common = len(os.path.commonprefix(encoded))
        common = min(common, min(len(ids) for ids in encoded) - 1)
        return common if common >= self.config.min_prefix_tokens else 0


class _Run:
    """The state of one `generate` call: the shared prefix KV, the slot caches and the row queue."""

    def __init__(self, engine: EngineGenerator, encoded: list[list[int]], params: SamplingParams, progress):
        self.engine, self.encoded, self.params = engine, encoded, params
        self.tokenizer = engine.tokenizer
        self.eos_ids = eos_token_ids(engine.model, engine.tokenizer)
        self.seed = call_seed(params) if params.temperature > 0 else 0
        self.bar = _progress_bar(len(encoded), progress)

        base = _base_model(engine.model)
        body = base.model
        self.embed, self.layers, self.norm, self.lm_head = body.embed_tokens, body.layers, body.norm, base.lm_head
        attn = self.layers[0].self_attn
        self.head_dim = attn.head_dim
        self.n_kv = base.config.num_key_value_heads
        self.n_heads = base.config.num_attention_heads
        self.group = self.n_heads // self.n_kv  # query heads per kv head (GQA)
        self.scaling = attn.scaling
        weight = self.embed.weight
        self.device, self.dtype = weight.device, weight.dtype

        # Shared prefix and per-prompt suffixes.
        self.P = engine.shared_prefix_length(encoded)
        self.suffixes = [ids[self.P :] for ids in encoded]
        max_new = params.max_new_tokens
        # A row writes its suffix and all new tokens but the last into its slot.
        self.cap = max(len(s) for s in self.suffixes) + max_new - 1
        n_rows = len(encoded) * params.n
        by_kv_budget = (engine.config.max_tokens - self.P) // (self.cap + 1)
        self.n_slots = max(1, min(engine.config.max_seqs, n_rows, by_kv_budget))

        # cos/sin for every position this call can reach, from the model's own rotary module (so rope
        # scaling variants are honoured). (N, D)
        positions = torch.arange(self.P + self.cap + 1, device=self.device)[None]
        cos, sin = body.rotary_emb(torch.empty(0, device=self.device, dtype=self.dtype), positions)
        # HF rotates by x * cos + cat(-x2, x1) * sin; we fold the sign into sin once:
        # x * cos + cat(x2, x1) * cat(-sin1, sin2), the same numbers (a sign flip is exact).
        half = cos.shape[-1] // 2
        self.cos, self.sin = cos[0], torch.cat([-sin[0, :, :half], sin[0, :, half:]], dim=-1)

        n_layers = len(self.layers)
        # Slot caches, zero-filled: masked positions must hold finite values (0 * NaN would poison them).
        shape = (n_layers, self.n_slots, self.n_kv, self.cap, self.head_dim)  # (L, S, KV, cap, D)
        self.cache_k = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.cache_v = torch.zeros(shape, device=self.device, dtype=self.dtype)
        self.prefix_k: list[torch.Tensor] = []  # per layer (KV, P, D)
        self.prefix_kt: list[torch.Tensor] = []  # per layer (KV, D, P), contiguous for the decode matmul
        self.prefix_v: list[torch.Tensor] = []

        # Queue: longest suffix first; a prompt's samples consecutive so its suffix is encoded once.
        order = sorted(range(len(encoded)), key=lambda i: -len(self.suffixes[i]))
        self.queue = deque(_Row(prompt=i, sample=s) for i in order for s in range(params.n))
        self.active: list[_Row] = []  # active[j].slot == j
        self.stash: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # prompt -> k, v, logits
        self.results: list[list[Completion | None]] = [[None] * params.n for _ in encoded]
        self.samples_done = [0] * len(encoded)

    def run(self) -> list[list[Completion]]:
        try:
            if self.P > 0:
                self.encode_prefix(self.encoded[0][: self.P])
            while self.queue or self.active:
                if self.queue and len(self.active) < self.n_slots:
                    self.admit()
                else:
                    self.decode_step()
                self.retire_finished()
        finally:
            if self.bar is not None:
                self.bar.close()
        return self.results  # type: ignore[return-value]

    # ------------------------------------------------------------------------------------------
    # Scheduling.

    def admit(self):
        """Move rows from the queue into free slots: encode their suffixes and sample their first token."""
        free = self.n_slots - len(self.active)
        rows: list[_Row] = []
        to_encode: list[int] = []  # prompts whose suffix this admission encodes
        packed = 0  # their tokens, packed into one forward pass
        while self.queue and len(rows) < free:
            row = self.queue[0]
            if row.prompt not in self.stash and row.prompt not in to_encode:
                n = len(self.suffixes[row.prompt])
                if to_encode and packed + n > self.engine.config.prefill_tokens:
                    break  # this forward pass is full; the next admission takes the rest
                to_encode.append(row.prompt)
                packed += n
            rows.append(self.queue.popleft())

        first_slot = len(self.active)
        for j, row in enumerate(rows):
            row.slot, row.length = first_slot + j, len(self.suffixes[row.prompt])
            if self.params.temperature > 0:
                row.generator = torch.Generator(self.device).manual_seed(row_seed(self.seed, row.prompt, row.sample))
        self.active.extend(rows)

        # Encode each new prompt suffix once, into the slot of its first row here.
        slot_of = {}
        for row in rows:
            slot_of.setdefault(row.prompt, row.slot)
        logits_of: dict[int, torch.Tensor] = {}
        if to_encode:
            logits = self.encode_suffixes([self.suffixes[p] for p in to_encode], [slot_of[p] for p in to_encode])
            logits_of = {p: logits[b] for b, p in enumerate(to_encode)}
        for p, (k, v, logits) in self.stash.items():
            logits_of.setdefault(p, logits)
        # Other rows of the same prompt copy its keys/values (from the slot just filled or the stash).
        for row in rows:
            n = row.length
            if row.prompt in self.stash:
                k, v, _ = self.stash[row.prompt]
                self.cache_k[:, row.slot, :, :n] = k
                self.cache_v[:, row.slot, :, :n] = v
            elif slot_of[row.prompt] != row.slot:
                src = slot_of[row.prompt]
                self.cache_k[:, row.slot, :, :n] = self.cache_k[:, src, :, :n]
                self.cache_v[:, row.slot, :, :n] = self.cache_v[:, src, :, :n]
        # Samples of these prompts still queued will need the encoded suffix later.
        waiting = {row.prompt for row in self.queue}
        for p in list(self.stash):
            if p not in waiting:
                del self.stash[p]
        for p in slot_of:
            if p in waiting and p not in self.stash:
                n, src = len(self.suffixes[p]), slot_of[p]
                self.stash[p] = (self.cache_k[:, src, :, :n].clone(), self.cache_v[:, src, :, :n].clone(),
                                 logits_of[p])

        logits = torch.stack([logits_of[row.prompt] for row in rows])  # (B, V)
        self.push_tokens(rows, logits)

    def decode_step(self):
        """Every active row feeds its last token and gets the next one."""
        rows = self.active
        tokens = torch.tensor([[row.tokens[-1]] for row in rows], device=self.device)  # (A, 1)
        lengths = torch.tensor([row.length for row in rows], device=self.device)  # (A,) write position
        span = max(row.length for row in rows) + 1  # own-cache positions any row can see
        logits = self.decode_forward(tokens, lengths, span)  # (A, V)
        for row in rows:
            row.length += 1
        self.push_tokens(rows, logits)

    def push_tokens(self, rows: list[_Row], logits: torch.Tensor):
        """Sample one token per row from (B, V) logits and mark rows that are finished."""
        params = self.params
        generators = [row.generator for row in rows] if params.temperature > 0 else None
        tokens, logprobs, entropies = sample_next(logits, params, generators)
        tokens = tokens.tolist()
        logprobs = logprobs.tolist() if logprobs is not None else None
        entropies = entropies.tolist() if entropies is not None else None
        for b, row in enumerate(rows):
            token = tokens[b]
            row.tokens.append(token)
            if logprobs is not None:
                row.logprobs.append(logprobs[b])
                row.entropies.append(entropies[b])
            if token in self.eos_ids or len(row.tokens) >= params.max_new_tokens:
                row.done = True
            elif params.stop:
                text = self.tokenizer.decode(row.tokens, skip_special_tokens=True)
                row.done = find_stop(text, params.stop) >= 0

    def retire_finished(self):
        """Collect finished rows and keep the active rows in slots 0..A-1 (a moved row takes its cache along)."""
        if not any(row.done for row in self.active):
            return
        keep = [row for row in self.active if not row.done]
        holes = sorted(row.slot for row in self.active if row.done and row.slot < len(keep))
        movers = [row for row in keep if row.slot >= len(keep)]
        for hole, row in zip(holes, movers):
            n = row.length
            self.cache_k[:, hole, :, :n] = self.cache_k[:, row.slot, :, :n]
            self.cache_v[:, hole, :, :n] = self.cache_v[:, row.slot, :, :n]
            row.slot = hole
        for row in self.active:
            if row.done:
                self.results[row.prompt][row.sample] = finish_completion(
                    self.tokenizer, row.tokens, row.logprobs if self.params.return_logprobs else None,
                    self.params, self.eos_ids, len(self.encoded[row.prompt]),
                    entropies=row.entropies if self.params.return_logprobs else None,
                )
                self.samples_done[row.prompt] += 1
                if self.bar is not None and self.samples_done[row.prompt] == self.params.n:
                    self.bar.update(1)
        self.active = sorted(keep, key=lambda row: row.slot)

    # ------------------------------------------------------------------------------------------
    # The model, run through its own modules.

    def layer_qkv(self, layer, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """Pre-norm and q/k/v projections with rotary applied. x (B, T, H) -> q (B, T, nh, D), k/v (B, T, KV, D)."""
        B, T, _ = x.shape
        attn = layer.self_attn
        h = layer.input_layernorm(x)
        q = attn.q_proj(h).view(B, T, self.n_heads, self.head_dim)
        k = attn.k_proj(h).view(B, T, self.n_kv, self.head_dim)
        v = attn.v_proj(h).view(B, T, self.n_kv, self.head_dim)
        return _rope(q, cos, sin), _rope(k, cos, sin), v

    def layer_out(self, layer, x: torch.Tensor, attn_out: torch.Tensor) -> torch.Tensor:
        """Output projection, residual, post-norm MLP, residual. attn_out (B, T, nh*D) -> (B, T, H)."""
        x = x + layer.self_attn.o_proj(attn_out)
        return x + layer.mlp(layer.post_attention_layernorm(x))

    def encode_prefix(self, ids: list[int]):
        """Run the shared prefix once (plain causal attention) and keep its keys/values per layer."""
        P = len(ids)
        x = self.embed(torch.tensor([ids], device=self.device))  # (1, P, H)
        cos, sin = self.cos[None, :P, None], self.sin[None, :P, None]  # (1, P, 1, D)
        for i, layer in enumerate(self.layers):
            q, k, v = self.layer_qkv(layer, x, cos, sin)
            k, v = k[0].transpose(0, 1).contiguous(), v[0].transpose(0, 1).contiguous()  # (KV, P, D)
            self.prefix_k.append(k)
            self.prefix_kt.append(k.transpose(1, 2).contiguous())
            self.prefix_v.append(v)
            if i == len(self.layers) - 1:
                break  # the prefix's last hidden states are never used
            out = F.scaled_dot_product_attention(
                q.transpose(1, 2), k[None], v[None], is_causal=True, scale=self.scaling, enable_gqa=True
            )  # (1, nh, P, D)
            x = self.layer_out(layer, x, out.transpose(1, 2).reshape(1, P, -1))

    def encode_suffixes(self, suffixes: list[list[int]], slots: list[int]) -> torch.Tensor:
        """Encode prompt suffixes (after the shared prefix) into the given slots; return each one's
        next-token logits (B, V).

        The suffixes are packed into one sequence without padding, so the projections and MLPs (most
        of the work) run on exactly the real tokens; attention runs per suffix, over the shared prefix
        and the suffix's own earlier tokens."""
        P, device = self.P, self.device
        lengths = [len(s) for s in suffixes]
        starts = [sum(lengths[:b]) for b in range(len(suffixes))]
        ids = torch.tensor([[token for s in suffixes for token in s]], device=device)  # (1, N)
        own_pos = torch.cat([torch.arange(n, device=device) for n in lengths])  # (N,) position within suffix
        token_slot = torch.repeat_interleave(torch.tensor(slots, device=device), torch.tensor(lengths, device=device))
        x = self.embed(ids)  # (1, N, H)
        cos, sin = self.cos[P + own_pos][None, :, None], self.sin[P + own_pos][None, :, None]  # (1, N, 1, D)
        # Query t of a suffix sees the whole prefix and the suffix's tokens 0..t. (T, P + T) per suffix
        visible = torch.ones(max(lengths), P + max(lengths), dtype=torch.bool, device=device).tril(diagonal=P)
        for i, layer in enumerate(self.layers):
            q, k, v = self.layer_qkv(layer, x, cos, sin)  # q (1, N, nh, D), k/v (1, N, KV, D)
            self.cache_k[i, token_slot, :, own_pos] = k[0]
            self.cache_v[i, token_slot, :, own_pos] = v[0]
            q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)  # (1, heads, N, D)
            outs = []
            for start, n in zip(starts, lengths):
                q_b, k_b, v_b = q[:, :, start : start + n], k[:, :, start : start + n], v[:, :, start : start + n]
                if P > 0:
                    k_b = torch.cat([self.prefix_k[i][None], k_b], dim=2)  # (1, KV, P + n, D)
                    v_b = torch.cat([self.prefix_v[i][None], v_b], dim=2)
                outs.append(F.scaled_dot_product_attention(
                    q_b, k_b, v_b, attn_mask=visible[:n, : P + n], scale=self.scaling, enable_gqa=True
                ))  # (1, nh, n, D)
            out = torch.cat(outs, dim=2).transpose(1, 2).reshape(1, ids.shape[1], -1)  # (1, N, nh*D)
            x = self.layer_out(layer, x, out)
        last = torch.tensor([start + n - 1 for start, n in zip(starts, lengths)], device=device)
        h = self.norm(x[0, last])  # (B, H)
        return _lm_head(self.lm_head, h)  # (B, V)

    def decode_forward(self, tokens: torch.Tensor, lengths: torch.Tensor, span: int) -> torch.Tensor:
        """One decoding step for the active rows (slots 0..A-1). tokens (A, 1); row b's new key goes to
        position lengths[b] of its slot. Returns next-token logits (A, V)."""
        A, P, KV, G, D = tokens.shape[0], self.P, self.n_kv, self.group, self.head_dim
        rows = torch.arange(A, device=self.device)
        x = self.embed(tokens)  # (A, 1, H)
        cos, sin = self.cos[P + lengths][:, None, None], self.sin[P + lengths][:, None, None]  # (A, 1, 1, D)
        # Own keys at positions <= lengths[b] are visible. (A, 1, 1, span) additive mask
        hidden = torch.arange(span, device=self.device)[None] > lengths[:, None]
        mask = torch.zeros(A, 1, 1, span, device=self.device, dtype=self.dtype).masked_fill(
            hidden[:, None, None], float("-inf"))
        for i, layer in enumerate(self.layers):
            q, k, v = self.layer_qkv(layer, x, cos, sin)  # q (A, 1, nh, D), k/v (A, 1, KV, D)
            self.cache_k[i, rows, :, lengths] = k[:, 0]
            self.cache_v[i, rows, :, lengths] = v[:, 0]
            # Query heads grouped by their kv head, pre-scaled (head_dim ** -0.5 is a power of two for
            # the usual head sizes, so this rounds exactly like scaling the scores).
            q = q.view(A, KV, G, D) * self.scaling
            own_k = self.cache_k[i, :A, :, :span]  # (A, KV, span, D)
            own_v = self.cache_v[i, :A, :, :span]
            scores = torch.matmul(q, own_k.transpose(-1, -2)) + mask  # (A, KV, G, span)
            if P == 0:
                probs = scores.softmax(dim=-1, dtype=torch.float32).to(self.dtype)
                out = torch.matmul(probs, own_v)  # (A, KV, G, D)
            else:
                # Work in (KV, A, G, .) layout: all rows' queries meet the one prefix in a single
                # batched matmul (KV, A*G, D) @ (KV, D, P), and the prefix probabilities stay a view.
                prefix_scores = torch.matmul(q.transpose(0, 1).reshape(KV, A * G, D), self.prefix_kt[i])
                scores = torch.cat([prefix_scores.view(KV, A, G, P), scores.transpose(0, 1)], dim=-1)
                probs = scores.softmax(dim=-1, dtype=torch.float32).to(self.dtype)  # (KV, A, G, P + span)
                prefix_out = torch.matmul(probs[..., :P].reshape(KV, A * G, P), self.prefix_v[i])  # (KV, A*G, D)
                out = torch.matmul(probs[..., P:].transpose(0, 1), own_v)  # (A, KV, G, D)
                out = out + prefix_out.view(KV, A, G, D).transpose(0, 1)
            x = self.layer_out(layer, x, out.reshape(A, 1, KV * G * D))
        h = self.norm(x[:, 0])  # (A, H)
        return _lm_head(self.lm_head, h)  # (A, V)


def _lm_head(module, x: torch.Tensor) -> torch.Tensor:
    """`module(x)` for the LM head; for a plain `nn.Linear` on CPU and a few rows, computed as (W @ x^T)^T.

    Why by hand: the head is a quarter of SmolLM2-135M's weights, and on CPU torch's x @ W^T kernel reads
    it slowly for the few rows of a decoding step (16 rows by 49152 x 576: 45 ms on 2 EPYC cores), while
    W @ x^T computes the same numbers in 27 ms. (For the decoder layers' smaller weights both orders take
    the same time, and for many rows x @ W^T is faster.) The weight is read from the module at each call,
    so in-place updates apply; any other module (a PEFT layer, a quantized linear) is simply called."""
    if (type(module) is not torch.nn.Linear or x.device.type != "cpu" or x.numel() > 64 * x.shape[-1]
            or "forward" in module.__dict__):  # packed for this call (`packed_linears`): faster still
        return module(x)
    rows = x.reshape(-1, x.shape[-1])
    y = torch.matmul(module.weight, rows.t()).t()  # (N, out)
    if module.bias is not None:
        y = y + module.bias
    return y.contiguous().view(*x.shape[:-1], y.shape[-1])


def _rope(x: torch.Tensor, cos: torch.Tensor, signed_sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding in HF's convention (rotate the two halves). x (B, T, h, D); cos and the
    sign-folded sin (see `_Run.__init__`) broadcastable to x."""
    half = x.shape[-1] // 2
    return x * cos + torch.cat((x[..., half:], x[..., :half]), dim=-1) * signed_sin
