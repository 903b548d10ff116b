"""The kernels a decoding step could use on this CPU, each timed alone at the default model's shapes.

    python results/speed/decode_kernels.py OUT_DIR

Asks whether another kernel would lift generation toward 40% of the fp32 matmul peak (issue 18):
- linear layers: MKL's `F.linear`, the oneDNN-packed weights the engine uses, and torch's weight-only int8
  kernel (`aten._weight_int8pack_mm`, per-channel int8 weights, float activations: accurate, a quarter of
  the bytes), summed over one step's 30 layers and the LM head;
- attention over each row's own keys/values at 48 rows and 280 cached positions: the engine's two batched
  matmuls (with the mask, softmax and shared-prefix part as in `engine.decode_forward`), the two matmuls
  alone, SDPA, an inductor-compiled fused reduction (`torch.compile`, one loop nest, no materialised
  products), and the score matmul with bf16 and fp16 caches.
Random values (speed does not depend on them); the weights of a linear stay hot in cache across its
repeats, so these times are a lower bound for a step that streams all 540 MB of weights.
Writes OUT_DIR/decode_kernels.json."""
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from selfmotivated.packed import _pack, _packed_matmul

out = Path(sys.argv[1] if len(sys.argv) > 1 else ".")
torch.manual_seed(0)
LAYERS = 30
# (out, in) of each linear and how many a step runs
LINEARS = {"q_proj, o_proj": ((576, 576), 2 * LAYERS), "k_proj, v_proj": ((192, 576), 2 * LAYERS),
           "gate_proj, up_proj": ((1536, 576), 2 * LAYERS), "down_proj": ((576, 1536), LAYERS),
           "lm_head": ((49152, 576), 1)}


def ms(fn, repeats=20):
    """Mean milliseconds of fn() after two untimed calls."""
    fn(), fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


linear = {}
for rows in (16, 48, 128):
    step = {"fp32_mkl": 0.0, "fp32_packed": 0.0, "int8_weight_only": 0.0}
    for name, ((n_out, n_in), count) in LINEARS.items():
        weight, x = torch.randn(n_out, n_in) * 0.02, torch.randn(rows, n_in)
        packed = _pack(weight)
        scale = weight.abs().amax(dim=1) / 127
        weight_int8 = torch.round(weight / scale[:, None]).to(torch.int8)
        repeats = 3 if name == "lm_head" else 20
        step["fp32_mkl"] += count * ms(lambda: F.linear(x, weight), repeats)
        step["fp32_packed"] += count * ms(lambda: _packed_matmul(x, packed, None), repeats)
        step["int8_weight_only"] += count * ms(lambda: torch.ops.aten._weight_int8pack_mm(x, weight_int8, scale), 1)
    flops = 2 * rows * sum(n_out * n_in * count for (n_out, n_in), count in LINEARS.values())
    linear[rows] = {**{f"{k}_ms": round(v, 2) for k, v in step.items()},
                    **{f"{k}_gflops": round(flops / v / 1e6, 1) for k, v in step.items()}}
    print(rows, "rows, linear layers of one step:", linear[rows], flush=True)

A, KV, G, D, SPAN, CAP, P = 48, 3, 3, 64, 280, 400, 24
cache_k, cache_v = torch.randn(LAYERS, 64, KV, CAP, D), torch.randn(LAYERS, 64, KV, CAP, D)
prefix_kt = [torch.randn(KV, D, P) for _ in range(LAYERS)]
prefix_v = [torch.randn(KV, P, D) for _ in range(LAYERS)]
lengths = torch.randint(100, SPAN, (A,))
lengths[0] = SPAN - 1
mask = torch.zeros(A, 1, 1, SPAN).masked_fill((torch.arange(SPAN)[None] > lengths[:, None])[:, None, None],
                                              float("-inf"))
q = torch.randn(A, KV, G, D) * 0.125


