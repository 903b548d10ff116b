"""Expert iteration, the `sft_round2` control: a second SFT round on the SFT model's own correct samples.

    samples = SFT model, sampled as PPO samples (same questions in the same order, same temperature, token
              limit and number of responses as all of PPO's rollouts)
    kept    = the samples our answer checker finds right
    model   = SFT model fine-tuned on `kept` (the pipeline's SFT settings)

It spends PPO's sampling budget with the simplest use of a verifier (keep what is right, imitate it: STaR,
Zelikman et al. 2022; RFT, Yuan et al. 2023), so a gain of SML over it is a gain of the reward model and
PPO, not of seeing more samples. Resumable: the samples are written once (samples.jsonl, with the settings
that made them) and SFT resumes from its own checkpoints.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import DataConfig

log = logging.getLogger(__name__)


@dataclass
class ExpertIterationConfig:
    """`sft_round2`: sample the SFT model on the training questions, fine-tune it on its correct samples."""

    sft_model: str = field(default="", metadata={"help": "the SFT model: it samples, and it is fine-tuned"})
    out: str = field(default="", metadata={"help": "output folder (samples.jsonl, kept.jsonl, model/)"})
    samples: int = field(default=1024, metadata={
        "help": "responses sampled in all (the pipeline sets PPO's iterations x prompts x samples per prompt)"})
    samples_per_prompt: int = field(default=4, metadata={"help": "responses per question per pass"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature (PPO's)"})
    max_new_tokens: int = field(default=256, metadata={"help": "token limit of a response (PPO's)"})
    prompt: str = field(default="zero_shot", metadata={"help": "zero_shot or few_shot prompts"})
    chat: str = field(default="auto", metadata={"help": "use the chat template: auto, always or never"})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding our prompt templates"})
    seed: int = field(default=0, metadata={"help": "seed of the question order and of sampling"})
    generation_batch_size: int = field(default=64, metadata={"help": "sequences decoded at once"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    sft: dict = field(default_factory=dict, metadata={"help": "SFTConfig keys of the fine-tuning"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="train"), metadata={"cli": False})

    def __post_init__(self):
        if isinstance(self.data, dict):
            from .config import build_config

            self.data = build_config(DataConfig, {"split": "train", **self.data}, "sft_round2.data")
        for name in ("samples", "samples_per_prompt", "max_new_tokens", "generation_batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")


def question_schedule(n_questions: int, samples: int, per_prompt: int, seed: int) -> list[int]:
    """Question indices in PPO's order (a seeded permutation per pass over the questions), one entry per
    prompt, enough prompts for `samples` responses."""
    from .ppo.trainer import prompt_order

    n_prompts = -(-samples // per_prompt)
    return [prompt_order(n_questions, seed, g // n_questions)[g % n_questions] for g in range(n_prompts)]


def training_row(example, prompt: str, text: str) -> dict:
    """An SFT row from a correct sample: its reasoning and our final-answer line for the gold, as the first
    SFT round's rows are made (rationales.rank.sft_record)."""
    from .answers import format_answer_line
    from .rationales.checks import split_answer_line
    from .rationales.rank import after_prompt

    body, _ = split_answer_line(text)
    line = format_answer_line(example.gold, example.answer_type)
    response = f"{body} {line}" if body else line
    return {"question_id": example.id, "prompt": prompt, "response": after_prompt(prompt, response)}


