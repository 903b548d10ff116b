"""Where a decoding step's time goes, by kind of operation, at 16, 48 and 128 rows in flight (packed weights).

    python results/speed/decode_breakdown.py OUT_DIR

Random weights of the default model's shapes (speed does not depend on the values), fp32, the threads torch
picks; prompts of a 30-token shared prefix and 250-token suffixes, 10 profiled steps after 3 untimed ones.
Writes OUT_DIR/decode_breakdown.json and .png: ms per step in linear layers, attention matmuls, and the rest
(norms, rotary, softmax, cache writes, Python), and the step's useful GFLOP/s (2 x 134.5M per row)."""
import json
import os
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from transformers import AutoConfig, LlamaForCausalLM, AutoTokenizer

from selfmotivated.generation import EngineConfig, SamplingParams
from selfmotivated.generation import engine as E

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
path = os.path.expanduser("~/.cache/selfmotivated/models/smollm2-135m-instruct")
torch.manual_seed(0)
model = LlamaForCausalLM(AutoConfig.from_pretrained(path)).eval()
tokenizer = AutoTokenizer.from_pretrained(path)
LINEAR = ("mkldnn::_linear_pointwise", "aten::mm", "aten::addmm")
ATTENTION = ("aten::bmm",)
result = {}
for rows in (16, 48, 128):
    g = torch.Generator().manual_seed(0)
    prefix = torch.randint(100, 40000, (30,), generator=g).tolist()
    encoded = [prefix + torch.randint(100, 40000, (250,), generator=g).tolist() for _ in range(rows)]
    gen = E.EngineGenerator(model, tokenizer, EngineConfig(max_seqs=rows, prefill_tokens=10**6, max_tokens=10**7))
    params = SamplingParams(max_new_tokens=64, temperature=0.7, seed=0)
    with torch.inference_mode(), gen.packed_weights():
        run = E._Run(gen, encoded, params, None)
        run.encode_prefix(encoded[0][: run.P])
        while len(run.active) < rows:
            run.admit()
        for _ in range(3):
            run.decode_step()
        steps = 10
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                run.decode_step()
    self_ms = {e.key: e.self_cpu_time_total / 1000 / steps for e in prof.key_averages()}
    total = sum(self_ms.values())
    linear = sum(v for k, v in self_ms.items() if k in LINEAR)
    attention = sum(v for k, v in self_ms.items() if k in ATTENTION)
    result[rows] = {"step_ms": round(total, 1), "linear_ms": round(linear, 1), "attention_ms": round(attention, 1),
                    "other_ms": round(total - linear - attention, 1),
                    "useful_gflops": round(rows * 2 * 134.5e6 / (total / 1000) / 1e9, 1)}
    print(rows, result[rows], flush=True)
out.mkdir(parents=True, exist_ok=True)
(out / "decode_breakdown.json").write_text(json.dumps(result, indent=1) + "\n")

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 3.6))
labels = [str(r) for r in result]
bottom = [0.0] * len(result)
for key, color in (("linear_ms", "#4C72B0"), ("attention_ms", "#DD8452"), ("other_ms", "#8C8C8C")):
    values = [result[r][key] for r in result]
    ax.bar(labels, values, bottom=bottom, color=color, label=key.replace("_ms", ""))
    bottom = [b + v for b, v in zip(bottom, values)]
for i, r in enumerate(result):
    ax.text(i, bottom[i] + 5, f"{result[r]['useful_gflops']} GFLOP/s", ha="center", fontsize=8)
ax.set_xlabel("rows in flight (each with ~280 cached positions)")
ax.set_ylabel("ms per decoding step")
ax.set_title("One decoding step of SmolLM2-135M on 2 CPU cores (fp32, packed weights)", fontsize=9)
ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig(out / "decode_breakdown.png", dpi=120)
