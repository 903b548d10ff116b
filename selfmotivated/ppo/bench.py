"""`sml bench ppo`: time per PPO iteration by phase, and PPO's peak memory next to one SFT LoRA step's.

PPO here is the default setup: LoRA, with actor, critic, reference and reward model on one frozen
backbone (the reward model is a fresh adapter plus a random score head: its cost, not its judgement,
is what is measured). The SFT step is one LoRA optimizer step of `sft.sft_loss` on the same sequences
(the last PPO rollout batch) with the same micro-batch size, so the ratio is what PPO costs on top of
training one model on that batch.

Each of the two runs happens in its own fresh process, so neither sees the other's memory. Peak memory
is `torch.cuda.max_memory_allocated` on a GPU; on the CPU it is the process's peak resident size minus
its size after imports (what the model and the run added), which also counts allocator slack.

Speed (`--compare`, on by default; a third process): PPO as configured (sampler log-probs reused as the old
ones, each prompt encoded once for its samples) against the plain path (a forward pass for the old
log-probs, every row encoded whole), two trainers on two copies of the model in one process, their
iterations interleaved (the order alternating) so that other load on the machine slows both alike. Both
start from the same weights and seeds, so their first iterations sample the same rollouts. Reported:
rollouts per second of each (timed iterations), `speedup` their ratio, and the same in CPU seconds of the
process (steadier on a shared machine).
"""

from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

PHASES = (
    ("rollout_seconds", "time/generate"),
    ("scoring_seconds", "time/score"),
    ("forward_seconds", "time/forward"),
    ("update_seconds", "time/update"),
)


@dataclass
class BenchPPOConfig:
    """Settings of `sml bench ppo`."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model (the SFT model's stand-in)"})
    dataset: str = field(
        default="synthetic_coin_flip", metadata={"help": "training questions for the prompts"}
    )
    data_dir: str | None = field(default=None, metadata={"help": "folder of the shared datasets"})
    iterations: int = field(default=3, metadata={"help": "timed PPO iterations (after the warm-up ones)"})
    warmup: int = field(default=1, metadata={"help": "untimed first iterations (allocations, kernel choice)"})
    prompts_per_iteration: int = field(default=8, metadata={"help": "questions per iteration"})
    samples_per_prompt: int = field(default=2, metadata={"help": "responses per question"})
    max_new_tokens: int = field(default=128, metadata={"help": "response length limit"})
    mini_batch_size: int = field(default=16, metadata={"help": "samples per optimizer step"})
    micro_batch_size: int = field(
        default=4, metadata={"help": "samples per forward/backward (also the SFT step's)"}
    )
    ppo_epochs: int = field(default=1, metadata={"help": "PPO epochs per iteration"})
    minibatch_by_question: bool = field(default=False, metadata={
        "help": "minibatches of whole questions (as the ladder runs set; both paths alike)"})
    temperature: float = field(default=1.0, metadata={"help": "sampling temperature of the rollouts"})
    share_prompts: bool | None = field(default=None, metadata={
        "help": "the optimised path's prompt sharing (default: PPO's, on a CPU only)"})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank of every adapter"})
    dtype: str = field(
        default="auto", metadata={"help": "auto (fp32 on CPU, bf16 on GPU), float32, bfloat16"}
    )
    device: str = field(default="auto", metadata={"help": "auto, cpu or cuda"})
    backend: str = field(
        default="engine", metadata={"help": "generation backend: engine or hf", "choices": ["engine", "hf"]}
    )
    seed: int = field(default=0, metadata={"help": "seed"})
    compare: bool = field(default=True, metadata={
        "help": "also time the plain path (old log-probs by a forward pass, no prompt sharing, no packed "
                "weights) interleaved with "
                "the optimised one in one process: rollouts_per_second, baseline_rollouts_per_second, speedup"})
    memory: bool = field(default=True, metadata={
        "help": "measure PPO's peak memory against one SFT LoRA step (two more processes)"})

    def __post_init__(self):
        for name in (
            "iterations",
            "prompts_per_iteration",
            "samples_per_prompt",
            "max_new_tokens",
            "mini_batch_size",
            "micro_batch_size",
            "ppo_epochs",
            "lora_r",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0 (rollouts are sampled), got {self.temperature}")
        if not (self.compare or self.memory):
            raise ValueError("--no-compare with --no-memory leaves nothing to measure: keep one of them")


def run_bench_ppo(config: BenchPPOConfig) -> dict:
    """Run the PPO measurement, then the SFT step, each in a fresh process; return one result dict."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    compared = ppo = None
    with tempfile.TemporaryDirectory(prefix="sml-bench-ppo-") as tmp:
        batch_file = Path(tmp) / "batch.json"
        if config.compare:
            compared = _in_process(ctx, _compare_worker, asdict(config))
        if config.memory:
            ppo = _in_process(ctx, _ppo_worker, asdict(config), str(batch_file))
            sft = _in_process(ctx, _sft_worker, asdict(config), str(batch_file))
    run = ppo or compared["optimised"]
    timed = run["iterations"]
    samples = config.prompts_per_iteration * config.samples_per_prompt
    result = {
        "model": config.model,
        "device": run["device"],
        "dtype": run["dtype"],
        "samples_per_iteration": samples,
        "mean_response_tokens": round(sum(r["rollout/response_length"] for r in timed) / len(timed), 1),
        "seconds_per_iteration": round(sum(r["time/iteration"] for r in timed) / len(timed), 3),
    }
    for name, key in PHASES:
        result[name] = round(sum(r[key] for r in timed) / len(timed), 3)
    if compared is not None:
        result.update(_speed_summary(compared, samples))
    if ppo is None:
        result["config"] = asdict(config)
        return result
    result.update(
        {
            "ppo_peak_mb": round(ppo["peak_mb"], 1),
            "sft_peak_mb": round(sft["peak_mb"], 1),
            "memory_ratio": round(ppo["peak_mb"] / sft["peak_mb"], 3) if sft["peak_mb"] > 0 else None,
            "memory_target_ratio": 1.6,
            "memory_measure": ppo["measure"],
            "model_weights_mb": round(ppo["weights_mb"], 1),
            "sft_step_seconds": round(sft["seconds"], 3),
            "config": asdict(config),
        }
    )
    return result


