"""What a run costs before it starts (`sml run CONFIG --plan`), and beside what it took (the report).

Each stage's work follows from its settings (questions, samples, token limits, epochs, iterations):

    generated tokens  sampled rows x their token limit, decoded `width` rows at a time
    forward tokens    no-gradient passes: prompt prefill, answer forcing, reward scoring, PPO's reference
    trained tokens    forward + backward passes: SFT, the reward model, PPO's updates (LoRA or full)

and its minutes from this machine's rates for the model, measured once by a short probe (`probe_throughput`,
~30 s on the default model) and cached in the cache dir (throughput.json, per model, dtype, device, threads
and host):

    seconds = decoding steps x step time at the stage's width + forward tokens / forward rate
              + trained tokens / training rate + model loads and saves x the probe's load time

Decoding step time is a line through the probe's two widths (16 and 64 rows): on a CPU a step costs about
the time to read the weights, so rows in flight are nearly free. Every response is counted at its token limit
and every rationale as kept (SFT and reward-model examples at their caps), so a plan bounds its run from
above; text that ends early, and rationales that fail the checks, make the run shorter. `sml run` writes the
plan to RUN/estimate.json when this machine's rates are cached, and the report sets it beside what each
stage took (stages.json).
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

THROUGHPUT_FILE = "throughput.json"
ESTIMATE_FILE = "estimate.json"
PROBE_WIDTHS = (16, 64)


# ----------------------------------------------------------------------------------------------------
def _device_type() -> str:
    """Where the stages run on this machine by default: "cuda" or "cpu"."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


# This machine's rates


@dataclass
class Throughput:
    """Rates of one model on this machine (tokens per second)."""

    forward_tokens_per_s: float  # no-grad forward over whole sequences (prefill, scoring, reference)
    lora_tokens_per_s: float  # LoRA training: forward + backward (+ the adapter's optimizer step)
    full_tokens_per_s: float  # full fine-tuning: forward + backward
    decode_tokens_per_s: dict = field(default_factory=dict)  # {rows in flight: new tokens per second}
    measured: str = ""  # when, and with what (model, threads)
    load_seconds: float = 0.0  # loading the model once (a stage loads and saves a few)
    busy: str = ""  # why the rates are too low to trust (other jobs on the cores while probing), or ""

    def step_seconds(self, width: int) -> float:
        """Seconds of one decoding step with `width` rows in flight: the line through the probe's widths."""
        points = sorted((int(w), int(w) / rate) for w, rate in self.decode_tokens_per_s.items())
        if len(points) == 1:
            return points[0][1]
        (w0, s0), (w1, s1) = points[0], points[-1]
        slope = max((s1 - s0) / (w1 - w0), 0.0)
        return max(s0 + slope * (width - w0), s0 * min(width, w0) / w0)


def throughput_key(model: str, dtype: str = "auto", device: str = "auto") -> str:
    import torch

    from .models import resolve_model

    folder = resolve_model(model)
    return f"{Path(folder).resolve() if Path(folder).exists() else folder}|{dtype}|{device}|" \
           f"threads={torch.get_num_threads()}|{platform.node()}"


def cached_throughput(model: str, dtype: str = "auto", device: str = "auto",
                      cache: Path | None = None) -> Throughput | None:
    """The cached rates of this model on this machine, or None."""
    path = cache or _cache_path()
    try:
        entry = json.loads(path.read_text()).get(throughput_key(model, dtype, device))
    except (OSError, ValueError):
        return None
    return Throughput(**entry) if entry else None


def load_throughput(model: str, dtype: str = "auto", device: str = "auto", refresh: bool = False,
                    probe: Callable[..., Throughput] | None = None, cache: Path | None = None) -> Throughput:
    """This machine's rates for `model`: cached, or measured now by `probe` (default `probe_throughput`) and
    cached, unless the probe found the machine busy."""
    path = cache or _cache_path()
    if not refresh:
        found = cached_throughput(model, dtype, device, path)
        if found is not None:
            return found
    rates = (probe or probe_throughput)(model, dtype=dtype, device=device)
    if rates.busy:  # used for this plan only: the next plan on a quiet machine measures again
        return rates
    try:
        entries = json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError):
        entries = {}
    entries[throughput_key(model, dtype, device)] = asdict(rates)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(entries, indent=2) + "\n")
    os.replace(tmp, path)
    return rates


def _cache_path() -> Path:
    from .models import cache_dir

    return cache_dir() / THROUGHPUT_FILE


