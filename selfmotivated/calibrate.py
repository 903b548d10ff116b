"""`sml calibrate`: find the difficulty of a task at which the model can start to teach itself.

STaR (Zelikman et al. 2022) found that rationale bootstrapping needs the model to be right some of the time on its
own; it also needs room to improve. For each difficulty setting of a generated task (reasoning-gym's or our
synthetic tasks' `task_options`) this measures, on N questions of that setting:

- greedy zero-shot accuracy (with its Wilson interval), and few-shot accuracy when asked, through `run_eval`;
- pass@k at a sampling temperature: k samples per question, the unbiased estimator of Chen et al. 2021
  (arXiv 2107.03374, eq. 1), for every k up to the number of samples. Greedy decoding understates what a small
  model can do: its samples are where the correct rationales of SFT and the pairs of the reward model come from.

On tasks with few answers (yes/no, choices: at most 10 distinct golds) it also measures whether the greedy
answers depend on the question: accuracy per gold answer, and their mean over the answered questions (the
balanced accuracy). A model that says "yes" to everything scores well on the "yes" questions and not at all
on the "no" ones, and its balanced accuracy is chance (1 / the number of answers). Such a setting is
refused: its right rationales are right by habit, and pass@k says nothing there (a guesser's pass@8 on a
yes/no task is 1 - 0.5^8 = 0.996; the table shows it beside the model's).

It then picks the setting whose greedy accuracy lies in a band (default 25-45%: above chance, below saturation)
and whose pass@8 is high enough that most questions yield a correct rationale (default >= 0.75), and writes
OUT/calibration.json, OUT/calibration.md (a table) and OUT/calibration.png. Each setting lives in
OUT/settings/<setting>/ and is resumable like `sml eval`: a finished setting is reused (the model is not even
loaded), an interrupted one continues where it stopped, and settings can be added to the list later.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .data import DataConfig, load_examples

log = logging.getLogger(__name__)


@dataclass
class CalibrateConfig:
    model: str = field(default="smollm2-135m-instruct",
                       metadata={"help": "model name (smollm2-135m-instruct, tiny-random), local folder or hub id"})
    out: str | None = field(default=None, metadata={"help": "output folder (calibration.json/.md/.png, settings/)"})
    settings: tuple[str, ...] = field(default=(), metadata={
        "help": "difficulty settings to measure, each the task options that differ, as 'KEY=VALUE,KEY=VALUE' "
                "(in YAML a list of mappings); each is applied over data.task_options. Empty: one setting, "
                "data.task_options as given"})
    questions: int = field(default=80, metadata={"help": "questions per setting (greedy and few-shot)"})
    sample_questions: int | None = field(default=None, metadata={
        "help": "of those, how many get k samples for pass@k (default: all)"})
    samples: int = field(default=8, metadata={"help": "samples per question for pass@k (0: greedy only)"})
    temperature: float = field(default=0.8, metadata={"help": "sampling temperature of the pass@k samples"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus sampling threshold of the samples"})
    max_new_tokens: int = field(default=128, metadata={"help": "tokens per answer at most (greedy and samples)"})
    few_shot: bool = field(default=False, metadata={
        "help": "also measure greedy few-shot accuracy (our exemplars for the answer type)"})
    band: tuple[float, ...] = field(default=(0.25, 0.45), metadata={
        "help": "greedy zero-shot accuracy band the chosen setting must lie in: LOW HIGH"})
    min_pass: float = field(default=0.75, metadata={"help": "pass@k the chosen setting must reach at least"})
    pass_k: int = field(default=8, metadata={"help": "the k of that pass@k (at most samples)"})
    seed: int = field(default=0, metadata={"help": "sampling seed"})
    chat: str = field(default="auto", metadata={"help": "use the chat template: auto, always or never",
                                                "choices": ["auto", "always", "never"]})
    templates: str | None = field(default=None, metadata={"help": "JSON file overriding our prompt templates"})
    batch_size: int = field(default=64, metadata={"help": "sequences decoded at once"})
    backend: str = field(default="engine", metadata={"help": "generation backend: engine (ours) or hf",
                                                     "choices": ["engine", "hf"]})
    dtype: str = field(default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16"})
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    plot: bool = field(default=True, metadata={"help": "write calibration.png"})
    progress: bool = field(default=True, metadata={"help": "show progress bars"})
    data: DataConfig = field(default_factory=lambda: DataConfig(split="train"), metadata={"cli": False})

    def __post_init__(self):
        from .data import parse_task_options

        if isinstance(self.data, dict):
            from .config import build_config

            self.data = build_config(DataConfig, self.data, "calibrate.data")
        # Flags give "KEY=VALUE,KEY=VALUE" strings, YAML gives mappings (or such strings): keep dicts.
        self.settings = tuple(parse_task_options(s) if s not in ("", "default", None) else {}
                              for s in self.settings)
        if self.questions < 1:
            raise ValueError(f"questions must be >= 1, got {self.questions}")
        if self.sample_questions is not None and not 0 <= self.sample_questions <= self.questions:
            raise ValueError(f"sample_questions must be between 0 and questions ({self.questions}), "
                             f"got {self.sample_questions}")
        if self.samples < 0:
            raise ValueError(f"samples must be >= 0, got {self.samples}")
        if self.samples and not 1 <= self.pass_k <= self.samples:
            raise ValueError(f"pass_k must be between 1 and samples ({self.samples}), got {self.pass_k}")
        self.band = tuple(float(x) for x in self.band)
        if len(self.band) != 2 or not 0 <= self.band[0] <= self.band[1] <= 1:
            raise ValueError(f"band must be two accuracies LOW HIGH with 0 <= LOW <= HIGH <= 1, got {self.band}")
        if not 0 <= self.min_pass <= 1:
            raise ValueError(f"min_pass must be between 0 and 1, got {self.min_pass}")
        if self.temperature <= 0 and self.samples:
            raise ValueError("temperature must be > 0 for pass@k samples (or set samples: 0)")
        if self.max_new_tokens < 1 or self.batch_size < 1:
            raise ValueError("max_new_tokens and batch_size must be >= 1")


# ------------------------------------------------------------------------------------------------ pure parts


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of one question with c correct among n samples (Chen et al. 2021, eq. 1):
    1 - C(n-c, k) / C(n, k), as their numerically stable product."""
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: list[tuple[int, int]], k: int) -> float | None:
    """pass@k averaged over questions, each (n samples, c correct); None without questions."""
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) if counts else None


