"""Where the engine's time goes, by phase, on 64 zero-shot GSM8K prompts (160 new tokens, T=0.7, 64 slots).

    python results/speed/profile_engine.py TOP_P [old]
"old" times the sampler before the top-k nucleus: `git show 5dcdf3f:selfmotivated/generation/sampling.py >
old_sampling.py` in the folder named below. MODEL=tiny-random for a smoke run."""
import collections, json, os, sys, time
import torch
from selfmotivated.models import load_model
from selfmotivated.generation import SamplingParams
from selfmotivated.generation import engine as E
from selfmotivated.generation.bench import BenchGenerateConfig, build_bench_prompts

top_p = float(sys.argv[1]) if len(sys.argv) > 1 else 1.0
import os
model, tok = load_model(os.environ.get("MODEL", "smollm2-135m-instruct"))
prompts = build_bench_prompts(BenchGenerateConfig(prompt="zero-shot"), tok)[:64]
T = collections.defaultdict(float); N = collections.Counter(); W = collections.Counter()
def wrap(cls, name):
    f = getattr(cls, name)
    def g(self, *a, **k):
        t = time.perf_counter(); r = f(self, *a, **k); T[name] += time.perf_counter() - t; N[name] += 1
        if name == "decode_forward": W[len(self.active)] += 1
        return r
    setattr(cls, name, g)
for n in ("admit", "decode_step", "decode_forward", "push_tokens", "retire_finished", "encode_suffixes"):
    wrap(E._Run, n)
import selfmotivated.generation.sampling as S
sn = S.sample_next
if len(sys.argv) > 2 and sys.argv[2] == "old":  # the sampler before the top-k nucleus and block-wise CDF
    sys.path.insert(0, os.environ.get("OLD_SAMPLER_DIR", "."))
    import old_sampling
    sn = old_sampling.sample_next
def timed_sample(*a, **k):
    t = time.perf_counter(); r = sn(*a, **k); T["sample_next"] += time.perf_counter() - t; return r
E.sample_next = timed_sample
gen = E.EngineGenerator(model, tok)
params = SamplingParams(max_new_tokens=160, temperature=0.7, top_p=top_p, seed=0)
gen.generate(prompts[:2], SamplingParams(max_new_tokens=2, temperature=0.7, seed=0))
T.clear(); N.clear(); W.clear()
t = time.perf_counter(); out = gen.generate(prompts, params); total = time.perf_counter() - t
tokens = sum(len(c.token_ids) for r in out for c in r)
steps_by_width = sorted(W.items())
print(json.dumps({"sampler": sys.argv[2] if len(sys.argv) > 2 else "new", "top_p": top_p, "total_s": round(total, 2), "tokens": tokens, "tok_s": round(tokens / total, 1),
                  "phases_s": {k: round(v, 2) for k, v in T.items()}, "calls": dict(N),
                  "decode_steps": sum(W.values()),
                  "rows_per_step_mean": round(sum(w * c for w, c in W.items()) / max(1, sum(W.values())), 1),
                  "steps_under_32_rows": sum(c for w, c in W.items() if w < 32)}, indent=1))