def _speed_summary(compared: dict, samples: int) -> dict:
    """rollouts/s of the optimised and the plain path from their interleaved timed iterations, and ratios."""
    out = {}
    for name, key in (("optimised", ""), ("baseline", "baseline_")):
        rows = compared[name]["iterations"]
        seconds = sum(r["time/iteration"] for r in rows)
        cpu = sum(r["cpu/iteration"] for r in rows)
        out[f"{key}rollouts_per_second"] = round(samples * len(rows) / seconds, 4)
        out[f"{key}rollouts_per_cpu_second"] = round(samples * len(rows) / cpu, 4)
        out[f"{key}phase_seconds"] = {
            name: round(sum(r[k] for r in rows) / len(rows), 3)
            for name, k in PHASES + (("iteration", "time/iteration"),)}
    out["speedup"] = round(out["rollouts_per_second"] / out["baseline_rollouts_per_second"], 3)
    out["speedup_cpu"] = round(out["rollouts_per_cpu_second"] / out["baseline_rollouts_per_cpu_second"], 3)
    out["first_rollouts_identical"] = compared["first_rollouts_identical"]
    settings = compared["trainer_settings"]
    out["same_settings"] = settings["optimised"] == settings["baseline"]
    out["ppo_settings"] = {k: settings["optimised"][k] for k in (
        "prompts_per_iteration", "samples_per_prompt", "max_new_tokens", "temperature", "ppo_epochs",
        "mini_batch_size", "micro_batch_size", "minibatch_by_question", "generation_batch_size")}
    # How far the reused sampler log-probs are from a forward pass's (mean |difference| per token, both paths).
    out["sampler_logprob_diff"] = compared["sampler_logprob_diff"]
    out["speed_options"] = compared["speed_options"]["optimised"]
    out["baseline"] = "old log-probs by a forward pass, every row encoded whole, torch's own linear layers " \
                      "(reuse_sampler_logprobs, share_prompts and pack_weights off)"
    return out


def format_bench_ppo(r: dict) -> str:
    """Human summary printed by `sml bench ppo`."""
    lines = [
        f"PPO on {r['model']} ({r['device']}, {r['dtype']}, LoRA, shared backbone): "
        f"{r['samples_per_iteration']} samples/iteration, {r['mean_response_tokens']} response tokens on average",
        f"  seconds per iteration {r['seconds_per_iteration']:.2f} = rollout {r['rollout_seconds']:.2f} + scoring "
        f"{r['scoring_seconds']:.2f} + reference/critic forward {r['forward_seconds']:.2f} + update "
        f"{r['update_seconds']:.2f} (+ bookkeeping)",
    ]
    if "speedup" in r:
        b = r["baseline_phase_seconds"]
        lines += [
            f"  rollouts/s {r['rollouts_per_second']:.3f} against the plain path's "
            f"{r['baseline_rollouts_per_second']:.3f}"
            f" in the same process: {r['speedup']:.2f}x ({r['speedup_cpu']:.2f}x in CPU seconds)",
            f"  plain path per iteration {b['iteration']:.2f} s = rollout {b['rollout_seconds']:.2f} + scoring "
            f"{b['scoring_seconds']:.2f} + forward {b['forward_seconds']:.2f} + update {b['update_seconds']:.2f}; "
            f"sampler vs forward log-probs, mean |difference| per token (to 1e-6): {r['sampler_logprob_diff']}",
        ]
    if "ppo_peak_mb" in r:
        lines.append(
            f"  peak memory ({r['memory_measure']}): PPO {r['ppo_peak_mb']:.0f} MB, one SFT LoRA step on the same "
            f"batch {r['sft_peak_mb']:.0f} MB -> ratio {r['memory_ratio']} (target <= {r['memory_target_ratio']}); "
            f"model weights {r['model_weights_mb']:.0f} MB")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# the two measurements, each run in a child process