MAX_ANSWERS_FOR_BALANCE = 10


def answer_balance(predictions: list[dict], max_answers: int = MAX_ANSWERS_FOR_BALANCE) -> dict | None:
    """Greedy answers split by gold, for tasks with few answers: {"by_gold": {gold: {"n", "answered",
    "accuracy", "accuracy_answered"}}, "balanced_accuracy_answered": the mean over golds of the accuracy among
    answered questions, "chance": 1 / the number of golds}. None with more than `max_answers` golds (numbers)
    or fewer than two. predictions: sml eval's rows {gold, prediction, correct}."""
    by_gold: dict[str, list[int]] = {}
    for row in predictions:
        counts = by_gold.setdefault(str(row.get("gold")).strip().lower(), [0, 0, 0])  # n, answered, right
        counts[0] += 1
        counts[1] += row.get("prediction") is not None
        counts[2] += bool(row.get("correct"))
    if not 2 <= len(by_gold) <= max_answers:
        return None
    sides = {gold: {"n": n, "answered": answered, "accuracy": right / n,
                    "accuracy_answered": right / answered if answered else None}
             for gold, (n, answered, right) in sorted(by_gold.items())}
    answered = [v["accuracy_answered"] for v in sides.values() if v["accuracy_answered"] is not None]
    return {"by_gold": sides, "balanced_accuracy_answered": sum(answered) / len(answered) if answered else None,
            "chance": 1 / len(sides)}