def probe_throughput(model_name: str, dtype: str = "auto", device: str = "auto") -> Throughput:
    """Measure the rates (best of two timed repeats after a warm-up each): a no-grad forward of 2 x 256 tokens,
    full and LoRA (r=16, all linear layers) forward + backward of 2 x 128 tokens, and the generation engine
    sampling 12 new tokens for 16 and for 64 short prompts at once."""
    import torch

    from .generation import SamplingParams, make_generator
    from .models import load_model

    load_before = _load_average()
    t0 = time.perf_counter()
    model, tokenizer = load_model(model_name, dtype=dtype, device=device)
    load = time.perf_counter() - t0
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def ids(rows, n):
        return torch.randint(3, vocab, (rows, n), generator=g).to(dev)

    def best(fn) -> float:
        fn()
        times = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        return min(times)

    x = ids(2, 256)
    with torch.no_grad():
        forward = 512 / best(lambda: model(input_ids=x, use_cache=False))
    y = ids(2, 128)

    def train_step(m):
        m(input_ids=y, labels=y, use_cache=False).loss.backward()
        m.zero_grad(set_to_none=True)

    model.requires_grad_(True)
    full = 256 / best(lambda: train_step(model))
    model.requires_grad_(False)
    decode = {}
    generator = make_generator(model, tokenizer, "engine", max_seqs=max(PROBE_WIDTHS))
    for width in PROBE_WIDTHS:
        prompts = [tokenizer.decode(row) for row in ids(width, 8).tolist()]
        params = SamplingParams(max_new_tokens=12, temperature=1.0, seed=0)
        counted = {}

        def sample():
            out = generator.generate(prompts, params)
            counted["tokens"] = sum(len(c.token_ids) for cs in out for c in cs)

        seconds = best(sample)
        decode[width] = counted["tokens"] / seconds
    from peft import LoraConfig, get_peft_model

    lora_model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear",
                                                  task_type="CAUSAL_LM"))
    lora = 256 / best(lambda: train_step(lora_model))
    busy = busy_reason(load_before, torch.get_num_threads(), os.cpu_count() or 1) if dev.type == "cpu" else ""
    if busy:
        logging.getLogger(__name__).warning("throughput probe: %s", busy)
    return Throughput(forward_tokens_per_s=round(forward, 1), lora_tokens_per_s=round(lora, 1),
                      full_tokens_per_s=round(full, 1),
                      decode_tokens_per_s={str(k): round(v, 1) for k, v in decode.items()},
                      measured=f"{time.strftime('%Y-%m-%d %H:%M')}, {model_name}, "
                               f"{torch.get_num_threads()} threads",
                      load_seconds=round(load, 2), busy=busy)


def busy_reason(load_before: float | None, threads: int, cores: int) -> str:
    """Why rates probed now would be too low, or "": other work on the cores the probe's threads need. Another
    torch job slows every rate several times over (two of them: ~10x). Judged by the load read before the
    probe starts (the probe's own load would count otherwise)."""
    if load_before is None or load_before + threads <= cores + 0.5:
        return ""
    return (f"measured on a busy machine (load average {load_before:.1f} before the probe, {threads} threads on "
            f"{cores} cores): the rates are too low; `--reprobe` when the machine is quiet")


def _load_average(seconds: float = 0.5, stat: str = "/proc/stat") -> float | None:
    """Cores busy right now: from two reads of `stat` `seconds` apart where the file exists (Linux), else the
    one-minute load average. Why not only the load average: it decays over minutes, so a job that has just
    ended still reads as load (a false "busy")."""
    busy = _busy_cores(stat, seconds)
    if busy is not None:
        return busy
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):  # not on every platform
        return None


def _cpu_times(stat: str) -> tuple[int, int] | None:
    """(idle, total) jiffies of all cores from the first line of /proc/stat, or None."""
    try:
        with open(stat) as fh:
            fields = fh.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu" or len(fields) < 5:
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return idle, sum(values[:8])  # user nice system idle iowait irq softirq steal (guests are inside user)


def _busy_cores(stat: str, seconds: float) -> float | None:
    first = _cpu_times(stat)
    if first is None:
        return None
    time.sleep(seconds)
    second = _cpu_times(stat)
    if second is None or second[1] <= first[1]:
        return None
    idle, total = second[0] - first[0], second[1] - first[1]
    return (1 - idle / total) * (os.cpu_count() or 1)


