"""Stage 2: supervised fine-tuning on the top-tier rationales (METHOD.md, as in STaR and Fine-tune-CoT).

Data: rows with `prompt` (the full prompt text, chat template applied: what evaluation feeds the model) and
`response` (rationale + "The answer is X."), from a `sml generate` run folder (`rationales.load_sft_set`)
or a JSONL file (`--train-file`). An optional `question_id` keeps all rationales of a question on the same
side of the validation split.

Each row becomes `prompt ids + response ids + EOS`, the two parts tokenized separately so the prompt is
tokenized exactly as at inference. The loss is next-token cross-entropy on the response tokens (and the
EOS, so the model learns to stop) only; logits are computed only at those positions (a boolean
`logits_to_keep` mask), which also skips the vocabulary projection over the prompt.

    run_sft(SFTConfig(run_dir="runs/x"))      # -> runs/x/sft/model  (loads with sml eval / transformers)
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from .training import (
    Loop, TrainConfig, TrainerState, add_lora, check_max_length, deal_eval, fingerprint, fit,
    hf_progress_bars_off, length_grouped_batches, make_accelerator, make_optimizer, make_scheduler,
    padding_fraction, plan_training_steps, prepare_out, load_rows, resolve_out, resume_state, save_model_folder,
    set_seed, settings_of, split_by_group, write_run_record,
)

log = logging.getLogger(__name__)

SFT_KEYS = ("prompt", "response")
DEFAULT_LR = {"full": 2e-5, "lora": 2e-4}


@dataclass
class SFTConfig(TrainConfig):
    """`sml sft`: fine-tune the policy on its own best rationales."""

    model: str = field(default="smollm2-135m-instruct", metadata={
        "help": "model to fine-tune: a known name, a model folder, or a PEFT adapter folder (merged first)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per micro-batch per process"})
    save_merged: bool = field(default=False, metadata={
        "help": "LoRA: save the adapter merged into a full model folder instead of the adapter folder"})

    def __post_init__(self):
        self.check()
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.learning_rate is None:
            self.learning_rate = DEFAULT_LR[self.method]


# ----------------------------------------------------------------------------------------------------
# Data


def load_sft_rows(config: SFTConfig) -> list[dict]:
    """Rows with prompt/response (and question_id when known) from the run folder or the JSONL file."""
    from .rationales import load_sft_set

    rows = load_rows(config.train_file, config.run_dir, SFT_KEYS, load_sft_set, "SFT row",
                     "nothing to train on (did the generation run produce any top-tier rationale?)")
    for row in rows:
        for key in SFT_KEYS:
            if not isinstance(row[key], str) or not row[key].strip():
                raise ValueError(f"{row['_where']}: {key!r} must be a non-empty string, got {row[key]!r}")
    return rows


def tokenize_sft(rows: list[dict], tokenizer, max_length: int, too_long: str = "drop") -> tuple[list[dict], int]:
    """(items, n_dropped). Item: ids = prompt + response + EOS, n_prompt, group (question id or row index).

    A row longer than max_length is dropped (counted) or, with too_long="error", an error naming it:
    cutting it would lose either the question or the final answer line.
    """
    eos = tokenizer.eos_token_id
    if eos is None:
        raise ValueError("the tokenizer has no EOS token; SFT needs one to teach the model where to stop")
    items, dropped = [], 0
    for i, row in enumerate(rows):
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        if not response or response[-1] != eos:
            response = response + [eos]
        ids = prompt + response
        if len(ids) > max_length:
            if too_long == "error":
                raise ValueError(f"{row.get('_where', f'row {i}')}: {len(ids)} tokens, longer than max_length="
                                 f"{max_length} (raise --max-length or use --too-long drop)")
            dropped += 1
            continue
        items.append({"ids": ids, "n_prompt": len(prompt), "group": str(row.get("question_id", f"row-{i}"))})
    return items, dropped


def collate_sft(items: list[dict], pad_id: int, device=None) -> dict:
    """Right-padded batch. loss_mask[b, t] marks positions whose next token is a response token; targets[b, t]
    is that next token. Shapes: (B, T)."""
    import torch

    B, T = len(items), max(len(it["ids"]) for it in items)
    input_ids = torch.full((B, T), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((B, T), dtype=torch.long)
    loss_mask = torch.zeros((B, T), dtype=torch.bool)
    for b, it in enumerate(items):
        n = len(it["ids"])
        input_ids[b, :n] = torch.tensor(it["ids"])
        attention_mask[b, :n] = 1
        loss_mask[b, it["n_prompt"] - 1:n - 1] = True  # position t predicts token t + 1
    targets = torch.roll(input_ids, shifts=-1, dims=1)  # (B, T); the wrapped last column is never in loss_mask
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask, "targets": targets}
    return {k: v.to(device) for k, v in batch.items()} if device is not None else batch


def sft_token_losses(model, batch: dict):
    """Cross-entropy of each response token, shape (N,) with N = batch["loss_mask"].sum()."""
    import torch.nn.functional as F

    mask = batch["loss_mask"]
    if _logits_mask_supported():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=mask,
                    use_cache=False)
        logits = out.logits  # (N, V): only the masked positions were projected onto the vocabulary
    else:
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], use_cache=False)
        logits = out.logits[mask]
    return F.cross_entropy(logits.float(), batch["targets"][mask], reduction="none")


@functools.cache
def _logits_mask_supported() -> bool:
    """Whether this transformers takes a boolean `logits_to_keep` mask (5.24, the pinned version, does; 5.17 takes
    only a count or indices). Older versions get the same losses from full logits, at more memory."""
    from transformers import modeling_utils

    return hasattr(modeling_utils, "slice_logits_to_keep")


def sft_loss(model, batch: dict):
    """Mean response-token loss of one micro-batch, and stats for logging."""
    losses = sft_token_losses(model, batch)
    loss = losses.mean()
    stats = {"loss": loss.item(), "tokens": float(batch["attention_mask"].sum()),
             "positions": float(batch["attention_mask"].numel()), "response_tokens": float(losses.numel())}
    return loss, stats


# ----------------------------------------------------------------------------------------------------
# Model


def load_policy_for_training(config: SFTConfig):
    """(model, tokenizer, started_from_adapter): full weights in float32 (mixed precision is autocast),
    with a fresh LoRA adapter when method == lora."""
    from .models import load_model

    model, tokenizer = load_model(config.model, dtype="float32", device="cpu",
                                  trust_remote_code=config.trust_remote_code, for_training=True)
    from_adapter = hasattr(model, "merge_and_unload")
    if from_adapter:  # train on top of the merged weights
        model = model.merge_and_unload()
    check_max_length(model, config.max_length)
    model.config.use_cache = False
    if config.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if config.method == "lora":
        model = add_lora(model, config, task_type="CAUSAL_LM")
    return model, tokenizer, from_adapter


def merge_adapter_folder(folder: Path) -> None:
    """Replace a LoRA adapter folder by the full model with the adapter merged in."""
    from .models import load_model

    model, tokenizer = load_model(str(folder), dtype="float32", device="cpu")
    merged = model.merge_and_unload()
    tmp = folder.with_name(folder.name + ".merged.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    with hf_progress_bars_off():
        merged.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    shutil.rmtree(folder)
    os.replace(tmp, folder)


# ----------------------------------------------------------------------------------------------------
# The stage


def run_sft(config: SFTConfig) -> dict:
    """Fine-tune and save `OUT/model`; returns the metrics (also in `OUT/run.json`)."""
    import torch

    out = resolve_out(config, "sft")
    accelerator = make_accelerator(config)
    settings = settings_of(config)
    resume_from = prepare_out(out, settings, config.resume, accelerator)

    rows = load_sft_rows(config)  # before the model: bad input fails fast
    set_seed(config.seed)
    model, tokenizer, from_adapter = load_policy_for_training(config)
    save_merged = config.save_merged or (config.method == "lora" and from_adapter)
    if config.method == "lora" and from_adapter and not config.save_merged:
        log.warning("%s is an adapter (merged before training): the new adapter is saved merged", config.model)

    # -- data: tokenize, hold out whole questions, plan length-bucketed batches
    items, n_dropped = tokenize_sft(rows, tokenizer, config.max_length, config.too_long)
    if not items:
        raise ValueError(f"all {len(rows)} SFT rows are longer than max_length={config.max_length} tokens")
    train_idx, val_idx = split_by_group([it["group"] for it in items], config.val_fraction, config.seed)
    train = [items[i] for i in train_idx]
    val = [items[i] for i in val_idx]
    lengths = [len(it["ids"]) for it in train]
    plan_epoch, plan = plan_training_steps(train, lengths, config, accelerator, "rows")
    steps_per_epoch, total_steps = plan["steps_per_epoch"], plan["total_steps"]
    pad_id = tokenizer.pad_token_id

    def loss_fn(model, batch_items):
        return sft_loss(model, collate_sft(batch_items, pad_id, accelerator.device))

    val_batches = length_grouped_batches([len(it["ids"]) for it in val], config.batch_size, config.seed, 0)

    def evaluate(model) -> dict:
        total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)  # (loss sum, tokens)
        for b, counts in deal_eval(val_batches, accelerator.num_processes, accelerator.process_index):
            losses = sft_token_losses(model, collate_sft([val[i] for i in b], pad_id, accelerator.device))
            if counts:
                total += torch.stack([losses.double().sum(), torch.tensor(losses.numel(), dtype=torch.float64,
                                                                          device=accelerator.device)])
        total = accelerator.reduce(total, reduction="sum")
        return {"val_loss": (total[0] / total[1].clamp(min=1)).item()}

    optimizer = make_optimizer(model, config, config.learning_rate)
    scheduler = make_scheduler(optimizer, config, total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)

    state = TrainerState(data_fingerprint=fingerprint([it["ids"] for it in train]),
                         batches_per_step=accelerator.num_processes * config.grad_accum)
    if resume_from is not None:
        state = resume_state(accelerator, resume_from, state, out)
    elif val:
        model.eval()
        with torch.no_grad():
            state.evals.append({"step": 0, **evaluate(model), "best": False})  # the start, for the record

    data = {"rows": len(rows), "dropped_too_long": n_dropped, "train_rows": len(train), "val_rows": len(val),
            "train_questions": len({it["group"] for it in train}), "val_questions": len({it["group"] for it in val}),
            "train_response_tokens": sum(len(it["ids"]) - it["n_prompt"] for it in train),
            **plan, "planned_padding_fraction": round(padding_fraction(
                length_grouped_batches(lengths, config.batch_size, config.seed, 0), lengths), 4)}
    write_run_record(out, "sft", settings, "running", data, {}, state, accelerator)

    model_dir = out / "model"

    def save_model(m) -> None:
        save_model_folder(accelerator, m, tokenizer, model_dir)

    loop = Loop(plan_epoch=plan_epoch, loss_fn=loss_fn, steps_per_epoch=steps_per_epoch, total_steps=total_steps,
                evaluate=evaluate if val else None, save_model=save_model)
    state = fit(accelerator, model, optimizer, scheduler, loop, state, config, out)

    finished = state.step >= total_steps or state.stopped_early
    if finished and config.method == "lora" and save_merged and accelerator.is_main_process:
        merge_adapter_folder(model_dir)
    accelerator.wait_for_everyone()
    metrics = sft_metrics(state, steps_per_epoch, model_dir if finished else None)
    write_run_record(out, "sft", settings, "finished" if finished else "stopped", data, metrics, state, accelerator)
    return metrics


def sft_metrics(state: TrainerState, steps_per_epoch: int, model_dir: Path | None) -> dict:
    evals = state.evals
    return {
        "steps": state.step,
        "epochs": round(state.step / steps_per_epoch, 3),
        "stopped_early": state.stopped_early,
        "val_loss_start": evals[0]["val_loss"] if evals and evals[0]["step"] == 0 else None,
        "val_loss_final": evals[-1]["val_loss"] if evals else None,
        "best_val_loss": state.best_metric,
        "best_step": state.best_step,
        "train_tokens": state.tokens,
        "tokens_per_s": round(state.tokens / state.seconds, 1) if state.seconds else None,
        "padding_fraction": round(1 - state.tokens / state.padded_positions, 4) if state.padded_positions else None,
        "train_seconds": round(state.seconds, 2),
        "model_dir": str(model_dir) if model_dir else None,
    }