def guesser_pass_at_k(n_answers: int, k: int) -> float:
    """pass@k of a guesser drawing uniformly among n_answers answers: what pass@k is worth on such a task."""
    return 1 - (1 - 1 / n_answers) ** k


def pick_setting(rows: list[dict], band: tuple[float, float] = (0.25, 0.45), min_pass: float = 0.75,
                 k: int = 8) -> dict:
    """The setting to train on: greedy accuracy within `band` and pass@k >= `min_pass`; among several, the
    one whose greedy accuracy is nearest the band's middle (then the higher pass@k, then the first).

    A setting whose greedy answers are at chance on balance (`answer_balance`) never fits.

    rows: {"label", "greedy_accuracy", "pass_at": {k: value}, "greedy_balance" (optional)}. Returns {"chosen":
    index or None, "label",
    "verdicts": one line per row, "reason"}."""
    low, high = band
    middle = (low + high) / 2
    verdicts, fits = [], []
    for i, row in enumerate(rows):
        acc = row.get("greedy_accuracy")
        pk = (row.get("pass_at") or {}).get(k, (row.get("pass_at") or {}).get(str(k)))
        problems = []
        if acc is None:
            problems.append("no greedy accuracy")
        elif acc < low:
            problems.append(f"greedy {100 * acc:.0f}% below the band")
        elif acc > high:
            problems.append(f"greedy {100 * acc:.0f}% above the band")
        if pk is None:
            problems.append(f"no pass@{k}")
        elif pk < min_pass:
            problems.append(f"pass@{k} {pk:.2f} < {min_pass:.2f}")
        balance = row.get("greedy_balance") or {}
        balanced, chance = balance.get("balanced_accuracy_answered"), balance.get("chance")
        if balanced is not None and chance is not None and balanced <= chance:
            sides = ", ".join(f"{g} {100 * v['accuracy']:.0f}%" for g, v in balance["by_gold"].items())
            problems.append(f"answers by habit: balanced accuracy of answered questions {100 * balanced:.0f}%, "
                            f"chance {100 * chance:.0f}% (by gold: {sides})")
        verdicts.append("; ".join(problems) if problems else "fits")
        if not problems:
            fits.append((round(abs(acc - middle), 9), -pk, i))  # rounded: 0.30 and 0.40 are equally near 0.35
    band_text = f"greedy accuracy in {100 * low:.0f}-{100 * high:.0f}% and pass@{k} >= {min_pass:.2f}"
    if not fits:
        greedy = [r.get("greedy_accuracy") for r in rows if r.get("greedy_accuracy") is not None]
        if greedy and min(greedy) > high:
            hint = "every setting is too easy for the band: add harder ones"
        elif greedy and max(greedy) < low:
            hint = "every setting is too hard for the band: add easier ones"
        elif any("habit" in v for v in verdicts):
            hint = ("the settings in the band answer by habit, not by the question: an easier setting, or another "
                    "task")
        elif any("pass@" in v and "band" not in v for v in verdicts):
            hint = ("the settings in the band have too few right samples: an easier setting, more samples or a "
                    "lower temperature")
        else:
            hint = "try settings between the nearest ones"
        return {"chosen": None, "label": None, "verdicts": verdicts, "reason": f"no setting has {band_text}; {hint}"}
    best = min(fits)[2]
    others = len(fits) - 1
    return {"chosen": best, "label": rows[best]["label"], "verdicts": verdicts,
            "reason": f"{band_text}" + (f"; nearest the band's middle of {len(fits)} that fit" if others else "")}


def setting_label(options: dict) -> str:
    return ",".join(f"{k}={_value_text(v)}" for k, v in options.items()) or "default"


def _value_text(value) -> str:
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def setting_folder(options: dict) -> str:
    """A folder name from the setting's content (keys sorted), so reordering a list reuses finished work."""
    text = ",".join(f"{k}={_value_text(options[k])}" for k in sorted(options)) or "default"
    safe = re.sub(r"[^A-Za-z0-9_.,=+-]", "_", text)
    if len(safe) > 100 or safe != text:
        import hashlib

        safe = safe[:80] + "-" + hashlib.sha256(text.encode()).hexdigest()[:10]
    return safe