# ----------------------------------------------------------------------------------------------------
# Work per stage


@dataclass
class Work:
    """What one stage computes: decoding runs [(rows, new tokens per row, rows in flight)], forward and
    trained tokens, and how many times it loads or saves a model."""

    decoding: list = field(default_factory=list)
    model_loads: int = 0
    forward_tokens: float = 0.0
    lora_tokens: float = 0.0
    full_tokens: float = 0.0
    notes: list = field(default_factory=list)

    def generate(self, rows: int, tokens: int, width: int) -> None:
        if rows > 0 and tokens > 0:
            self.decoding.append((rows, tokens, max(1, min(width, rows))))

    def train(self, method: str, tokens: float) -> None:
        if method == "full":
            self.full_tokens += tokens
        else:
            self.lora_tokens += tokens

    @property
    def generated_tokens(self) -> int:
        return int(sum(r * t for r, t, _ in self.decoding))

    def seconds(self, rates: Throughput) -> float:
        steps = sum(r * t / w * rates.step_seconds(w) for r, t, w in self.decoding)
        return (steps + self.model_loads * rates.load_seconds + self.forward_tokens / rates.forward_tokens_per_s
                + self.lora_tokens / rates.lora_tokens_per_s + self.full_tokens / rates.full_tokens_per_s)


class _Prompts:
    """Question counts and prompt lengths (tokens shared by all prompts of a call, tokens of the rest), by
    building a few real prompts with the run's tokenizer."""

    def __init__(self, config):
        from transformers import AutoTokenizer

        from .models import resolve_model

        self.config = config
        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model(config.model))
        self._counts, self._lengths = {}, {}

    def count(self, data) -> int:
        from .data import load_examples

        key = json.dumps(asdict(data), sort_keys=True, default=str)
        if key not in self._counts:
            self._counts[key] = len(load_examples(data))
        return self._counts[key]

    def lengths(self, data, prompt: str = "zero_shot", **kw) -> tuple[int, float]:
        """(shared prefix tokens, mean tokens after it) over the first 16 questions of `data`."""
        from .data import DataConfig, load_examples
        from .prompts import build_prompt, load_templates

        key = (json.dumps(asdict(data), sort_keys=True, default=str), prompt, json.dumps(kw, sort_keys=True))
        if key not in self._lengths:
            examples = load_examples(DataConfig(**{**asdict(data), "limit": 16}))
            templates = load_templates(self.config.templates)
            ids = [self.tokenizer(build_prompt(ex, self.tokenizer, style=prompt, templates=templates,
                                               data_dir=data.data_dir, **kw), add_special_tokens=False)["input_ids"]
                   for ex in examples]
            shared = len(os.path.commonprefix(ids)) if len(ids) > 1 else 0
            self._lengths[key] = (shared, sum(len(i) for i in ids) / max(len(ids), 1) - shared)
        return self._lengths[key]

    def full_length(self, data, prompt: str = "zero_shot", **kw) -> float:
        shared, rest = self.lengths(data, prompt, **kw)
        return shared + rest


def _eval_work(work: Work, p: _Prompts, cfg) -> None:
    n = p.count(cfg.data)
    shared, rest = p.lengths(cfg.data, cfg.prompt, exemplars=cfg.exemplars, num_exemplars=cfg.num_exemplars,
                             chat=cfg.chat)
    work.generate(n, cfg.max_new_tokens, cfg.batch_size)
    work.forward_tokens += shared + n * rest
    work.model_loads += 1


def _sft_examples_tokens(p: _Prompts, data, n_per_question: int, response_tokens: int) -> float:
    return p.count(data) * n_per_question * (p.full_length(data) + response_tokens)


def _train_tokens(cfg, examples: float, tokens_per_example: float) -> tuple[float, float]:
    """(trained tokens, validation forward tokens) of a TrainConfig stage over `examples` items."""
    train = examples * (1 - cfg.val_fraction)
    epochs = cfg.epochs
    if cfg.max_steps:
        per_step = cfg.batch_size * cfg.grad_accum
        epochs = min(epochs, cfg.max_steps * per_step / max(train, 1))
    val = examples * cfg.val_fraction * tokens_per_example * math.ceil(epochs)
    return train * tokens_per_example * epochs, val