def _in_process(ctx, target, *args) -> dict:
    queue = ctx.Queue()
    proc = ctx.Process(target=_child, args=(queue, target, *args))
    proc.start()
    result = queue.get()  # before join: a large result would otherwise block the child's exit
    proc.join()
    if "error" in result:
        raise RuntimeError(f"benchmark process failed: {result['error']}")
    return result


def _child(queue, target, *args) -> None:
    try:
        queue.put(target(*args))
    except BaseException as err:  # noqa: BLE001 - reported to the parent with its traceback
        import traceback

        queue.put({"error": f"{err!r}\n{traceback.format_exc()}"})


class _Meter:
    """Peak memory of this process from now on (see module docstring)."""

    def __init__(self, device: str):
        import resource

        import torch

        self.cuda = device.startswith("cuda")
        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.base = _resident_mb() if not self.cuda else 0.0
        self.measure = "torch.cuda.max_memory_allocated" if self.cuda else "peak RSS minus RSS after imports"

    def peak_mb(self) -> float:
        import resource

        import torch

        if self.cuda:
            return torch.cuda.max_memory_allocated() / 2**20
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - self.base


def _resident_mb() -> float:
    """This process's resident size now (Linux /proc); the peak so far where /proc is missing."""
    import resource

    try:
        with open("/proc/self/status") as fh:
            return next(int(line.split()[1]) for line in fh if line.startswith("VmRSS:")) / 1024  # kB -> MB
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _setup(config: dict):
    import torch

    # Import everything either run uses before the baseline, so the two runs' memory compares like for like.
    from .. import data, prompts, sft  # noqa: F401
    from ..models import _pick_device, load_model
    from . import trainer  # noqa: F401

    torch.manual_seed(config["seed"])
    device = _pick_device(config["device"])
    meter = _Meter(device)
    model, tokenizer = load_model(config["model"], dtype=config["dtype"], device=device)
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    return model, tokenizer, device, meter, weights_mb


def _ppo_worker(config: dict, batch_file: str) -> dict:
    model, tokenizer, device, meter, weights_mb = _setup(config)
    trainer = _trainer(config, model, tokenizer, {"share_prompts": config["share_prompts"]})
    trainer.train()
    peak = meter.peak_mb()
    exp = trainer.last
    items = []
    for b in range(len(exp)):
        ids = exp.sequences[b][exp.attention_mask[b].bool()].tolist()
        n_prompt = int(exp.attention_mask[b, : exp.prompt_width].sum())
        items.append({"ids": ids, "n_prompt": n_prompt})
    Path(batch_file).write_text(json.dumps(items))
    rows = [r for r in trainer.history if "time/iteration" in r][config["warmup"] :]
    return {
        "iterations": rows,
        "peak_mb": peak,
        "measure": meter.measure,
        "device": device,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "weights_mb": weights_mb,
    }


PLAIN = {"reuse_sampler_logprobs": False, "share_prompts": False, "pack_weights": False}  # --compare's baseline