# ------------------------------------------------------------------------------------------------ running


def _write_json(path: Path, data) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")
    os.replace(tmp, path)


def _setting_data(config: CalibrateConfig, options: dict) -> DataConfig:
    """The questions of one setting: the first `questions` of the configured split, base options + setting."""
    count = {"n_train": config.questions} if config.data.split == "train" else (
        {"n_test": config.questions} if config.data.split == "test" else {})
    return dataclasses.replace(config.data, task_options={**config.data.task_options, **options},
                               limit=config.questions, **count)


def _identity(config: CalibrateConfig, data: DataConfig) -> dict:
    """What decides a setting's numbers (band, min_pass and pass_k only decide the pick: not here)."""
    from .prompts import templates_digest

    keys = ("model", "questions", "sample_questions", "samples", "temperature", "top_p", "max_new_tokens",
            "few_shot", "seed", "chat", "backend")
    return {**{k: getattr(config, k) for k in keys}, "templates_digest": templates_digest(config.templates),
            "data": json.loads(json.dumps(asdict(data), default=str))}


class _Model:
    """The model, loaded the first time a setting needs it (never when every setting is finished)."""

    def __init__(self, config: CalibrateConfig):
        self.config, self.model, self.tokenizer, self.generator = config, None, None, None

    def get(self):
        if self.model is None:
            from .generation import make_generator
            from .models import load_model

            c = self.config
            self.model, self.tokenizer = load_model(c.model, dtype=c.dtype, device=c.device)
            self.generator = make_generator(self.model, self.tokenizer, backend=c.backend,
                                            max_batch_size=c.batch_size)
        return self.model, self.tokenizer, self.generator


def _eval_config(config: CalibrateConfig, data: DataConfig, out: Path, prompt: str):
    from .evaluate import EvalConfig

    return EvalConfig(model=config.model, out=str(out), prompt=prompt, chat=config.chat, templates=config.templates,
                      max_new_tokens=config.max_new_tokens, batch_size=config.batch_size, backend=config.backend,
                      dtype=config.dtype, device=config.device, progress=config.progress, data=data)