def stage_work(stage: str, configs: list, p: _Prompts, pipeline) -> Work:
    """The work of one stage's configs (see the module docstring)."""
    work = Work()
    if stage in ("baseline", "evaluate", "transfer"):
        for _, cfg in configs:
            _eval_work(work, p, cfg)
    elif stage == "generate":
        (_, cfg), = configs
        n = p.count(cfg.data)
        per_q = cfg.n_free + cfg.n_gold + cfg.n_wrong * cfg.wrong_targets
        prompt = p.full_length(cfg.data, cfg.prompt, chat=cfg.chat)
        work.generate(n * per_q, cfg.max_new_tokens, cfg.batch_size)
        work.model_loads += 1
        kinds = (cfg.n_free > 0) + (cfg.n_gold > 0) + cfg.wrong_targets * (cfg.n_wrong > 0)
        work.forward_tokens += n * kinds * prompt
        if cfg.answer_forcing:  # each rationale re-read after the unhinted prompt, then a short greedy answer
            work.forward_tokens += n * per_q * (prompt + cfg.max_new_tokens)
            work.generate(n * per_q, cfg.forcing_max_new_tokens, cfg.batch_size)
    elif stage == "sft":
        (_, cfg), = configs
        gen = next(c for _, c in stage_configs_of(pipeline, "generate"))
        cap = _rank().sft_max_per_question
        kept = gen.n_free + gen.n_gold if cap is None else min(cap, gen.n_free + gen.n_gold)
        per_example = p.full_length(gen.data) + gen.max_new_tokens
        trained, val = _train_tokens(cfg, p.count(gen.data) * kept, per_example)
        work.train(cfg.method, trained)
        work.forward_tokens += val
        work.model_loads += 2  # load, save
        work.notes.append(f"at most {kept} top-tier rationales per question")
    elif stage == "reward":
        (_, cfg), = configs
        gen = next(c for _, c in stage_configs_of(pipeline, "generate"))
        responses = gen.n_free + gen.n_gold + gen.n_wrong * gen.wrong_targets
        prompt = p.full_length(gen.data)
        per_question = (prompt + responses * gen.max_new_tokens) if cfg.share_prompt else \
            responses * (prompt + gen.max_new_tokens)
        trained, val = _train_tokens(cfg, p.count(gen.data), per_question)
        work.train(cfg.method, trained)
        work.forward_tokens += val
        work.model_loads += 2  # load, save
        if cfg.policy_pairs:  # expert iteration's samples too: at most all of them, on their questions
            (_, ei), = stage_configs_of(pipeline, "sft_round2")
            ei_prompt = p.full_length(ei.data, ei.prompt, chat=ei.chat)
            per_prompt = (ei_prompt + ei.samples_per_prompt * ei.max_new_tokens) if cfg.share_prompt else \
                ei.samples_per_prompt * (ei_prompt + ei.max_new_tokens)
            trained, val = _train_tokens(cfg, ei.samples // ei.samples_per_prompt, per_prompt)
            work.train(cfg.method, trained)
            work.forward_tokens += val
            work.notes.append(f"and up to {ei.samples} policy samples")
        if cfg.validity_dataset and cfg.validity_questions:
            work.model_loads += 2  # the policy that samples, the saved reward model
            rows = cfg.validity_questions * cfg.validity_samples
            work.generate(rows, cfg.validity_max_new_tokens, 64)
            work.forward_tokens += rows * (prompt + cfg.validity_max_new_tokens)
        work.notes.append(f"at most {responses} responses per question")
    elif stage in ("ppo", "ppo_checker"):
        (_, cfg), = configs
        rows = cfg.prompts_per_iteration * cfg.samples_per_prompt
        prompt = p.full_length(cfg.data, cfg.prompt, exemplars=cfg.exemplars, num_exemplars=cfg.num_exemplars,
                               chat=cfg.chat)
        from .ppo.config import shares_prompts

        shared = shares_prompts(cfg, _device_type())
        per_pass = (cfg.prompts_per_iteration * prompt if shared else rows * prompt) \
            + rows * cfg.max_new_tokens
        passes = 1 + (cfg.reward in ("rm", "rm+checker")) + (not cfg.reuse_sampler_logprobs) \
            + (cfg.advantage == "gae")
        for _ in range(cfg.iterations):
            work.generate(rows, cfg.max_new_tokens, cfg.generation_batch_size)
        work.model_loads += 3 + cfg.iterations // cfg.save_steps  # load, save and merge the policy; checkpoints
        work.forward_tokens += cfg.iterations * passes * per_pass
        work.train(cfg.method, cfg.iterations * cfg.ppo_epochs * per_pass * (1 + (cfg.advantage == "gae")))
        if cfg.eval_steps and cfg.eval_limit:
            evals = cfg.iterations // cfg.eval_steps + 1
            eval_prompt = p.full_length(cfg.data, cfg.prompt, chat=cfg.chat)
            for _ in range(evals):
                work.generate(cfg.eval_limit, cfg.max_new_tokens, cfg.generation_batch_size)
                work.forward_tokens += cfg.eval_limit * eval_prompt
    elif stage == "sft_round2":
        (_, cfg), = configs
        from .sft import SFTConfig

        work.generate(cfg.samples, cfg.max_new_tokens, cfg.generation_batch_size)
        work.model_loads += 3  # the sampler, SFT's load and save
        prompt = p.full_length(cfg.data, cfg.prompt, chat=cfg.chat)
        work.forward_tokens += cfg.samples / cfg.samples_per_prompt * prompt
        sft = SFTConfig(**{k: v for k, v in cfg.sft.items() if k in SFTConfig.__dataclass_fields__})
        trained, val = _train_tokens(sft, cfg.samples, prompt + cfg.max_new_tokens)
        work.train(sft.method, trained)
        work.forward_tokens += val
        work.notes.append("every sample as correct (at most)")
    elif stage == "best_of_n":
        for _, cfg in configs:
            n = p.count(cfg.data)
            prompt = p.full_length(cfg.data, cfg.prompt, chat=cfg.chat)
            work.generate(n * cfg.n, cfg.max_new_tokens, cfg.batch_size)
            work.forward_tokens += n * prompt + n * cfg.n * (prompt + cfg.max_new_tokens)
            work.model_loads += 2  # the policy and the reward model
    return work


def stage_configs_of(pipeline, stage: str) -> list:
    from .pipeline import stage_configs

    return list(stage_configs(pipeline, Path("RUN"), stage))


def _rank():
    from .rationales import RankConfig

    return RankConfig()


def estimate_pipeline(config, rates: Throughput, until: str | None = None) -> dict:
    """{"stages": [{round, stage, generated_tokens, forward_tokens, trained_tokens, minutes, notes}], "total_minutes",
    "throughput"} for every stage a run of `config` would run (round 1's settings for every round)."""
    from .pipeline import STAGES, round_config, stage_configs

    p = _Prompts(config)
    last = STAGES.index(until) if until else len(STAGES) - 1
    rows = []
    rounds = config.rounds if until is None else 1
    for round_ in range(1, rounds + 1):
        settings = round_config(config, Path("RUN"), round_)
        for stage in STAGES[: last + 1]:
            configs = list(stage_configs(settings, Path("RUN"), stage, round_))
            if not configs:
                continue
            try:
                work = stage_work(stage, configs, p, config)
            except (OSError, ValueError, KeyError) as err:  # a dataset that is not there: say so, go on
                rows.append({"round": round_, "stage": stage, "minutes": None, "error": str(err)})
                continue
            rows.append({"round": round_, "stage": stage, "generated_tokens": work.generated_tokens,
                         "forward_tokens": int(work.forward_tokens),
                         "trained_tokens": int(work.lora_tokens + work.full_tokens),
                         "minutes": round(work.seconds(rates) / 60, 2), "notes": work.notes})
    total = sum(r["minutes"] for r in rows if r.get("minutes") is not None)
    return {"stages": rows, "total_minutes": round(total, 1), "throughput": asdict(rates),
            "basis": "every response at its token limit and every rationale kept: an upper bound"}


def write_estimate(config, run: Path, until: str | None = None, cache: Path | None = None) -> dict | None:
    """RUN/estimate.json from this machine's cached rates (no probe: `sml run --plan` measures them), kept as it
    is when a resumed run has the same settings; None when no rates are cached. Never fails a run: an estimate
    that cannot be made is logged."""
    import hashlib
    import logging

    try:
        digest = hashlib.sha256(json.dumps(asdict(config), sort_keys=True, default=str).encode()).hexdigest()[:16]
        path = Path(run) / ESTIMATE_FILE
        if path.is_file() and json.loads(path.read_text()).get("config_digest") == digest:
            return None  # the plan made when this run began
        rates = cached_throughput(config.model, cache=cache)
        if rates is None:
            return None
        estimate = estimate_pipeline(config, rates, until)
        estimate.update({"written": time.strftime("%Y-%m-%d %H:%M"), "config_digest": digest})
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(estimate, indent=2) + "\n")
        return estimate
    except Exception as err:  # noqa: BLE001 - the run matters, its estimate does not
        logging.getLogger(__name__).warning("no run estimate: %s", err)
        return None