def _compare_worker(config: dict) -> dict:
    """The configured PPO and the plain path, one iteration each in turn (see the module docstring)."""
    import copy

    import torch

    model, tokenizer, device, _, _ = _setup(config)
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
    plain_model = copy.deepcopy(model)
    trainers = {"optimised": _trainer(config, model, tokenizer, {"share_prompts": config["share_prompts"]}),
                "baseline": _trainer(config, plain_model, tokenizer, PLAIN)}
    first = {}
    for step in range(config["warmup"] + config["iterations"]):
        names = ["baseline", "optimised"] if step % 2 == 0 else ["optimised", "baseline"]
        for name in names:
            trainer = trainers[name]
            cpu = time.process_time()
            trainer.iteration()
            trainer.history[-1]["cpu/iteration"] = time.process_time() - cpu
            if step == 0:
                first[name] = trainer.last.sequences
    # Same weights and seeds: the first iterations sample the same tokens, except where the plain path's
    # unpacked matmuls round a near-tie the other way. The share of rollouts that came out identical:
    pad, width = trainers["optimised"].pad_id, max(first["optimised"].shape[1], first["baseline"].shape[1])
    a, b = (torch.nn.functional.pad(first[k], (0, width - first[k].shape[1]), value=pad)
            for k in ("optimised", "baseline"))
    same = float((a == b).all(-1).float().mean())
    diffs = {name: [r["rollout/logprob_diff"] for r in t.history if "rollout/logprob_diff" in r]
             for name, t in trainers.items()}
    return {
        name: {"iterations": [r for r in t.history if "time/iteration" in r][config["warmup"]:],
               "device": device, "dtype": dtype}
        for name, t in trainers.items()
    } | {"first_rollouts_identical": same,
         "sampler_logprob_diff": {k: max(v) if v else None for k, v in diffs.items()},
         # the speed options each path ran with, as resolved for this device
         "speed_options": {name: {"reuse_sampler_logprobs": t.config.reuse_sampler_logprobs,
                                  "share_prompts": t.share_prompts,
                                  "pack_weights": t.config.pack_weights and device.startswith("cpu")
                                                  and dtype == "float32"}
                           for name, t in trainers.items()},
         # what each trainer ran with beyond the speed options, as a check that the paths differ in those only
         "trainer_settings": {name: {k: v for k, v in asdict(t.config).items() if k not in PLAIN}
                              for name, t in trainers.items()}}


def _trainer(config: dict, model, tokenizer, overrides: dict | None = None):
    """A PPO trainer on `model` as `sml bench ppo` runs it (the reward model a fresh adapter, random head)."""
    import torch

    from ..data import DataConfig, load_examples
    from ..prompts import build_prompt, stop_strings
    from .actor_critic import build_actor_critic, lora_config
    from .rewards import SharedRewardModel
    from .trainer import PPOConfig, PPOTrainer

    torch.manual_seed(config["seed"])  # both trainers of --compare start from the same adapters and head
    lora = lora_config(config["lora_r"], 2 * config["lora_r"], 0.0, "all-linear")
    ac = build_actor_critic(model, "lora", lora)
    hidden = model.config.hidden_size
    reward_fn = SharedRewardModel(
        ac,
        tokenizer,
        lora,
        {"weight": torch.randn(1, hidden) / hidden**0.5, "bias": torch.zeros(1)},
        batch_size=config["micro_batch_size"],
    )
    total = config["warmup"] + config["iterations"]
    n_prompts = config["prompts_per_iteration"] * total
    data = DataConfig(
        dataset=config["dataset"],
        split="train",
        limit=n_prompts,
        data_dir=config["data_dir"],
        n_train=max(n_prompts, 8),
    )
    examples = load_examples(data)
    prompts = [build_prompt(ex, tokenizer) for ex in examples]
    ppo_config = PPOConfig(
        iterations=total,
        prompts_per_iteration=config["prompts_per_iteration"],
        samples_per_prompt=config["samples_per_prompt"],
        max_new_tokens=config["max_new_tokens"],
        mini_batch_size=config["mini_batch_size"],
        micro_batch_size=config["micro_batch_size"],
        ppo_epochs=config["ppo_epochs"],
        minibatch_by_question=config["minibatch_by_question"],
        temperature=config["temperature"],
        lora_r=config["lora_r"],
        backend=config["backend"],
        generation_batch_size=config["prompts_per_iteration"] * config["samples_per_prompt"],
        eval_steps=0,
        guard_max_kl=0,
        guard_min_entropy=0,
        guard_accuracy_drop=0,
        tensorboard=False,
        progress=False,
        seed=config["seed"],
        **(overrides or {}),
    )

    class Recording(PPOTrainer):  # keeps the last rollout batch for the SFT step
        def update(self, exp):
            self.last = exp
            return super().update(exp)

    return Recording(ppo_config, ac, tokenizer, reward_fn, prompts, examples, stop_strings=stop_strings(tokenizer))


def _sft_worker(config: dict, batch_file: str) -> dict:
    import torch
    from peft import get_peft_model

    from ..sft import collate_sft, sft_loss
    from .actor_critic import lora_config

    model, tokenizer, device, meter, _ = _setup(config)
    model = get_peft_model(model, lora_config(config["lora_r"], 2 * config["lora_r"], 0.0, "all-linear"))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    items = json.loads(Path(batch_file).read_text())
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    micro = config["micro_batch_size"]
    t0 = time.perf_counter()
    for start in range(0, len(items), micro):
        loss, _ = sft_loss(model, collate_sft(items[start : start + micro], pad, device))
        (loss * len(items[start : start + micro]) / len(items)).backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    seconds = time.perf_counter() - t0
    return {"peak_mb": meter.peak_mb(), "seconds": seconds}