def _sample(config: CalibrateConfig, examples, folder: Path, holder: _Model, label: str) -> list[dict]:
    """k samples per question into folder/samples.jsonl, resumably; returns one row per question."""
    from .answers import answers_match, extract_answer
    from .evaluate import _read_jsonl
    from .generation import SamplingParams
    from .prompts import build_prompt, load_templates, stop_strings

    path = folder / "samples.jsonl"
    rows = _read_jsonl(path)
    if rows:  # without a torn last line, so appended rows start on a line of their own
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = {r["id"] for r in rows}
    todo = [(i, ex) for i, ex in enumerate(examples) if ex.id not in done]
    if todo:
        _, tokenizer, generator = holder.get()
        templates = load_templates(config.templates)
        progress = None
        if config.progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(examples), initial=len(done), desc=f"pass@k {label}", unit="q",
                            dynamic_ncols=True)
        # A chunk fills the decode batch a few times over; its seed comes from its first question's position.
        chunk = max(1, config.batch_size // config.samples) * 2
        with path.open("a") as sink:
            for start in range(0, len(todo), chunk):
                part = todo[start:start + chunk]
                prompts = [build_prompt(ex, tokenizer, style="zero_shot", chat=config.chat, templates=templates)
                           for _, ex in part]
                params = SamplingParams(max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                                        top_p=config.top_p, n=config.samples, seed=config.seed + part[0][0],
                                        stop=stop_strings(tokenizer, config.chat))
                for (_, ex), completions in zip(part, generator.generate(prompts, params)):
                    predictions = [extract_answer(c.text, ex.answer_type, ex.choices) for c in completions]
                    correct = [answers_match(p, ex.gold, ex.answer_type) for p in predictions]
                    row = {"id": ex.id, "gold": ex.gold, "n": len(correct), "n_correct": sum(correct),
                           "predictions": predictions, "correct": correct,
                           "new_tokens": sum(len(c.token_ids) for c in completions),
                           "texts": [c.text for c in completions]}
                    sink.write(json.dumps(row) + "\n")
                    rows.append(row)
                sink.flush()
                os.fsync(sink.fileno())
                if progress is not None:
                    progress.update(len(part))
        if progress is not None:
            progress.close()
    keep = {ex.id for ex in examples}
    return [r for r in rows if r["id"] in keep]


def _greedy_balance(folder: Path) -> dict | None:
    from .evaluate import _read_jsonl

    return answer_balance(_read_jsonl(folder / "zero_shot" / "predictions.jsonl"))


def measure_setting(config: CalibrateConfig, options: dict, root: Path, holder: _Model) -> dict:
    """One setting's numbers (from OUT/settings/<setting>/result.json when it is finished)."""
    from .evaluate import run_eval

    data = _setting_data(config, options)
    label = setting_label(options)
    folder = root / "settings" / setting_folder(options)
    folder.mkdir(parents=True, exist_ok=True)
    identity = _identity(config, data)
    result_path = folder / "result.json"
    if result_path.is_file():
        before = json.loads(result_path.read_text())
        if before.get("identity") == identity:
            log.info("setting %s: finished before, reused", label)
            return before
    id_path = folder / "identity.json"
    if id_path.is_file():
        before = json.loads(id_path.read_text())
        changed = sorted(k for k in identity if before.get(k) != identity[k])
        if changed:
            raise ValueError(f"{folder} holds results made with other settings ({', '.join(changed)} differ); "
                             f"use another --out folder or delete {folder}")
    _write_json(id_path, identity)
    start = time.perf_counter()
    examples = load_examples(data)
    if len(examples) < config.questions:
        raise ValueError(f"setting {label}: only {len(examples)} questions in {data.dataset} "
                         f"{data.split}, {config.questions} asked")

    def evaluate(prompt: str) -> dict:
        eval_config = _eval_config(config, data, folder / prompt, prompt)
        metrics_path = folder / prompt / "metrics.json"
        if metrics_path.is_file():  # finished: run_eval would only re-read it, but it needs no model then
            metrics = json.loads(metrics_path.read_text())
            if metrics.get("n") == len(examples):
                return metrics
        model, tokenizer, _ = holder.get()
        return run_eval(eval_config, model=model, tokenizer=tokenizer, examples=examples)

    greedy = evaluate("zero_shot")
    few = evaluate("few_shot") if config.few_shot else None
    sampled = []
    if config.samples:
        n_sampled = config.questions if config.sample_questions is None else config.sample_questions
        sampled = _sample(config, examples[:n_sampled], folder, holder, label) if n_sampled else []
    counts = [(r["n"], r["n_correct"]) for r in sampled]
    result = {
        "label": label, "options": options, "task_options": data.task_options, "folder": folder.name,
        "dataset": data.dataset, "n": greedy["n"],
        "greedy_accuracy": greedy["accuracy"], "greedy_ci95": greedy["ci95"],
        "greedy_no_answer": greedy["n_no_answer"],
        "greedy_balance": _greedy_balance(folder),
        "few_shot_accuracy": few["accuracy"] if few else None, "few_shot_ci95": few["ci95"] if few else None,
        "sampled_questions": len(sampled), "samples_per_question": config.samples,
        "sample_correct_counts": [c for _, c in counts],
        "sample_accuracy": (sum(c for _, c in counts) / sum(n for n, _ in counts)) if counts else None,
        "sample_no_answer": (sum(p is None for r in sampled for p in r["predictions"])
                             / max(1, sum(r["n"] for r in sampled))) if sampled else None,
        "pass_at": {k: mean_pass_at_k(counts, k) for k in range(1, config.samples + 1)} if counts else {},
        "seconds": round(time.perf_counter() - start, 1),
        "identity": identity,
    }
    _write_json(result_path, result)
    return result


def run_calibrate(config: CalibrateConfig) -> dict:
    """Measure every setting (resuming), pick one, write calibration.json/.md/.png; returns the json."""
    if not config.out:
        raise ValueError("calibrate needs an output folder: pass --out DIR")
    root = Path(config.out)
    root.mkdir(parents=True, exist_ok=True)
    settings = list(config.settings) or [{}]
    labels = [setting_label(s) for s in settings]
    if len(set(labels)) != len(labels):
        raise ValueError(f"settings repeat: {labels}")
    holder = _Model(config)
    rows = [measure_setting(config, options, root, holder) for options in settings]
    rows = [{k: v for k, v in row.items() if k != "identity"} for row in rows]
    for row in rows:  # JSON keys are text: pass@k back to int keys for the pick
        row["pass_at"] = {int(k): v for k, v in (row.get("pass_at") or {}).items()}
        if "greedy_balance" not in row:  # a setting measured before the balance existed
            row["greedy_balance"] = _greedy_balance(root / "settings" / row["folder"])
    k = config.pass_k if config.samples else 0
    pick = pick_setting(rows, config.band, config.min_pass, k)
    result = {
        "dataset": config.data.dataset, "model": config.model, "split": config.data.split,
        "base_task_options": config.data.task_options, "band": list(config.band), "min_pass": config.min_pass,
        "pass_k": k, "chosen": pick["label"], "chosen_task_options": (
            {**config.data.task_options, **settings[pick["chosen"]]} if pick["chosen"] is not None else None),
        "reason": pick["reason"], "rows": [{**row, "verdict": v} for row, v in zip(rows, pick["verdicts"])],
        "config": json.loads(json.dumps(asdict(config), default=str)),
    }
    _write_json(root / "calibration.json", result)
    (root / "calibration.md").write_text(format_calibration(result))
    if config.plot:
        plot_calibration(result, root / "calibration.png")
    return result


# ------------------------------------------------------------------------------------------------ output


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def format_calibration(result: dict) -> str:
    """calibration.md: one row per setting, the pick and why."""
    k = result["pass_k"]
    low, high = result["band"]
    rows = result["rows"]
    few = any(r.get("few_shot_accuracy") is not None for r in rows)
    balance = any(r.get("greedy_balance") for r in rows)
    head = (["setting", "n", "greedy zero-shot", "95% CI", "no answer"] + (["few-shot"] if few else [])
            + (["balanced (answered)", "chance"] if balance else [])
            + ["sampled right", f"pass@{k}" if k else "pass@k"] + ([f"a guesser's pass@{k}"] if balance and k else [])
            + ["verdict"])
    lines = [f"# Calibration: {result['dataset']} on {result['model']}", "",
             f"Questions of the {result['split']} split; base task options {result['base_task_options'] or '{}'}. "
             f"Band: greedy zero-shot accuracy {100 * low:.0f}-{100 * high:.0f}%, pass@{k} >= "
             f"{result['min_pass']:.2f}.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        chosen = r["label"] == result["chosen"]
        ci = r.get("greedy_ci95") or [None, None]
        cells = [f"**{r['label']}**" if chosen else r["label"], str(r["n"]), _pct(r["greedy_accuracy"]),
                 f"{_pct(ci[0])}-{_pct(ci[1])}", str(r.get("greedy_no_answer", "-"))]
        if few:
            cells.append(_pct(r.get("few_shot_accuracy")))
        b = r.get("greedy_balance") or {}
        if balance:
            cells += [_pct(b.get("balanced_accuracy_answered")), _pct(b.get("chance"))]
        samples = (f"{_pct(r['sample_accuracy'])} of {r['sampled_questions'] * r['samples_per_question']}"
                   if r.get("sample_accuracy") is not None else "-")
        pk = (r.get("pass_at") or {}).get(k, (r.get("pass_at") or {}).get(str(k)))
        cells += [samples, "-" if pk is None else f"{pk:.2f}"]
        if balance and k:
            cells.append(f"{guesser_pass_at_k(len(b['by_gold']), k):.3f}" if b else "-")
        cells.append(r.get("verdict", ""))
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    if result["chosen"] is None:
        lines.append(f"No setting chosen: {result['reason']}.")
    else:
        lines.append(f"Chosen: **{result['chosen']}** ({result['reason']}); task options "
                     f"`{json.dumps(result['chosen_task_options'])}`.")
    c = result["config"]
    lines += ["", f"Greedy and sampled answers: zero-shot chat prompt, {c['max_new_tokens']} new tokens; samples at "
              f"temperature {c['temperature']}, top-p {c['top_p']}, {c['samples']} per question; pass@k by the "
              "unbiased estimator of Chen et al. 2021. "
              + ("Balanced (answered): accuracy among the answered questions of each gold answer, averaged over "
                 "the golds; at or below chance, the answers do not depend on the question. " if balance else "")
              + "Seconds per setting: "
              + ", ".join(f"{r['label']} {r.get('seconds', 0):.0f}" for r in rows) + ".", ""]
    return "\n".join(lines)


def plot_calibration(result: dict, path: Path) -> None:
    """Accuracy and pass@k per setting, the band shaded, the chosen setting marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = result["rows"]
    k = result["pass_k"]
    x = list(range(len(rows)))
    fig, ax = plt.subplots(figsize=(max(5.5, 1.3 * len(rows) + 2), 4.2))
    low, high = result["band"]
    ax.axhspan(low, high, color="tab:green", alpha=0.15, label=f"greedy band {100 * low:.0f}-{100 * high:.0f}%")
    if k:
        ax.axhline(result["min_pass"], color="tab:red", ls=":", lw=1, label=f"pass@{k} needed")
    greedy = [r["greedy_accuracy"] for r in rows]
    errs = [[max(0.0, g - r["greedy_ci95"][0]) for g, r in zip(greedy, rows)],
            [max(0.0, r["greedy_ci95"][1] - g) for g, r in zip(greedy, rows)]]
    ax.errorbar(x, greedy, yerr=errs, marker="o", capsize=3, label="greedy zero-shot (95% CI)")
    if any(r.get("few_shot_accuracy") is not None for r in rows):
        ax.plot(x, [r.get("few_shot_accuracy") if r.get("few_shot_accuracy") is not None else math.nan
                    for r in rows], marker="s", ls="--", label="greedy few-shot")
    if k:
        ax.plot(x, [r.get("sample_accuracy") if r.get("sample_accuracy") is not None else math.nan for r in rows],
                marker="^", ls="--", label=f"sampled (T={result['config']['temperature']})")
        ax.plot(x, [(r.get("pass_at") or {}).get(k, math.nan) for r in rows], marker="D", label=f"pass@{k}")
    for i, r in enumerate(rows):
        if r["label"] == result["chosen"]:
            ax.axvspan(i - 0.3, i + 0.3, color="gold", alpha=0.3, label="chosen")
    ax.set_xticks(x, [r["label"].replace(",", "\n") for r in rows], fontsize=7)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("accuracy / pass@k")
    ax.set_title(f"{result['dataset']}: {result['model']}", fontsize=10)
    ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def format_summary(result: dict) -> str:
    """A few lines for the terminal."""
    k = result["pass_k"]
    lines = []
    for r in result["rows"]:
        pk = (r.get("pass_at") or {}).get(k)
        lines.append(f"{r['label']:<48} greedy {_pct(r['greedy_accuracy']):>6}  sampled "
                     f"{_pct(r.get('sample_accuracy')):>6}  pass@{k} {'-' if pk is None else f'{pk:.2f}'}  "
                     f"{r['verdict']}")
    lines.append(f"chosen: {result['chosen']} ({result['reason']})" if result["chosen"]
                 else f"no setting chosen: {result['reason']}")
    return "\n".join(lines)