def estimate_beside_actual(run: Path) -> list[dict] | None:
    """Round 1's stages with the estimated and the measured minutes (stages.json), when RUN/estimate.json exists."""
    path, record_path = Path(run) / ESTIMATE_FILE, Path(run) / "stages.json"
    if not path.is_file():
        return None
    try:
        estimate = json.loads(path.read_text())
        record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    except (OSError, ValueError):
        return None
    rows = []
    for row in estimate.get("stages", []):
        if row.get("round", 1) != 1:
            continue
        took = record.get(row["stage"], {}).get("seconds")
        rows.append({"stage": row["stage"], "estimated_minutes": row.get("minutes"),
                     "minutes": round(took / 60, 2) if took is not None else None,
                     "generated_tokens": row.get("generated_tokens")})
    return rows


def format_estimate(estimate: dict) -> str:
    lines = []
    for r in estimate["stages"]:
        where = f"round {r['round']} " if r["round"] > 1 else ""
        if r.get("minutes") is None:
            lines.append(f"  {where}{r['stage']:<11} n/a ({r.get('error')})")
            continue
        lines.append(f"  {where}{r['stage']:<11} {r['minutes']:>8.1f} min   generated {r['generated_tokens']:>9,} "
                     f"tokens, forward {r['forward_tokens']:>10,}, trained {r['trained_tokens']:>10,}"
                     + (f"  ({'; '.join(r['notes'])})" if r.get("notes") else ""))
    t = estimate["throughput"]
    decode = ", ".join(f"{w} rows {v} tok/s" for w, v in t["decode_tokens_per_s"].items())
    lines.append(f"  total       {estimate['total_minutes']:>8.1f} min at most ({estimate['basis']})")
    lines.append(f"  rates ({t['measured']}): forward {t['forward_tokens_per_s']} tok/s, LoRA training "
                 f"{t['lora_tokens_per_s']}, full {t['full_tokens_per_s']}, sampling {decode}")
    if t.get("busy"):
        lines.append(f"  warning: rates {t['busy']}")
    return "\n".join(lines)


