"""Stage 0 and 5: accuracy of a model on a dataset split with chain-of-thought prompts.

Greedy decoding through the generation engine; each finished question is appended to
`OUT/predictions.jsonl` at once, so a stopped run loses nothing and a rerun with the same `--out`
continues where it stopped (never duplicating a question). `OUT/metrics.json` summarises all rows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import DataConfig, few_shot_exemplar_ids, load_examples
from .records import Example

log = logging.getLogger(__name__)

# Settings that change what a prediction is; a rerun into the same folder must not mix them.
# "templates_digest", not the file's name: the templates' content decides the prompts.
_IDENTITY_KEYS = ("model", "adapter", "prompt", "exemplars", "num_exemplars", "chat", "max_new_tokens",
                  "templates_digest")


@dataclass
class EvalConfig:
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "model name (smollm2-135m-instruct, tiny-random), local folder or hub id"})
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder to apply on the model"})
    out: str | None = field(default=None, metadata={"help": "output folder (predictions.jsonl, metrics.json)"})
    prompt: str = field(default="zero_shot", metadata={"help": "zero_shot or few_shot chain-of-thought",
                                                       "choices": ["zero_shot", "few_shot"]})
    exemplars: str | None = field(default=None, metadata={
        "help": "few-shot exemplars: empty for ours, 'dataset' for the shared prompt of a built-in dataset, "
                "or a JSON file"})
    num_exemplars: int | None = field(default=None, metadata={"help": "use only the first N exemplars"})
    chat: str = field(default="auto", metadata={"help": "use the chat template: auto, always or never",
                                                "choices": ["auto", "always", "never"]})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding our prompt templates"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens generated per question at most"})
    batch_size: int = field(default=64, metadata={"help": "sequences decoded at once"})
    backend: str = field(default="engine", metadata={"help": "generation backend: engine (ours) or hf",
                                                     "choices": ["engine", "hf"]})
    dtype: str = field(default="auto", metadata={
        "help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16, or int8 (int8 weights on CPU: "
                "faster decoding, lossy; see the README's speed section)"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    trust_remote_code: bool = field(default=False, metadata={"help": "allow model code from the hub (off: safer)"})
    include_exemplar_rows: bool = field(default=False, metadata={
        "help": "keep test questions that appear as few-shot exemplars (excluded by default)"})
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="test"), metadata={"cli": False})

    def __post_init__(self):
        if isinstance(self.data, dict):
            from .config import build_config

            self.data = build_config(DataConfig, self.data, "eval.data")
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.prompt not in ("zero_shot", "few_shot"):
            raise ValueError(f"prompt must be zero_shot or few_shot, got {self.prompt!r}")
        if self.backend not in ("engine", "hf"):
            raise ValueError(f"backend must be engine or hf, got {self.backend!r}")


def accuracy_ci95(n_correct: int, n: int) -> tuple[float, float]:
    """Wilson score interval for a proportion (better than the normal one near 0 and 1 and for small n)."""
    if n == 0:
        return (0.0, 0.0)
    z = 1.959963984540054
    p = n_correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def summarize(rows: list[dict]) -> dict:
    n = len(rows)
    n_correct = sum(1 for r in rows if r["correct"])
    low, high = accuracy_ci95(n_correct, n)
    return {
        "n": n,
        "n_correct": n_correct,
        "accuracy": n_correct / n if n else 0.0,
        "ci95": [low, high],
        "n_no_answer": sum(1 for r in rows if r["prediction"] is None),
        "tokens_generated": sum(r.get("new_tokens", 0) for r in rows),
    }


def _read_jsonl(path: Path) -> list[dict]:
    """Rows of a JSONL file; a last line cut short by a crash is dropped (it is regenerated)."""
    rows = []
    if not path.exists():
        return rows
    lines = path.read_text().splitlines()
    for i, line in enumerate(lines):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if i == len(lines) - 1:
                log.warning("%s: dropping a partly written last line (the run was interrupted)", path)
                break
            raise ValueError(f"{path}:{i + 1}: not valid JSON; the predictions file is corrupt") from None
    return rows


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)


def select_examples(config: EvalConfig) -> tuple[list[Example], list[str]]:
    """The questions to evaluate, and the ids left out because a few-shot prompt shows them."""
    examples = load_examples(config.data)
    excluded: list[str] = []
    if config.prompt == "few_shot" and config.exemplars == "dataset" and not config.include_exemplar_rows:
        shown = set(few_shot_exemplar_ids(config.data.dataset, data_dir=config.data.data_dir))
        excluded = [ex.id for ex in examples if ex.id in shown]
        examples = [ex for ex in examples if ex.id not in shown]
    return examples, excluded


def run_eval(config: EvalConfig, model=None, tokenizer=None, examples: list[Example] | None = None) -> dict:
    """Evaluate and return the metrics. Pass `model`/`tokenizer` to evaluate one already in memory, and
    `examples` to evaluate those questions instead of the ones `config.data` selects."""
    from .answers import answers_match, extract_answer
    from .generation import SamplingParams, make_generator
    from .prompts import build_prompt, load_exemplars, load_templates, stop_strings, templates_digest

    if not config.out:
        raise ValueError("eval needs an output folder: pass --out DIR")
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    excluded: list[str] = []
    if examples is None:
        examples, excluded = select_examples(config)
    if not examples:
        raise ValueError(f"no questions to evaluate in dataset {config.data.dataset!r} split {config.data.split!r}")

    settings = {**asdict(config), "templates_digest": templates_digest(config.templates)}
    config_path = out / "eval_config.json"
    if config_path.exists():
        before = json.loads(config_path.read_text())
        changed = [k for k in _IDENTITY_KEYS if before.get(k) != settings.get(k)]
        if before.get("data", {}).get("dataset") != config.data.dataset:
            changed.append("dataset")
        if changed:
            raise ValueError(f"{out} holds predictions made with other settings ({', '.join(changed)} differ); "
                             f"use another --out folder or delete {out}")
    _write_json(config_path, settings)

    predictions_path = out / "predictions.jsonl"
    rows = _read_jsonl(predictions_path)
    missing = next((k for r in rows for k in ("id", "prediction", "correct") if not isinstance(r, dict) or k not in r),
                   None)
    if missing:  # resuming would crash on such a row, or count it wrong
        from .errors import RunFolderError

        raise RunFolderError(f"{predictions_path}: a row has no {missing!r}: these predictions were written by "
                             "another version of sml; use another --out folder (the file was left as it is)")
    if rows:  # rewrite without a torn last line before appending
        predictions_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = {r["id"] for r in rows}
    todo = [ex for ex in examples if ex.id not in done]
    if done:
        log.info("resuming: %d of %d questions already done in %s", len(done), len(examples), predictions_path)

    seconds = 0.0
    if todo:
        if model is None:
            from .models import load_model

            model, tokenizer = load_model(config.model, adapter=config.adapter, dtype=config.dtype,
                                          device=config.device, trust_remote_code=config.trust_remote_code)
        generator = make_generator(model, tokenizer, backend=config.backend, max_batch_size=config.batch_size)
        params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=0.0,
                                stop=stop_strings(tokenizer, config.chat))
        exemplar_cache: dict[str, list] = {}
        templates = load_templates(config.templates)

        def prompt_for(ex: Example) -> str:
            pairs = None
            if config.prompt == "few_shot":
                key = f"{ex.dataset}/{ex.answer_type}"
                if key not in exemplar_cache:
                    exemplar_cache[key] = load_exemplars(config.exemplars, ex, config.data.data_dir,
                                                         config.num_exemplars)
                pairs = exemplar_cache[key]
            return build_prompt(ex, tokenizer, style=config.prompt, exemplars=pairs, chat=config.chat,
                                templates=templates)

        progress = None
        if config.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(examples), initial=len(done), desc=f"eval {config.data.dataset}",
                            unit="q", dynamic_ncols=True)
        # Chunks of several batches: big enough for continuous batching to pay, small enough that an
        # interrupted run loses little.
        chunk = config.batch_size * 4
        start = time.perf_counter()
        with predictions_path.open("a") as sink:
            for i in range(0, len(todo), chunk):
                part = todo[i:i + chunk]
                prompts = [prompt_for(ex) for ex in part]
                completions = generator.generate(prompts, params)
                for ex, prompt, (completion,) in zip(part, prompts, completions):
                    prediction = extract_answer(completion.text, ex.answer_type, ex.choices)
                    row = {
                        "id": ex.id,
                        "question": ex.question,
                        "choices": list(ex.choices),
                        "prompt": prompt,
                        "output": completion.text,
                        "prediction": prediction,
                        "gold": ex.gold,
                        "correct": answers_match(prediction, ex.gold, ex.answer_type),
                        "new_tokens": len(completion.token_ids),
                        "finish_reason": completion.finish_reason,
                    }
                    sink.write(json.dumps(row) + "\n")
                    rows.append(row)
                sink.flush()
                os.fsync(sink.fileno())
                if progress is not None:
                    progress.update(len(part))
                    correct = sum(r["correct"] for r in rows)
                    progress.set_postfix(acc=f"{correct / len(rows):.3f}")
        seconds = time.perf_counter() - start
        if progress is not None:
            progress.close()

    keep = {ex.id for ex in examples}
    rows = [r for r in rows if r["id"] in keep]
    metrics = {
        "dataset": config.data.dataset,
        "split": config.data.split,
        "model": config.model,
        "adapter": config.adapter,
        "prompt": config.prompt,
        "backend": config.backend,
        **summarize(rows),
        "n_excluded_exemplar_rows": len(excluded),
        "seconds": round(seconds, 2),
    }
    new_tokens = sum(r["new_tokens"] for r in rows if r["id"] in {ex.id for ex in todo})
    metrics["tokens_per_second"] = round(new_tokens / seconds, 2) if seconds > 0 else None
    if not todo:  # nothing was left to evaluate: the time it took is the earlier run's
        earlier = _read_json_object(out / "metrics.json")
        for key in ("seconds", "tokens_per_second"):
            if key in earlier:
                metrics[key] = earlier[key]
    _write_json(out / "metrics.json", metrics)
    return metrics


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}
