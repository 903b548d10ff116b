"""Stage 1: the model writes rationales for its training questions, checked and stored for ranking.

Per question, in this order (wrong answers may come from the free samples, so those go first):
1. free: n_free chain-of-thought samples with no hint (zero-shot or few-shot prompt);
2. gold: n_gold rationalisations of the gold answer (the hinted prompt states the answer);
3. wrong: n_wrong rationalisations of each of `wrong_targets` wrong answers (`wrong.py`).
Each sample gets its stated answer (`answers.extract_answer`), with answer forcing its forced answer
(`checks.py`), and for hinted ones a leak flag. Rows go to `RUN/rationales.sqlite` (`store.py`), one
committed transaction per prompt.

Resuming exactly: questions are cut into fixed chunks of `chunk_questions`, and each chunk runs three
generate calls (free, gold, wrong) plus one greedy forcing call per phase. A call's seed is derived from
the run seed, the phase and the chunk's question ids, and a call's prompts depend only on the chunk, so
a phase that has to be redone after a kill is the very same call and produces the very same samples
(backends derive each row's random stream from the call seed and the row's place in the call). A
resumed run therefore ends equal to an uninterrupted one, given the same model weights, dtype, device,
backend and chunk_questions. A phase whose prompts are all stored is skipped; one with any prompt
missing is generated again whole and only the missing prompts are written.

Changing counts (n_free, n_gold, n_wrong, wrong_targets) or the wrong strategy on a rerun adds samples
and keeps those already stored. Changing a setting that decides what a sample is (model, prompt,
temperature, seed, ...: the settings fingerprint) into the same folder is refused unless
allow_mixed_settings is set: then both sets of rows are stored side by side and ranked together.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..answers import extract_answer
from ..data import DataConfig, load_examples
from ..records import Example
from .checks import detect_leak, forced_answer, forcing_prompt, reasoning_before_answer, split_answer_line, strip_stop
from .store import RationaleStore, fingerprint
from .wrong import WRONG_STRATEGIES, choose_wrong_answers, stable_seed

log = logging.getLogger(__name__)

# Settings that decide what a sample is; a run folder holds rows of one such setting unless mixing is allowed.
_SAMPLE_KEYS = (
    "model",
    "adapter",
    "prompt",
    "exemplars",
    "num_exemplars",
    "chat",
    "temperature",
    "top_p",
    "top_k",
    "max_new_tokens",
    "seed",
    "answer_forcing",
    "forcing_max_new_tokens",
    "forcing_from",
)
# Where answer forcing cuts a rationale (GenerateConfig.forcing_from) -> the text it continues from.
FORCING_CUTS = {
    "first_answer": reasoning_before_answer,
    "last_line": lambda text: split_answer_line(text)[0],
}
FORCING_FROM = tuple(FORCING_CUTS)


@dataclass
class GenerateConfig:
    """Sample, check and store rationales for the training questions (`sml rationales generate`)."""

    run_dir: str | None = field(
        default=None,
        metadata={"help": "run folder; rationales go to RUN/rationales.sqlite (a rerun resumes there)"},
    )
    # the model
    model: str = field(
        default="smollm2-135m-instruct",
        metadata={"help": "model name (smollm2-135m-instruct, tiny-random), local folder or hub id"},
    )
    adapter: str | None = field(default=None, metadata={"help": "LoRA adapter folder to apply on the model"})
    dtype: str = field(
        default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16, float16"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "allow model code from the hub (off: safer)"}
    )
    backend: str = field(
        default="engine",
        metadata={
            "help": "generation backend: engine (ours), hf or hf-single",
            "choices": ["engine", "hf", "hf-single"],
        },
    )
    batch_size: int = field(default=64, metadata={"help": "sequences decoded at once"})
    # prompts
    prompt: str = field(
        default="zero_shot",
        metadata={
            "help": "prompt of the free samples: zero_shot or few_shot chain-of-thought "
            "(hinted prompts are zero-shot)",
            "choices": ["zero_shot", "few_shot"],
        },
    )
    exemplars: str | None = field(
        default=None,
        metadata={
            "help": "few-shot exemplars: empty for ours, 'dataset' for the shared prompt of a built-in "
            "dataset, or a JSON file"
        },
    )
    num_exemplars: int | None = field(default=None, metadata={"help": "use only the first N exemplars"})
    chat: str = field(
        default="auto",
        metadata={
            "help": "use the chat template: auto, always or never",
            "choices": ["auto", "always", "never"],
        },
    )
    templates: str | None = field(
        default=None, metadata={"help": "JSON file overriding our prompt templates"}
    )
    # how many of each kind
    n_free: int = field(default=8, metadata={
        "help": "free (unhinted) chain-of-thought samples per question: the population PPO samples and the "
                "reward model must rank"})
    n_gold: int = field(default=2, metadata={"help": "rationalisations of the gold answer per question"})
    n_wrong: int = field(default=2, metadata={"help": "rationalisations per wrong answer"})
    wrong_targets: int = field(default=1, metadata={"help": "wrong answers rationalised per question"})
    wrong_strategy: str = field(
        default="auto",
        metadata={
            "help": "how wrong answers are chosen: auto (the model's own wrong free answers first, then "
            "another option / the opposite / a perturbed number or string), own, synthetic, random_0_100 "
            "(numbers: a random integer 0..100, as the paper)",
            "choices": list(WRONG_STRATEGIES),
        },
    )
    # decoding
    temperature: float = field(
        default=0.8, metadata={"help": "sampling temperature (0 = greedy: one sample each)"}
    )
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling threshold in (0, 1]"})
    top_k: int = field(default=0, metadata={"help": "top-k filter (0 = off)"})
    max_new_tokens: int = field(default=256, metadata={"help": "tokens per rationale at most"})
    seed: int = field(default=0, metadata={"help": "seed: same seed and settings -> same rationales"})
    # checks
    answer_forcing: bool = field(
        default=True,
        metadata={
            "help": "check each rationale by forcing: unhinted prompt + the rationale before its answer "
            "(see forcing_from) + 'The answer is', continued greedily"
        },
    )
    forcing_max_new_tokens: int = field(default=16, metadata={"help": "tokens the forced answer may take"})
    forcing_from: str = field(default="first_answer", metadata={
        "help": "where forcing cuts the rationale: first_answer (before its first answer statement, so an "
                "answer stated mid-way cannot be copied) or last_line (only the final statement; before "
                "2026-11-26)", "choices": list(FORCING_FROM)})
    # running
    chunk_questions: int = field(
        default=32,
        metadata={"help": "questions per generate call; a resumed run redoes at most one chunk's phase "
                          "(with fewer than ~32 rows per call the engine's slots sit idle)"},
    )
    allow_mixed_settings: bool = field(
        default=False,
        metadata={
            "help": "allow adding rows made with other sample settings to a run folder (ranked together)"
        },
    )
    progress: bool = field(default=True, metadata={"help": "show a progress bar"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="train"), metadata={"cli": False})

    def __post_init__(self):
        from ..generation import BACKENDS
        from ..prompts import PROMPT_STYLES

        if isinstance(self.data, dict):
            from ..config import build_config

            self.data = build_config(DataConfig, {"split": "train", **self.data}, "rationales.data")
        for name in ("n_free", "n_gold", "n_wrong", "wrong_targets"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.n_free + self.n_gold + self.n_wrong * self.wrong_targets == 0:
            raise ValueError(
                "no rationales to generate: n_free, n_gold and n_wrong * wrong_targets are all 0"
            )
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {self.temperature}")
        if self.temperature == 0 and max(self.n_free, self.n_gold, self.n_wrong) > 1:
            raise ValueError(
                "temperature 0 is greedy: every sample of a prompt would be the same; use "
                "temperature > 0 or n_free, n_gold, n_wrong <= 1"
            )
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0, got {self.top_k}")
        for name in ("max_new_tokens", "forcing_max_new_tokens", "chunk_questions", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.prompt not in PROMPT_STYLES:
            raise ValueError(f"prompt must be one of {PROMPT_STYLES}, got {self.prompt!r}")
        if self.forcing_from not in FORCING_FROM:
            raise ValueError(f"forcing_from must be one of {FORCING_FROM}, got {self.forcing_from!r}")
        if self.chat not in ("auto", "always", "never"):
            raise ValueError(f"chat must be auto, always or never, got {self.chat!r}")
        if self.wrong_strategy not in WRONG_STRATEGIES:
            raise ValueError(f"wrong_strategy must be one of {WRONG_STRATEGIES}, got {self.wrong_strategy!r}")
        if self.wrong_strategy == "own" and self.n_free == 0 and self.n_wrong * self.wrong_targets > 0:
            raise ValueError(
                "wrong_strategy 'own' takes wrong answers from the free samples, but n_free is 0"
            )
        if self.backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {self.backend!r}")


def sample_settings(config: GenerateConfig) -> dict:
    """The settings that decide what a sample is (their fingerprint is part of every row's key)."""
    from ..prompts import templates_digest

    settings = {k: getattr(config, k) for k in _SAMPLE_KEYS}
    settings["templates"] = templates_digest(config.templates)
    return settings


def hint_text(example: Example, answer: str) -> str:
    """How a hinted prompt states an answer: a choice as "(C) tent", as the question lists options."""
    if example.answer_type == "choice" and answer in example.choice_letters:
        return f"({answer}) {example.choices[example.choice_letters.index(answer)]}"
    return answer


def _call_seed(seed: int, phase: str, chunk: list[Example]) -> int:
    return stable_seed(seed, phase, *(ex.id for ex in chunk))


def run_generate(
    config: GenerateConfig, model=None, tokenizer=None, generator=None, examples: list[Example] | None = None
) -> dict:
    """Generate, check and store rationales; resume what is already stored. Returns a summary.

    `model`/`tokenizer` reuse a model in memory; `generator` (with `tokenizer`) replaces the backend
    (tests, or a caller that keeps one generator across stages); `examples` replaces `config.data`.
    """
    from ..generation import SamplingParams, make_generator
    from ..prompts import build_messages, build_prompt, load_exemplars, load_templates, stop_strings

    if not config.run_dir:
        raise ValueError("rationale generation needs a run folder: pass --run-dir DIR")
    if examples is None:
        examples = load_examples(config.data)
    if not examples:
        raise ValueError(f"no questions in dataset {config.data.dataset!r} split {config.data.split!r}")
    ids = [ex.id for ex in examples]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"question id {dup!r} occurs more than once in the data; ids must be unique")
    if (generator is not None or model is not None) and tokenizer is None:
        raise ValueError("run_generate: pass the tokenizer with a model or generator (it builds the prompts)")

    settings = sample_settings(config)
    fp = fingerprint(settings)
    store = RationaleStore(config.run_dir)
    try:
        others = {f: n for f, n in store.fingerprints_in_use().items() if f != fp}
        if others and not config.allow_mixed_settings:
            stored = store.settings()
            changed = sorted(
                {
                    k
                    for f in others
                    for k in set(settings) | set(stored.get(f, {}))
                    if stored.get(f, {}).get(k) != settings.get(k)
                }
            )
            raise ValueError(
                f"{store.path} holds {sum(others.values())} rationales made with other settings "
                f"({', '.join(changed)} differ); use another --run-dir, or pass "
                "--allow-mixed-settings to add these rows beside them (ranked together)"
            )
        store.add_settings(fp, settings)

        if tokenizer is None:
            from ..models import load_model

            model, tokenizer = load_model(
                config.model,
                adapter=config.adapter,
                dtype=config.dtype,
                device=config.device,
                trust_remote_code=config.trust_remote_code,
            )
        templates = load_templates(config.templates)
        store.add_questions(
            {
                "id": ex.id,
                "dataset": ex.dataset,
                "split": ex.split,
                "question": ex.question,
                "gold": ex.gold,
                "answer_type": ex.answer_type,
                "choices": ex.choices,
                # SFT and the reward model see the evaluation prompt (zero-shot, no hint), not the
                # sampling one.
                "prompt": build_prompt(
                    ex, tokenizer, style="zero_shot", chat=config.chat, templates=templates
                ),
                # The reply's opening cue (if any) is a partial assistant message to continue.
                "messages": build_messages(ex, "zero_shot", templates=templates) + (
                    [{"role": "assistant", "content": templates["response_start"]}]
                    if templates.get("response_start") else []),
            }
            for ex in examples
        )

        stops = stop_strings(tokenizer, config.chat)
        exemplar_cache: dict[str, list] = {}
        eval_prompts = {qid: row["prompt"] for qid, row in store.questions().items()}

        def free_prompt(ex: Example) -> str:
            pairs = None
            if config.prompt == "few_shot":
                key = f"{ex.dataset}/{ex.answer_type}"
                if key not in exemplar_cache:
                    exemplar_cache[key] = load_exemplars(
                        config.exemplars, ex, config.data.data_dir, config.num_exemplars
                    )
                pairs = exemplar_cache[key]
            return build_prompt(
                ex, tokenizer, style=config.prompt, exemplars=pairs, chat=config.chat, templates=templates
            )

        def hinted_prompt(ex: Example, answer: str) -> str:
            return build_prompt(
                ex, tokenizer, hint=hint_text(ex, answer), chat=config.chat, templates=templates
            )

        state = {"generator": generator, "new_rows": 0, "new_tokens": 0, "calls": 0, "phases_skipped": 0}

        def get_generator():
            # Made on first need, so a rerun of a finished folder never builds it.
            if state["generator"] is None:
                state["generator"] = make_generator(
                    model, tokenizer, backend=config.backend, max_seqs=config.batch_size
                )
            return state["generator"]

        row_params = {
            k: getattr(config, k)
            for k in (
                "temperature",
                "top_p",
                "top_k",
                "max_new_tokens",
                "n_free",
                "n_gold",
                "n_wrong",
                "wrong_targets",
                "wrong_strategy",
                "answer_forcing",
                "forcing_max_new_tokens",
            )
        }
        row_params["run_seed"] = config.seed

        def run_phase(kind: str, chunk: list[Example], items: list[tuple[Example, str, str]], n: int) -> None:
            """items: (example, target, prompt). Generate the whole phase if any prompt is missing."""
            if n == 0 or not items:
                return
            done = store.sample_indices(fp, [ex.id for ex in chunk], kind)
            todo = [
                i
                for i, (ex, target, _) in enumerate(items)
                if not set(range(n)) <= done.get((ex.id, target), set())
            ]
            if not todo:
                state["phases_skipped"] += 1
                return
            seed = _call_seed(config.seed, kind, chunk)
            params = SamplingParams(
                max_new_tokens=config.max_new_tokens,
                temperature=config.temperature,
                top_p=config.top_p,
                top_k=config.top_k,
                n=n,
                stop=stops,
                seed=seed,
            )
            gen = get_generator()
            outputs = gen.generate([prompt for _, _, prompt in items], params)
            state["calls"] += 1
            if len(outputs) != len(items) or any(len(o) != n for o in outputs):
                raise RuntimeError(
                    f"generator returned {[len(o) for o in outputs]} completions for "
                    f"{len(items)} prompts x {n}"
                )
            texts = [
                [strip_stop(c.text, stops) if c.finish_reason == "stop" else c.text for c in o]
                for o in outputs
            ]
            forced_texts: list[list[str | None]] = [[None] * n for _ in items]
            if config.answer_forcing:
                # One greedy call over every sample of the phase (fixed composition, as the sampling call).
                cut = FORCING_CUTS[config.forcing_from]
                prompts = [
                    forcing_prompt(eval_prompts[ex.id], cut(t))
                    for (ex, _, _), ts in zip(items, texts)
                    for t in ts
                ]
                forced = gen.generate(
                    prompts,
                    SamplingParams(
                        max_new_tokens=config.forcing_max_new_tokens, temperature=0.0, n=1, stop=("\n",)
                    ),
                )
                state["calls"] += 1
                flat = [strip_stop(f[0].text, ("\n",)) for f in forced]
                forced_texts = [flat[i * n : (i + 1) * n] for i in range(len(items))]
            for i in todo:
                ex, target, _ = items[i]
                rows = []
                for j, (completion, text) in enumerate(zip(outputs[i], texts[i])):
                    ft = forced_texts[i][j]
                    rows.append(
                        {
                            "question_id": ex.id,
                            "kind": kind,
                            "target": target,
                            "sample_index": j,
                            "fingerprint": fp,
                            "text": text,
                            "finish_reason": completion.finish_reason,
                            "n_tokens": len(completion.token_ids),
                            "answer": extract_answer(text, ex.answer_type, ex.choices),
                            "forced_text": ft,
                            "forced": None if ft is None else forced_answer(ft, ex.answer_type, ex.choices),
                            "leak": kind != "free" and detect_leak(text),
                            "params": {
                                **row_params,
                                "n": n,
                                "seed": seed,
                                "prompt": config.prompt if kind == "free" else "hinted",
                            },
                        }
                    )
                    state["new_tokens"] += len(completion.token_ids)
                state["new_rows"] += store.add_group(rows)

        chunks = [
            examples[i : i + config.chunk_questions] for i in range(0, len(examples), config.chunk_questions)
        ]
        progress = None
        if config.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(examples), desc="rationales", unit="q", dynamic_ncols=True)
        start = time.perf_counter()
        for chunk in chunks:
            run_phase("free", chunk, [(ex, "", free_prompt(ex)) for ex in chunk], config.n_free)
            run_phase(
                "gold", chunk, [(ex, ex.gold, hinted_prompt(ex, ex.gold)) for ex in chunk], config.n_gold
            )
            if config.n_wrong and config.wrong_targets:
                items = [
                    (ex, target, hinted_prompt(ex, target))
                    for ex in chunk
                    for target in choose_wrong_answers(
                        ex,
                        config.wrong_targets,
                        config.wrong_strategy,
                        config.seed,
                        store.free_answers(fp, ex.id),
                    )
                ]
                run_phase("wrong", chunk, items, config.n_wrong)
            if progress is not None:
                progress.update(len(chunk))
        seconds = time.perf_counter() - start
        if progress is not None:
            progress.close()
        n_rows = sum(store.fingerprints_in_use().values())
    finally:
        store.close()
    return {
        "run_dir": str(config.run_dir),
        "store": str(Path(config.run_dir) / "rationales.sqlite"),
        "fingerprint": fp,
        "n_questions": len(examples),
        "n_new_rationales": state["new_rows"],
        "n_rationales": n_rows,
        "generate_calls": state["calls"],
        "phases_skipped": state["phases_skipped"],
        "seconds": round(seconds, 2),
        "new_tokens": state["new_tokens"],
        "tokens_per_second": round(state["new_tokens"] / seconds, 2)
        if seconds > 0 and state["new_tokens"]
        else None,
    }