def plan_with_estimate(config, rows: list[dict], until: str | None = None, refresh: bool = False,
                       probe: Callable[..., Throughput] | None = None) -> tuple[list[dict], dict | None, str]:
    """`plan_pipeline` rows with each stage's estimate added (estimated_minutes, generated/forward/trained
    tokens), the estimate, and a closing note: the total of what would run, the rates, or why there is no
    estimate. Measures the rates first when none are cached (`probe`, default `probe_throughput`)."""
    import sys

    try:
        if refresh or cached_throughput(config.model) is None:
            print(f"measuring this machine's rates for {config.model} (once, ~30 s; cached in {_cache_path()})",
                  file=sys.stderr)
        rates = load_throughput(config.model, refresh=refresh, probe=probe)
        estimate = estimate_pipeline(config, rates, until)
    except Exception as err:  # noqa: BLE001 - the plan itself stands without an estimate
        return rows, None, f"no estimate: {type(err).__name__}: {err}"
    by_stage = {(r["round"], r["stage"]): r for r in estimate["stages"]}
    todo = 0.0
    for row in rows:
        guess = by_stage.get((row["round"], row["stage"]), {})
        for key in ("minutes", "generated_tokens", "forward_tokens", "trained_tokens"):
            if key in guess:
                row["estimated_" + key if key == "minutes" else key] = guess[key]
        if guess.get("minutes") is not None and row["action"] not in ("done", "skipped"):
            todo += guess["minutes"] * (1 - row.get("kept_fraction", 0.0))  # kept evaluations cost nothing
    t = estimate["throughput"]
    decode = ", ".join(f"{w} rows {v}" for w, v in t["decode_tokens_per_s"].items())
    note = (f"estimate: {todo:.1f} min for what would run, {estimate['total_minutes']:.1f} min for every stage "
            f"(at most: {estimate['basis'].split(':')[0]})\n"
            f"rates ({t['measured']}): forward {t['forward_tokens_per_s']} tokens/s, training LoRA "
            f"{t['lora_tokens_per_s']}, full {t['full_tokens_per_s']}, sampling {decode} tokens/s"
            + (f"\nwarning: rates {t['busy']}" if t.get("busy") else ""))
    return rows, estimate, note
