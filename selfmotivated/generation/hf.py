"""The `hf` backend: plain Hugging Face `model.generate`, batched with left padding. The reference.

It applies the same decoding rules as the engine (see `sampling.py`): every generation setting is
passed explicitly, so a checkpoint's own `generation_config` (a default top_k=50, a repetition
penalty) cannot change the meaning of `SamplingParams`. Stop strings and EOS are applied to the
output afterwards by the same function the engine uses; a row keeps generating until EOS or
`max_new_tokens`, which is what a plain `generate` call does.
"""

from __future__ import annotations

from typing import Sequence

import torch

from selfmotivated.generation import Completion, SamplingParams
from selfmotivated.generation.sampling import call_seed, eos_token_ids, eval_mode, finish_completion


class HFGenerator:
    """`model.generate` over batches of `batch_size` rows (`batch_size=1`: the one-prompt-at-a-time loop)."""

    def __init__(self, model, tokenizer, batch_size: int = 16):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size

    def generate(
        self, prompts: Sequence[str], params: SamplingParams, progress: bool = False
    ) -> list[list[Completion]]:
        from transformers import GenerationConfig

        tokenizer, model = self.tokenizer, self.model
        eos_ids = eos_token_ids(model, tokenizer)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else min(eos_ids)
        encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
        # Rows in prompt order, the n samples of a prompt side by side.
        rows = [i for i in range(len(prompts)) for _ in range(params.n)]
        sampling = params.temperature > 0
        # Greedy takes no warpers; passing them would only make HF warn that they are unused.
        warpers = dict(temperature=params.temperature, top_k=params.top_k, top_p=params.top_p) if sampling else {}
        config = GenerationConfig(
            max_new_tokens=params.max_new_tokens,
            do_sample=sampling,
            **warpers,  # top_k=0 means no filter, HF's convention too
            repetition_penalty=1.0,
            min_new_tokens=0,
            num_beams=1,
            eos_token_id=sorted(eos_ids),
            pad_token_id=pad_id,
            output_logits=params.return_logprobs,
            return_dict_in_generate=True,
        )
        device = next(model.parameters()).device
        raw: list[tuple[list[int], list[float] | None, list[float] | None]] = []
        bar = _progress_bar(len(prompts), progress)
        try:
            # A private RNG stream: the seed decides the samples, and the caller's global RNG is untouched.
            with eval_mode(model), torch.no_grad(), \
                    torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
                torch.manual_seed(call_seed(params))
                for start in range(0, len(rows), self.batch_size):
                    batch = [encoded[i] for i in rows[start : start + self.batch_size]]
                    width = max(len(ids) for ids in batch)
                    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch])
                    mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for ids in batch])
                    out = model.generate(
                        input_ids=input_ids.to(device), attention_mask=mask.to(device),
                        generation_config=config,
                    )
                    new = out.sequences[:, width:].tolist()  # (B, T_new), padded after EOS
                    logprobs = entropies = None
                    if params.return_logprobs:  # out.logits: one raw (B, V) tensor per step
                        chosen = out.sequences[:, width:]  # (B, T_new)
                        scale = params.temperature if params.temperature > 0 else 1.0  # as the engine does
                        log_p = [(step.float() / scale).log_softmax(-1) for step in out.logits]  # (B, V) each
                        logprobs = torch.stack([lp.gather(-1, chosen[:, t, None])[:, 0] for t, lp in enumerate(log_p)],
                                               dim=1).tolist()  # (B, T_new)
                        entropies = torch.stack([-(lp.exp() * lp).nan_to_num().sum(-1) for lp in log_p],
                                                dim=1).tolist()  # (B, T_new)
                    for b, ids in enumerate(new):
                        raw.append((ids, logprobs[b] if logprobs is not None else None,
                                    entropies[b] if entropies is not None else None))
                    if bar is not None:
                        done = len(raw) // params.n
                        bar.update(done - bar.n)
        finally:
            if bar is not None:
                bar.close()
        results: list[list[Completion]] = [[] for _ in prompts]
        for prompt_index, (ids, logprobs, entropies) in zip(rows, raw):
            results[prompt_index].append(
                finish_completion(tokenizer, ids, logprobs, params, eos_ids, len(encoded[prompt_index]),
                                  entropies=entropies)
            )
        return results


def _progress_bar(total: int, enabled: bool):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="generate", unit="prompt")