def engine_attention(i):
    own_k, own_v = cache_k[i, :A, :, :SPAN], cache_v[i, :A, :, :SPAN]
    scores = torch.matmul(q, own_k.transpose(-1, -2)) + mask
    prefix_scores = torch.matmul(q.transpose(0, 1).reshape(KV, A * G, D), prefix_kt[i])
    scores = torch.cat([prefix_scores.view(KV, A, G, P), scores.transpose(0, 1)], dim=-1)
    probs = scores.softmax(dim=-1, dtype=torch.float32)
    prefix_out = torch.matmul(probs[..., :P].reshape(KV, A * G, P), prefix_v[i])
    return torch.matmul(probs[..., P:].transpose(0, 1), own_v) + prefix_out.view(KV, A, G, D).transpose(0, 1)


def two_matmuls(i):
    return torch.matmul(torch.matmul(q, cache_k[i, :A, :, :SPAN].transpose(-1, -2)), cache_v[i, :A, :, :SPAN])


def sdpa(i):
    return F.scaled_dot_product_attention(q.reshape(A, KV * G, 1, D), cache_k[i, :A, :, :SPAN],
                                          cache_v[i, :A, :, :SPAN], attn_mask=mask, scale=1.0, enable_gqa=True)


def fused(q, own_k, own_v, mask):
    scores = (q[:, :, :, None, :] * own_k[:, :, None, :, :]).sum(-1) + mask
    return (scores.softmax(-1)[..., None] * own_v[:, :, None, :, :]).sum(-2)


compiled = torch.compile(fused, dynamic=True)
start = time.perf_counter()
compiled(q, cache_k[0, :A, :, :SPAN], cache_v[0, :A, :, :SPAN], mask)
compile_s = time.perf_counter() - start
reference = torch.matmul(torch.softmax(torch.matmul(q, cache_k[0, :A, :, :SPAN].transpose(-1, -2)) + mask, -1),
                         cache_v[0, :A, :, :SPAN])
compiled_error = (compiled(q, cache_k[0, :A, :, :SPAN], cache_v[0, :A, :, :SPAN], mask) - reference).abs().max()


def all_layers(fn):
    return lambda: [fn(i) for i in range(LAYERS)]


attention = {
    "engine_ms": ms(all_layers(engine_attention), 5),
    "two_matmuls_ms": ms(all_layers(two_matmuls), 5),
    "sdpa_ms": ms(all_layers(sdpa), 5),
    "compiled_fused_ms": ms(all_layers(lambda i: compiled(q, cache_k[i, :A, :, :SPAN], cache_v[i, :A, :, :SPAN],
                                                          mask)), 5),
    "compiled_compile_s": compile_s,
    "compiled_max_abs_error": compiled_error.item(),
}
for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16), ("fp16", torch.float16)):
    k_cast, q_cast = cache_k[:, :A, :, :SPAN].to(dtype), q.to(dtype)
    attention[f"scores_only_{name}_ms"] = ms(all_layers(lambda i: torch.matmul(q_cast, k_cast[i].transpose(-1, -2))), 5)
kv_bytes = 2 * A * KV * SPAN * D * 4 * LAYERS
attention["kv_mb_per_step"] = kv_bytes / 1e6
attention["two_matmuls_gb_per_s"] = kv_bytes / attention["two_matmuls_ms"] / 1e6
attention["compiled_fused_gb_per_s"] = kv_bytes / attention["compiled_fused_ms"] / 1e6
attention = {k: round(v, 3) if isinstance(v, float) else v for k, v in attention.items()}
print(f"attention at {A} rows, {SPAN} positions, 30 layers:", attention, flush=True)

result = {"threads": torch.get_num_threads(), "linear_by_rows": linear,
          "attention": {"rows": A, "positions": SPAN, "prefix": P, **attention}}
out.mkdir(parents=True, exist_ok=True)
(out / "decode_kernels.json").write_text(json.dumps(result, indent=2) + "\n")