def sample_correct(config: ExpertIterationConfig, out: Path) -> dict:
    """Write out/samples.jsonl (every sample, checked) and out/kept.jsonl (SFT rows of the correct ones);
    reuse them when they were made with the same settings. Returns counts."""
    from .answers import check_answer
    from .data import load_examples
    from .generation import SamplingParams, make_generator
    from .models import load_model
    from .prompts import build_prompt, load_templates, stop_strings
    from .training import write_json

    settings = {k: v for k, v in asdict(config).items() if k not in ("out", "progress", "sft")}
    meta_path = out / "samples_settings.json"
    if meta_path.is_file() and json.loads(meta_path.read_text()) == json.loads(json.dumps(settings, default=str)):
        rows = [json.loads(x) for x in (out / "samples.jsonl").read_text().splitlines() if x.strip()]
        return {"samples": len(rows), "correct": sum(r["correct"] for r in rows), "reused": True}
    t0 = time.perf_counter()
    examples = load_examples(config.data)
    if not examples:
        raise ValueError(f"sft_round2: dataset {config.data.dataset!r} has no training questions")
    model, tokenizer = load_model(config.sft_model)
    templates = load_templates(config.templates)
    prompts = [build_prompt(ex, tokenizer, style=config.prompt, chat=config.chat, templates=templates)
               for ex in examples]
    schedule = question_schedule(len(examples), config.samples, config.samples_per_prompt, config.seed)
    params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            n=config.samples_per_prompt, seed=config.seed, stop=stop_strings(tokenizer, config.chat))
    generator = make_generator(model, tokenizer, max_seqs=config.generation_batch_size)
    completions = generator.generate([prompts[i] for i in schedule], params, progress=config.progress)
    rows, kept = [], []
    for slot, (i, samples) in enumerate(zip(schedule, completions)):
        for j, c in enumerate(samples):
            prediction, ok = check_answer(c.text, examples[i])
            rows.append({"id": examples[i].id, "slot": slot, "sample": j, "text": c.text, "prediction": prediction,
                         "correct": bool(ok), "finish_reason": c.finish_reason})
            if ok:
                kept.append(training_row(examples[i], prompts[i], c.text))
    rows = rows[: config.samples]
    out.mkdir(parents=True, exist_ok=True)
    (out / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (out / "kept.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    write_json(meta_path, settings)
    log.info("sft_round2: %d of %d samples right (%.0f s)", len(kept), len(rows), time.perf_counter() - t0)
    return {"samples": len(rows), "correct": len(kept), "reused": False}


def policy_pairs(folder: str | Path, max_pairs_per_question: int | None = 16, seed: int = 0) -> list[dict]:
    """Reward-model pairs from the SFT model's own checked samples (`folder`: a finished `sft_round2`, its
    samples.jsonl, kept.jsonl and samples_settings.json): every right sample of a question above every wrong
    one (pair type policy>policy, tiers 3 and 1, as the rank's free samples), each distinct text once, at most
    `max_pairs_per_question` a question (a seeded subsample). These are what PPO will show the reward model,
    the policy's free samples, and they are read as PPO reads its rollouts (`reward_views`: a text that
    states an answer ends at our answer line). A question needs a right sample for its prompt (kept.jsonl
    holds it) and a wrong one for a pair."""
    import random

    from .config import build_config
    from .data import load_examples
    from .rationales.rank import reward_views

    folder = Path(folder)
    samples_file, kept_file, settings_file = (folder / n for n in
                                              ("samples.jsonl", "kept.jsonl", "samples_settings.json"))
    for f in (samples_file, kept_file, settings_file):
        if not f.is_file():
            raise FileNotFoundError(f"{f} not found: policy pairs come from a finished sft_round2 stage "
                                    f"(its samples.jsonl, kept.jsonl and samples_settings.json)")
    data = build_config(DataConfig, json.loads(settings_file.read_text())["data"], f"{settings_file}: data")
    examples = {ex.id: ex for ex in load_examples(data)}
    prompts = {}
    for line in kept_file.read_text().splitlines():
        if line.strip():
            row = json.loads(line)
            prompts.setdefault(str(row["question_id"]), row["prompt"])
    by_question: dict[str, dict[str, tuple[bool, bool]]] = {}  # id -> response as scored -> (correct, finished)
    for n, line in enumerate(samples_file.read_text().splitlines(), 1):
        if not line.strip():
            continue
        row = json.loads(line)
        missing = [k for k in ("id", "text", "correct") if k not in row]
        if missing:
            raise ValueError(f"{samples_file}:{n}: missing key(s) {missing}")
        example = examples.get(row["id"])
        if example is None:
            raise ValueError(f"{samples_file}:{n}: question {row['id']!r} is not in {data.dataset!r} "
                             f"(the dataset samples_settings.json names)")
        (view,), (finished,) = reward_views([row["text"]], [example], [row.get("finish_reason") == "length"])
        if view:
            by_question.setdefault(str(row["id"]), {}).setdefault(view, (bool(row["correct"]), finished))
    rng = random.Random(seed)
    pairs = []
    for qid, texts in by_question.items():
        right = [(t, f) for t, (ok, f) in texts.items() if ok]
        wrong = [(t, f) for t, (ok, f) in texts.items() if not ok]
        if not right or not wrong or qid not in prompts:
            continue
        combos = [(r, w) for r in right for w in wrong]
        if max_pairs_per_question and len(combos) > max_pairs_per_question:
            combos = rng.sample(combos, max_pairs_per_question)
        for (chosen, chosen_done), (rejected, rejected_done) in combos:
            pairs.append({"question_id": qid, "prompt": prompts[qid], "chosen": chosen, "rejected": rejected,
                          "chosen_tier": 3, "rejected_tier": 1, "chosen_kind": "policy", "rejected_kind": "policy",
                          "chosen_finished": chosen_done, "rejected_finished": rejected_done,
                          "pair_type": "policy>policy", "_where": f"{samples_file} (question {qid})"})
    return pairs


def run_expert_iteration(config: ExpertIterationConfig) -> dict:
    """Sample, keep the correct samples, fine-tune the SFT model on them into OUT/model. Returns metrics."""
    from .config import build_config
    from .sft import SFTConfig, run_sft

    out = Path(config.out)
    counts = sample_correct(config, out)
    if not counts["correct"]:
        # Nothing right to imitate: expert iteration leaves the model as it was. Said, not hidden.
        import shutil

        log.warning("sft_round2: none of the %d samples of the SFT model is right; its model is the SFT model",
                    counts["samples"])
        shutil.rmtree(out / "model", ignore_errors=True)
        shutil.copytree(config.sft_model, out / "model")
        return {"samples": counts, "sft": None, "note": "no correct sample: the model is the SFT model unchanged"}
    sft = build_config(SFTConfig, {**config.sft, "model": config.sft_model, "train_file": str(out / "kept.jsonl"),
                                   "run_dir": None, "out": str(out), "seed": config.seed}, "sft_round2.sft")
    return {"samples": counts, "sft": run_sft(sft)}
