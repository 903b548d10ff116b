"""`sml bench train`: training throughput of our SFT and reward steps against the machine's matmul peak.

Each mode times our real optimizer step (`training.optimizer_step` with the stage's loss: forward, backward,
gradient clipping, AdamW, schedule) on full-length synthetic batches (no padding; every position trained),
after warm-up steps. Achieved GFLOP/s uses the usual transformer count (Kaplan et al. 2020; attention's
T^2 term is left out, about 6% at T=256 on the default model, so the fractions are slight underestimates):

    N      = weights of the matmuls a token goes through (every nn.Linear, the tied LM head once; embedding
             lookups and norms are not matmuls)
    full   : 6 * N * tokens                    (forward 2N, backward 2N for activations + 2N for weights)
    LoRA   : (4 * N + 6 * N_lora) * tokens     (frozen weights: forward and activation gradients only)
    reward : as LoRA (or full) with N of the sequence-classification model, which has no LM head

Step times are the best of `steps` timed steps (the median is reported too): load from other programs can
only slow a step down, so the best is the closest to what the code itself costs. Likewise the peak is the
best fp32 GFLOP/s of a square torch.mm measured in the same run with the same threads
(before each mode and at the end; the best measurement is the denominator). On a machine shared with
other programs, `cpu_time_peak_fraction` gives the same ratio in CPU seconds of this process, which their
load does not inflate.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

MODES = ("sft_full", "sft_lora", "reward")


@dataclass
class BenchTrainConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "model to benchmark (name or folder)"})
    seq_len: int = field(default=256, metadata={"help": "tokens per sequence"})
    batch_size: int = field(default=4, metadata={"help": "sequences per step"})
    steps: int = field(default=3, metadata={
        "help": "timed steps per mode; the best is used (other load on the machine only slows), median also shown"})
    warmup: int = field(default=1, metadata={"help": "untimed steps first"})
    modes: str = field(default="sft_full,sft_lora,reward", metadata={"help": "comma-separated: " + ", ".join(MODES)})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (all linear layers)"})
    hf_baseline: bool = field(default=True, metadata={
        "help": "also time plain transformers forward+backward (labels=input_ids, no optimizer) for comparison"})
    matmul_sizes: str = field(default="1024,2048", metadata={"help": "square matmul sizes tried for the peak"})
    threads: int = field(default=0, metadata={"help": "torch threads (0: torch's default)"})
    seed: int = field(default=0, metadata={"help": "seed of the synthetic batches"})
    reward_pairs: bool = field(default=True, metadata={
        "help": "also time reward-model training per pair with each prompt encoded once for its responses against "
                "the plain path, in this process (reward_pair_speedup; see bench_reward_pairs.py)"})
    pair_rounds: int = field(default=3, metadata={"help": "timed passes over the reward-pair batches per path"})
    pair_questions: int = field(default=12, metadata={"help": "questions in the reward-pair data (4 a batch)"})

    def __post_init__(self):
        bad = [m for m in self.mode_list() if m not in MODES]
        if bad:
            raise ValueError(f"unknown mode(s) {bad}; choose from {MODES}")
        for name in ("seq_len", "batch_size", "steps"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")

    def mode_list(self) -> list[str]:
        return [m.strip() for m in self.modes.split(",") if m.strip()]


def matmul_peak_gflops(sizes=(1024, 2048), reps: int = 5) -> tuple[float, float]:
    """Best fp32 GFLOP/s of torch.mm on square matrices (2 n^3 flops each): (per wall second, per CPU second
    of this process, all threads)."""
    import torch

    best, best_cpu = 0.0, 0.0
    for n in sizes:
        a, b = torch.randn(n, n), torch.randn(n, n)
        torch.mm(a, b)  # warm up
        for _ in range(reps):
            t0, c0 = time.perf_counter(), time.process_time()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / (time.perf_counter() - t0) / 1e9)
            best_cpu = max(best_cpu, 2 * n**3 / max(time.process_time() - c0, 1e-9) / 1e9)
    return best, best_cpu


def matmul_params(model) -> tuple[int, int]:
    """(N, N_lora): weights of the nn.Linear layers a token passes through, frozen base vs LoRA."""
    import torch

    seen, base, lora = set(), 0, 0
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear) and id(module.weight) not in seen:
            seen.add(id(module.weight))
            if ".lora_" in name:
                lora += module.weight.numel()
            elif ".original_module" not in name:  # PEFT keeps a frozen copy of modules_to_save; unused
                base += module.weight.numel()
    return base, lora


def _time_steps(step, warmup: int, steps: int) -> tuple[float, float, float]:
    """(best, median) wall seconds per step after warm-up, and the best CPU seconds (all threads)."""
    for _ in range(warmup):
        step()
    times, cpu = [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return min(times), statistics.median(times), min(cpu)


def _sft_setup(config: BenchTrainConfig, method: str):
    from .sft import SFTConfig, load_policy_for_training

    cfg = SFTConfig(model=config.model, method=method, lora_r=config.lora_r, lora_alpha=2 * config.lora_r,
                    lora_dropout=0.0, max_length=config.seq_len, progress=False)
    model, tokenizer, _ = load_policy_for_training(cfg)
    return cfg, model, tokenizer


def _bench_mode(config: BenchTrainConfig, mode: str, accelerator) -> dict:
    import torch

    from .reward import RewardConfig, collate_groups, load_scoring_backbone, reward_loss
    from .sft import collate_sft, sft_loss
    from .training import add_lora, make_optimizer, make_scheduler, optimizer_step

    g = torch.Generator().manual_seed(config.seed)
    if mode == "reward":
        cfg = RewardConfig(model=config.model, lora_r=config.lora_r, lora_alpha=2 * config.lora_r,
                           lora_dropout=0.0, max_length=config.seq_len, progress=False)
        model, tokenizer = load_scoring_backbone(config.model)
        model.config.use_cache = False
        model = add_lora(model, cfg, task_type="SEQ_CLS", modules_to_save=["score"])
        vocab = model.config.vocab_size
        # batch_size sequences as questions of two responses each (one pair per question)
        n_q = max(1, config.batch_size // 2)
        items = [{"seqs": [torch.randint(0, vocab, (config.seq_len,), generator=g).tolist() for _ in range(2)],
                  "tiers": [3, 1], "pairs": [(0, 1)]} for _ in range(n_q)]
        batch = collate_groups(items, tokenizer.pad_token_id, device=accelerator.device)
        loss_fn = reward_loss
        method = "lora"
    else:
        method = "full" if mode == "sft_full" else "lora"
        cfg, model, tokenizer = _sft_setup(config, method)
        vocab = model.config.vocab_size
        ids = [torch.randint(0, vocab, (config.seq_len,), generator=g).tolist() for _ in range(config.batch_size)]
        batch = collate_sft([{"ids": x, "n_prompt": 1} for x in ids], tokenizer.pad_token_id, accelerator.device)
        loss_fn = sft_loss
    n_base, n_lora = matmul_params(model)
    optimizer = make_optimizer(model, cfg, 1e-5)
    scheduler = make_scheduler(optimizer, cfg, 1000)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    tokens = int(batch["attention_mask"].sum())

    seconds, median, cpu_seconds = _time_steps(
        lambda: optimizer_step(accelerator, model, optimizer, scheduler, [batch], loss_fn, 1.0),
        config.warmup, config.steps)
    flops_per_token = 6 * n_base if method == "full" else 4 * n_base + 6 * n_lora
    result = {"step_s": round(seconds, 4), "step_s_median": round(median, 4), "tokens_per_step": tokens,
              "tokens_per_s": round(tokens / seconds, 1), "gflops": round(flops_per_token * tokens / seconds / 1e9, 2),
              "gflops_per_cpu_s": round(flops_per_token * tokens / cpu_seconds / 1e9, 2),
              "matmul_params": n_base, "lora_params": n_lora,
              "flop_count": "6*N*tokens" if method == "full" else "(4*N + 6*N_lora)*tokens"}
    if config.hf_baseline and mode in ("sft_full", "sft_lora"):
        unwrapped = accelerator.unwrap_model(model)

        def plain():
            out = unwrapped(input_ids=batch["input_ids"], labels=batch["input_ids"], use_cache=False)
            out.loss.backward()
            unwrapped.zero_grad(set_to_none=True)

        hf_s, _, hf_cpu = _time_steps(plain, config.warmup, config.steps)
        result["hf_forward_backward"] = {"step_s": round(hf_s, 4),
                                         "gflops": round(flops_per_token * tokens / hf_s / 1e9, 2),
                                         "gflops_per_cpu_s": round(flops_per_token * tokens / hf_cpu / 1e9, 2)}
    del model, optimizer
    accelerator.free_memory()
    return result


def run_bench_train(config: BenchTrainConfig) -> dict:
    """Time each mode; return one dict with `<mode>_peak_fraction` for every mode run."""
    import torch
    from accelerate import Accelerator

    if config.threads:
        torch.set_num_threads(config.threads)
    sizes = [int(s) for s in config.matmul_sizes.split(",") if s.strip()]
    from .training import reset_single_process_state

    # The CPU path (fp32 against an fp32 matmul peak), also on a machine that has a GPU.
    reset_single_process_state()
    accelerator = Accelerator(cpu=True, step_scheduler_with_optimizer=False)
    # The peak is measured before each mode and at the end; the best of them is the denominator, so other
    # load on the machine during one measurement can only make our fractions look worse, never better.
    peaks = [matmul_peak_gflops(sizes)]
    result = {"model": config.model, "seq_len": config.seq_len, "batch_size": config.batch_size,
              "threads": torch.get_num_threads(), "modes": {}}
    for mode in config.mode_list():
        peaks.append(matmul_peak_gflops(sizes))
        result["modes"][mode] = _bench_mode(config, mode, accelerator)
    if config.reward_pairs:
        from .bench_reward_pairs import run_reward_pairs

        result["reward_pairs"] = run_reward_pairs(config.model, accelerator, questions=config.pair_questions,
                                                  rounds=config.pair_rounds,
                                                  warmup=config.warmup, lora_r=config.lora_r, seed=config.seed)
        result["reward_pair_speedup"] = result["reward_pairs"]["speedup"]
    peaks.append(matmul_peak_gflops(sizes))
    peak, peak_cpu = max(p for p, _ in peaks), max(c for _, c in peaks)
    result["matmul_peak_gflops"] = round(peak, 2)
    result["peak_measurements_gflops"] = [round(p, 2) for p, _ in peaks]
    result["matmul_peak_gflops_per_cpu_s"] = round(peak_cpu, 2)
    for mode, r in result["modes"].items():
        r["peak_fraction"] = round(r["gflops"] / peak, 4)
        # The same ratio in CPU seconds of this process: what other programs on a shared machine take while
        # we wait does not count (threads that spin while waiting still do, so this is no overestimate of
        # the kernels, but it can hide idle, non-spinning threads).
        r["cpu_time_peak_fraction"] = round(r["gflops_per_cpu_s"] / peak_cpu, 4)
        if "hf_forward_backward" in r:
            hf = r["hf_forward_backward"]
            hf["peak_fraction"] = round(hf["gflops"] / peak, 4)
            hf["cpu_time_peak_fraction"] = round(hf["gflops_per_cpu_s"] / peak_cpu, 4)
        result[f"{mode}_peak_fraction"] = r["peak_fraction"]
    return result


def format_bench_train(result: dict) -> str:
    lines = [f"{result['model']}, seq_len {result['seq_len']}, batch {result['batch_size']}, "
             f"{result['threads']} threads; fp32 matmul peak {result['matmul_peak_gflops']} GFLOP/s "
             f"(best of {result['peak_measurements_gflops']})"]
    for mode, r in result["modes"].items():
        line = (f"  {mode:<9} {r['tokens_per_s']:>8} tokens/s  {r['gflops']:>7} GFLOP/s  "
                f"{100 * r['peak_fraction']:5.1f}% of peak ({100 * r['cpu_time_peak_fraction']:.1f}% in CPU time)  "
                f"[{r['flop_count']}, step {r['step_s']} s]")
        if "hf_forward_backward" in r:
            hf = r["hf_forward_backward"]
            line += (f"  plain HF fwd+bwd: {100 * hf['peak_fraction']:.1f}% "
                     f"({100 * hf['cpu_time_peak_fraction']:.1f}% in CPU time)")
        lines.append(line)
    if "reward_pairs" in result:
        p = result["reward_pairs"]
        lines.append(f"  reward model per pair: prompt shared {p['shared_seconds_per_pair']} s, plain "
                     f"{p['plain_seconds_per_pair']} s -> {p['speedup']}x ({p['speedup_cpu']}x in CPU time, "
                     f"{p['speedup_median']}x by medians); losses {p['loss_plain']} vs {p['loss_shared']} "
                     f"[{p['questions']} questions x {p['responses_per_question']} responses, {p['pairs']} pairs]")
    return "\n".join(lines)
