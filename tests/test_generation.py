"""Generation backends: the engine must decode exactly like HF `generate` and sample by the same rules."""

from __future__ import annotations

import json
import math
import warnings
from collections import Counter
from pathlib import Path

import pytest
import torch

from selfmotivated.generation import EngineConfig, SamplingParams, make_generator
from selfmotivated.generation.engine import EngineGenerator
from selfmotivated.generation.sampling import eos_token_ids, find_stop, process_logits
from selfmotivated.tiny import build_tiny_model

SYSTEM = "You are a careful assistant. Think step by step, then give the answer. " * 2
QUESTIONS = [
    "What is 2+2?",
    "Hi",
    "Tom has 3 apples and buys 5 more. Then he gives 2 of them to his sister. How many apples does he have?",
    "Name a color.",
    "Is a coin still heads up after two flips?",
    "x" * 40,
]


def chat(tokenizer, question: str, system: str = SYSTEM) -> str:
    messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


@pytest.fixture(scope="module")
def prompts(tiny):
    _, tokenizer = tiny
    return [chat(tokenizer, q) for q in QUESTIONS]


def token_ids(results):
    return [[c.token_ids for c in completions] for completions in results]


GREEDY = SamplingParams(max_new_tokens=24, temperature=0.0)


# ---------------------------------------------------------------------------------------------
# Greedy equality with HF generate (left-padded batches).


@pytest.mark.parametrize(
    "options",
    [
        {},  # prefix reuse on, all rows in flight
        {"prefix_reuse": False},
        {"max_seqs": 2},  # continuous batching: 6 prompts through 2 slots
        {"max_seqs": 3, "prefill_tokens": 40},  # prefill split over several forward passes
        {"max_tokens": 450},  # the KV budget allows only two slots
    ],
    ids=["prefix", "no-prefix", "continuous", "chunked-prefill", "kv-budget"],
)
def test_greedy_matches_hf(tiny, prompts, options):
    model, tokenizer = tiny
    expected = make_generator(model, tokenizer, "hf").generate(prompts, GREEDY)
    got = make_generator(model, tokenizer, "engine", **options).generate(prompts, GREEDY)
    assert token_ids(got) == token_ids(expected)
    assert [[c.text for c in r] for r in got] == [[c.text for c in r] for r in expected]


def test_prefix_is_detected_and_shared(tiny, prompts):
    model, tokenizer = tiny
    engine = EngineGenerator(model, tokenizer)
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    shared = engine.shared_prefix_length(encoded)
    # The questions start with different characters, so the prefix ends exactly where they start.
    common_text = prompts[0][: prompts[0].index("user\n") + len("user\n")]
    assert shared == len(tokenizer(common_text, add_special_tokens=False)["input_ids"])
    assert all(ids[:shared] == encoded[0][:shared] for ids in encoded)
    # One prompt alone: everything but its last token is shared by its n samples.
    assert engine.shared_prefix_length(encoded[:1]) == len(encoded[0]) - 1


def test_greedy_n_samples_and_prompts_without_common_prefix(tiny):
    model, tokenizer = tiny
    prompts = ["abc", "Hello there, how are you today?", "zz top"]
    params = SamplingParams(max_new_tokens=16, temperature=0.0, n=3)
    expected = make_generator(model, tokenizer, "hf").generate(prompts, params)
    got = make_generator(model, tokenizer, "engine", max_seqs=4).generate(prompts, params)
    assert token_ids(got) == token_ids(expected)
    assert all(len(r) == 3 and r[0].token_ids == r[2].token_ids for r in got)
    assert [r[0].prompt_tokens for r in got] == [len(tokenizer(p)["input_ids"]) for p in prompts]


def test_greedy_matches_hf_with_lora(prompts):
    from peft import LoraConfig, get_peft_model

    base, tokenizer = build_tiny_model(seed=1)
    before = make_generator(base, tokenizer, "engine").generate(prompts, GREEDY)
    torch.manual_seed(0)
    config = LoraConfig(r=4, lora_alpha=16, lora_dropout=0.5, init_lora_weights=False,
                        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    model = get_peft_model(base, config)
    model.train()  # PPO leaves the policy in train mode; generation must not apply LoRA dropout
    frozen = model.get_base_model().model.embed_tokens.eval()  # a submodule the caller keeps in eval
    got = make_generator(model, tokenizer, "engine").generate(prompts, GREEDY)
    assert model.training and not frozen.training  # every module's own mode is restored
    expected = make_generator(model, tokenizer, "hf").generate(prompts, GREEDY)
    assert token_ids(got) == token_ids(expected)
    assert token_ids(got) != token_ids(before)  # the adapters really were applied
    with model.disable_adapter():
        assert token_ids(make_generator(model, tokenizer, "engine").generate(prompts, GREEDY)) == token_ids(before)


def test_engine_sees_in_place_weight_updates(prompts):
    model, tokenizer = build_tiny_model(seed=2)
    engine = make_generator(model, tokenizer, "engine")
    before = engine.generate(prompts, GREEDY)
    with torch.no_grad():  # an optimizer step, in place
        generator = torch.Generator().manual_seed(0)
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=generator))
    after = engine.generate(prompts, GREEDY)
    assert token_ids(after) != token_ids(before)
    assert token_ids(after) == token_ids(make_generator(model, tokenizer, "hf").generate(prompts, GREEDY))


# ---------------------------------------------------------------------------------------------
# Log-probabilities, stop strings, EOS, errors, fallback.


@pytest.mark.parametrize("backend", ["engine", "hf"])
def test_logprobs_match_full_forward(tiny, prompts, backend):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=12, temperature=0.8, top_k=20, top_p=0.9, n=2, seed=3,
                            return_logprobs=True)
    results = make_generator(model, tokenizer, backend, max_seqs=3).generate(prompts[:3], params)
    for prompt, completions in zip(prompts, results):
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        for c in completions:
            assert len(c.logprobs) == len(c.token_ids) > 0
            ids = torch.tensor([prompt_ids + c.token_ids])
            with torch.no_grad():
                logits = model(ids).logits[0, len(prompt_ids) - 1 : -1]  # (T_new, V)
            # Logits / temperature (what PPO's ratio compares), no top-k/top-p filter.
            expected = torch.log_softmax(logits.float() / 0.8, -1).gather(
                -1, torch.tensor(c.token_ids)[:, None])[:, 0]
            assert torch.allclose(torch.tensor(c.logprobs), expected, atol=1e-4)


def test_stop_strings_truncate_text_tokens_and_logprobs(tiny, prompts):
    model, tokenizer = tiny
    full = make_generator(model, tokenizer, "engine").generate(prompts, GREEDY)
    text = full[2][0].text
    stop = text[6:9]  # a string the greedy continuation of prompt 2 is known to contain
    params = SamplingParams(max_new_tokens=24, temperature=0.0, stop=("never appears", stop),
                            return_logprobs=True)
    for backend in ("engine", "hf"):
        results = make_generator(model, tokenizer, backend).generate(prompts, params)
        for full_row, row in zip(full, results):
            c, reference = row[0], full_row[0]
            end = find_stop(reference.text, (stop,))
            if end < 0:
                assert c.finish_reason == reference.finish_reason and c.token_ids == reference.token_ids
                continue
            assert c.finish_reason == "stop"
            assert c.text == reference.text[:end] and c.text.endswith(stop)
            # Tokens: the shortest prefix of the full continuation whose text covers the kept text.
            k = len(c.token_ids)
            assert c.token_ids == reference.token_ids[:k]
            assert len(tokenizer.decode(c.token_ids)) >= end > len(tokenizer.decode(c.token_ids[:-1]))
            assert len(c.logprobs) == k
        assert results[2][0].finish_reason == "stop"


def test_eos_ends_a_row(tiny, prompts):
    model, tokenizer = tiny
    reference = make_generator(model, tokenizer, "engine").generate(prompts, GREEDY)
    # Declare a token that greedy decoding emits at step 5 of prompt 0 to be an EOS token.
    eos = reference[0][0].token_ids[5]
    original = model.generation_config.eos_token_id
    model.generation_config.eos_token_id = [tokenizer.eos_token_id, eos]
    try:
        assert eos in eos_token_ids(model, tokenizer)
        got = make_generator(model, tokenizer, "engine", max_seqs=2).generate(prompts, GREEDY)
        expected = make_generator(model, tokenizer, "hf").generate(prompts, GREEDY)
    finally:
        model.generation_config.eos_token_id = original
    assert token_ids(got) == token_ids(expected)
    first = got[0][0]
    cut = reference[0][0].token_ids.index(eos)
    assert first.finish_reason == "eos" and first.token_ids == reference[0][0].token_ids[: cut + 1]
    for ref, row in zip(reference, got):
        ids = ref[0].token_ids
        if eos in ids:
            assert row[0].token_ids == ids[: ids.index(eos) + 1] and row[0].finish_reason == "eos"
        else:
            assert row[0].token_ids == ids and row[0].finish_reason == "length"


def test_too_long_prompt_is_a_clear_error(tiny):
    model, tokenizer = tiny
    engine = make_generator(model, tokenizer, "engine", max_tokens=64)
    with pytest.raises(ValueError, match="max_tokens=64"):
        engine.generate(["short", "y" * 60], SamplingParams(max_new_tokens=8))
    # The same budget is fine for prompts that fit.
    assert len(engine.generate(["short"], SamplingParams(max_new_tokens=8))[0][0].token_ids) == 8


def test_unsupported_architecture_falls_back_to_hf(tiny):
    from transformers import GPT2Config, GPT2LMHeadModel

    _, tokenizer = tiny
    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tokenizer), n_embd=32, n_layer=2, n_head=2,
                                       n_positions=256, eos_token_id=tokenizer.eos_token_id))
    with pytest.warns(UserWarning, match="hf backend") as caught:
        engine = make_generator(model, tokenizer, "engine")
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is given once, not per call
        got = engine.generate(["hello", "a longer prompt"], GREEDY)
    expected = make_generator(model, tokenizer, "hf").generate(["hello", "a longer prompt"], GREEDY)
    assert token_ids(got) == token_ids(expected)


def test_unknown_backend_and_bad_config():
    with pytest.raises(ValueError, match="unknown generation backend"):
        make_generator(None, None, "vllm-typo")
    with pytest.raises(ValueError):
        EngineConfig(max_seqs=0)


# ---------------------------------------------------------------------------------------------
# Sampling: reproducible, and distributed as temperature -> top-k -> top-p says.


def test_sampling_is_reproducible_under_a_seed(tiny, prompts):
    model, tokenizer = tiny
    params = SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, n=2, seed=11)
    first = make_generator(model, tokenizer, "engine").generate(prompts, params)
    again = make_generator(model, tokenizer, "engine").generate(prompts, params)
    # Each row draws from its own seeded stream, so the slot layout does not change the samples.
    other_layout = make_generator(model, tokenizer, "engine", max_seqs=3).generate(prompts, params)
    other_seed = make_generator(model, tokenizer, "engine").generate(
        prompts, SamplingParams(max_new_tokens=16, temperature=1.0, top_p=0.95, n=2, seed=12))
    assert token_ids(first) == token_ids(again) == token_ids(other_layout)
    assert token_ids(first) != token_ids(other_seed)
    assert all(r[0].token_ids != r[1].token_ids for r in first)  # the n samples differ
    hf = make_generator(model, tokenizer, "hf")
    assert token_ids(hf.generate(prompts, params)) == token_ids(hf.generate(prompts, params))


def _known_distribution_model():
    """Tiny model whose next-token logits are known: the head is replaced by a zero-weight linear layer,
    so the logits equal its bias (a hand-made distribution with ten likely tokens and a long tail)."""
    model, tokenizer = build_tiny_model(seed=4)
    vocab = len(tokenizer)
    head_probs = torch.tensor([0.25, 0.18, 0.14, 0.11, 0.09, 0.07, 0.05, 0.04, 0.03, 0.02])
    probs = torch.full((vocab,), (1 - head_probs.sum().item()) / (vocab - 10))
    likely = torch.randperm(vocab, generator=torch.Generator().manual_seed(0))[:10]
    probs[likely] = head_probs
    head = torch.nn.Linear(model.config.hidden_size, vocab, bias=True)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(probs.log())
    model.config.tie_word_embeddings = False
    model.lm_head = head
    return model, tokenizer


def _expected_distribution(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """HF's own warpers, in HF's order, as the reference."""
    from transformers.generation.logits_process import (
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    scores = logits[None].clone()
    scores = TemperatureLogitsWarper(temperature)(None, scores)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p < 1:
        scores = TopPLogitsWarper(top_p)(None, scores)
    return scores.softmax(-1)[0]


def _bucketed(probs: torch.Tensor, keys: list[int]) -> torch.Tensor:
    """Probabilities of each token in `keys`, plus one bucket for all other tokens."""
    head = probs[keys]
    return torch.cat([head, (1 - head.sum()).clamp(min=0)[None]])


@pytest.mark.parametrize(
    "temperature,top_k,top_p",
    [(1.0, 0, 1.0), (0.6, 0, 1.0), (1.7, 6, 0.8), (0.7, 5, 0.6), (2.0, 0, 0.5)],
)
def test_sampling_matches_the_known_distribution(temperature, top_k, top_p):
    model, tokenizer = _known_distribution_model()
    prompt = chat(tokenizer, "Pick a token.")
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0, -1].float()  # (V,)
    expected = _expected_distribution(logits, temperature, top_k, top_p)
    # Compare frequencies on the ten likely tokens plus one bucket for the tail: with 8000 draws the
    # sampling noise is ~0.013 in total variation.
    keys = torch.nonzero(logits.softmax(-1) >= 0.01)[:, 0].tolist()
    target = _bucketed(expected, keys)

    def distance(probs):
        return 0.5 * (_bucketed(probs, keys) - target).abs().sum().item()

    # The test can tell the rules apart: leaving out any active rule moves the target by > 0.08.
    if temperature != 1.0:
        assert distance(_expected_distribution(logits, 1.0, top_k, top_p)) > 0.08
    if top_k:
        assert distance(_expected_distribution(logits, temperature, 0, top_p)) > 0.08
    if top_p < 1.0:
        assert distance(_expected_distribution(logits, temperature, top_k, 1.0)) > 0.08

    n = 8000
    params = SamplingParams(max_new_tokens=1, temperature=temperature, top_k=top_k, top_p=top_p, n=n, seed=5)
    results = make_generator(model, tokenizer, "engine", max_seqs=1024).generate([prompt], params)
    counts = Counter(c.token_ids[0] for c in results[0])
    assert set(counts) <= set(torch.nonzero(expected > 0)[:, 0].tolist())  # nothing filtered is ever drawn
    observed = torch.zeros_like(expected)
    for token, count in counts.items():
        observed[token] = count / n
    assert distance(observed) < 0.04, (distance(observed), counts.most_common(8))


def test_process_logits_order_and_ties():
    logits = torch.tensor([[2.0, 2.0, 1.0, 0.0, -1.0]])
    kept = process_logits(logits, 1.0, top_k=1, top_p=1.0)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False, False]]  # ties with the k-th stay
    # top-p after temperature: at T=0.25 the top two tokens already hold > 0.999 of the mass.
    kept = process_logits(logits, 0.25, top_k=0, top_p=0.99)
    assert torch.isfinite(kept).tolist() == [[True, True, False, False, False]]
    # At T=1 the probabilities are .39 .39 .14 .05 .02: top_p=0.9 drops the two-token tail (.07 <= .1).
    kept = process_logits(logits, 1.0, top_k=0, top_p=0.9)
    assert torch.isfinite(kept).tolist() == [[True, True, True, False, False]]
    kept = process_logits(logits, 1.0, top_k=0, top_p=1e-6)  # the most likely token always stays
    assert torch.isfinite(kept).sum().item() >= 1
    assert math.isclose(process_logits(logits, 2.0, 0, 1.0)[0, 0].item(), 1.0)


# ---------------------------------------------------------------------------------------------
# The benchmark, end to end through the CLI on tiny settings (numbers are meaningless here).


@pytest.mark.parametrize("baseline", ["hf", "hf-single"])
def test_bench_generate_cli_json(capsys, baseline):
    from selfmotivated.cli import main
    from selfmotivated.generation.bench import format_bench_result

    code = main(["bench", "generate", "--model", "tiny-random", "--dataset", "synthetic_coin_flip",
                 "--prompt", "few-shot", "--batch-size", "2", "--num-prompts", "3", "--new-tokens", "3",
                 "--single-prompts", "1", "--baseline", baseline, "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out)
    for key in ("engine_tokens_per_s", "hf_tokens_per_s", "speedup", "engine_gflops", "peak_gflops"):
        assert result[key] > 0
    assert result["baseline"] == baseline and result["num_prompts"] == 3
    assert result["speedup"] == pytest.approx(result["engine_tokens_per_s"] / result["hf_tokens_per_s"])
    assert result["shared_prefix_tokens"] > 0  # few-shot prompts share their exemplars
    assert result["batch_size"] == 2 and result["engine_slots"] == 64  # the engine keeps its default width
    assert "speedup" in format_bench_result(result) and "64 slots" in format_bench_result(result)


def test_bench_engine_slots_zero_means_batch_size():
    from selfmotivated.generation.bench import BenchGenerateConfig

    assert BenchGenerateConfig(batch_size=8, engine_slots=0).engine_slots == 8
    with pytest.raises(ValueError, match="engine_slots"):
        BenchGenerateConfig(engine_slots=-1)


# ---------------------------------------------------------------------------------------------
# The default model, when it has been converted locally.

DEFAULT_MODEL = Path.home() / ".cache" / "selfmotivated" / "models" / "smollm2-135m-instruct"


@pytest.mark.slow
@pytest.mark.real_model
@pytest.mark.skipif(not (DEFAULT_MODEL / "config.json").exists(), reason="default model not converted locally")
def test_default_model_greedy_matches_hf():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(DEFAULT_MODEL, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(DEFAULT_MODEL)
    few_shot = "Q: There are 3 cars and 2 more arrive. How many cars?\nA: 3 + 2 = 5. The answer is 5.\n"
    questions = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
                 "A coin is heads up. Ann flips it. Is it still heads up?", "What is 12 times 7?"]
    prompts = [chat(tokenizer, f"{few_shot}Q: {q}\nA:", system="You are a helpful assistant.") for q in questions]
    prompts += [chat(tokenizer, q, system="You are a helpful assistant.") for q in questions[:2]]
    params = SamplingParams(max_new_tokens=48, temperature=0.0)
    expected = make_generator(model, tokenizer, "hf").generate(prompts, params)
    for options in ({}, {"prefix_reuse": False, "max_seqs": 2}):
        got = make_generator(model, tokenizer, "engine", **options).generate(prompts, params)
        assert token_ids(got) == token_ids(expected)


def _tiny_bench_json(capsys, *flags: str) -> dict:
    """`sml bench generate --json` on tiny settings with extra flags; its parsed output."""
    from selfmotivated.cli import main

    code = main(["bench", "generate", "--model", "tiny-random", "--dataset", "synthetic_coin_flip",
                 "--prompt", "zero-shot", "--batch-size", "2", "--num-prompts", "3", "--new-tokens", "4",
                 *flags, "--json"])
    assert code == 0
    return json.loads(capsys.readouterr().out)


def test_bench_generate_int8_reports_speed_and_greedy_agreement(capsys):
    from selfmotivated.generation.bench import format_bench_result

    result = _tiny_bench_json(capsys, "--int8")
    assert result["int8_tokens_per_s"] > 0 and result["int8_greedy_prompts"] == 3
    assert result["int8_speedup"] == pytest.approx(result["int8_tokens_per_s"] / result["engine_tokens_per_s"])
    assert 0 <= result["int8_greedy_identical_rows"] <= result["int8_greedy_token_agreement"] <= 1
    assert "int8" in format_bench_result(result)


def test_int8_weights_decode_through_the_engine_and_refuse_training():
    """dtype int8: every linear layer (the LM head too) holds int8 weights, the engine runs them, greedy
    output stays close to the float model's; training and GPUs are refused with the reason."""
    from selfmotivated.models import load_model

    model, tokenizer = load_model("tiny-random", dtype="int8")
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert not linears and "quantized" in type(model.lm_head).__module__
    float_model, _ = load_model("tiny-random")
    params = SamplingParams(max_new_tokens=6)
    prompts = ["Hello there", "What is 2+2?", "Is a coin heads up?"]
    out = make_generator(model, tokenizer, "engine").generate(prompts, params)
    ref = make_generator(float_model, tokenizer, "engine").generate(prompts, params)
    assert all(len(o[0].token_ids) == 6 for o in out)
    with torch.no_grad():  # the logits of the two models are close, not equal
        ids = tokenizer(prompts[1], return_tensors="pt")["input_ids"]
        a, b = model(ids).logits, float_model(ids).logits
    assert not torch.equal(a, b) and (a - b).norm() / b.norm() < 0.1
    assert sum(o[0].token_ids == r[0].token_ids for o, r in zip(out, ref)) >= 1
    with pytest.raises(ValueError, match="training needs float weights"):
        load_model("tiny-random", dtype="int8", for_training=True)
    with pytest.raises(ValueError, match="CPU only"):
        load_model("tiny-random", dtype="int8", device="cuda:0" if torch.cuda.is_available() else "meta")


# Packed weights (EngineConfig.pack_weights): oneDNN copies made per call, forwards restored after it.
needs_pack = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")


@needs_pack
def test_packed_linears_match_f_linear_and_restore_forwards():
    from selfmotivated.packed import packed_linears

    torch.manual_seed(0)
    plain, biased = torch.nn.Linear(32, 48, bias=False), torch.nn.Linear(32, 16)
    other = torch.nn.Embedding(5, 4)  # not a Linear: untouched
    x = torch.randn(3, 7, 32)
    with torch.inference_mode():
        expected = [plain(x), biased(x)]
        with packed_linears([plain, biased, other]) as patched:
            assert patched == [plain, biased] and "forward" in plain.__dict__
            got = [plain(x), biased(x)]
    for a, b in zip(got, expected):
        assert a.shape == b.shape and torch.allclose(a, b, atol=1e-5, rtol=1e-5)
    assert "forward" not in plain.__dict__ and "forward" not in biased.__dict__
    with torch.no_grad():
        plain.weight.mul_(2)  # a weight changed between calls is packed anew
        with torch.inference_mode(), packed_linears([plain]):
            assert torch.allclose(plain(x), 2 * expected[0], atol=1e-5)


@needs_pack
@pytest.mark.parametrize("lora", [False, True])
def test_engine_with_packed_weights_gives_the_unpacked_tokens_and_logprobs(prompts, lora):
    """Greedy tokens equal and sampled log-probs within float rounding, with and without a LoRA adapter
    (whose base layers are packed under the wrapper); the model's forwards are its own again afterwards."""
    model, tokenizer = build_tiny_model()  # its own copy: the LoRA wrapper changes it in place
    if lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, lora_alpha=16, init_lora_weights=False,
                                                 target_modules=["q_proj", "v_proj", "up_proj"]))
    texts = prompts[:4]
    for params in (SamplingParams(max_new_tokens=8),
                   SamplingParams(max_new_tokens=8, temperature=0.9, seed=3, n=2, return_logprobs=True)):
        packed = make_generator(model, tokenizer, "engine").generate(texts, params)
        plain = make_generator(model, tokenizer, "engine", pack_weights=False).generate(texts, params)
        assert token_ids(packed) == token_ids(plain)
        if params.return_logprobs:
            a = torch.tensor([lp for r in packed for c in r for lp in c.logprobs])
            b = torch.tensor([lp for r in plain for c in r for lp in c.logprobs])
            assert torch.allclose(a, b, atol=1e-4)
    assert not [m for m in model.modules() if "forward" in m.__dict__]


def test_bench_generate_unpacked_reports_the_pack_speedup(capsys):
    from selfmotivated.generation.bench import format_bench_result

    result = _tiny_bench_json(capsys, "--unpacked")
    assert result["pack_speedup"] == pytest.approx(result["engine_tokens_per_s"] / result["unpacked_tokens_per_s"])
    assert result["pack_greedy_prompts"] == 3 and 0 <= result["pack_greedy_identical_rows"] <= 1
    assert result["engine_fraction_of_peak_with_prompts"] > result["engine_fraction_of_peak"]
    assert "packed weights" in format_bench_result(result)


@needs_pack
def test_packed_frozen_linears_train_like_f_linear():
    """training=True packs frozen layers only, forward and backward: the input's gradient and a trainable
    layer's weight gradient equal plain F.linear's to float rounding; trainable layers keep their own forward."""
    from selfmotivated.packed import packed_linears

    torch.manual_seed(0)
    frozen, trained = torch.nn.Linear(24, 40), torch.nn.Linear(40, 8)
    frozen.requires_grad_(False)
    x = torch.randn(5, 3, 24, requires_grad=True)

    def grads():
        x.grad, trained.weight.grad = None, None
        trained(torch.relu(frozen(x))).square().sum().backward()
        return x.grad.clone(), trained.weight.grad.clone()

    expected = grads()
    with packed_linears([frozen, trained], training=True) as patched:
        assert patched == [frozen]
        got = grads()
        with torch.no_grad():
            assert torch.allclose(frozen(x), torch.nn.functional.linear(x, frozen.weight, frozen.bias), atol=1e-5)
    for a, b in zip(got, expected):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)
    assert "forward" not in frozen.__dict__
    # A trained layer packed for no-grad passes still trains with gradients on.
    with packed_linears([trained]):
        trained.weight.grad = None
        trained(torch.randn(2, 40)).sum().backward()
        assert trained.weight.grad is not None


def test_a_build_that_cannot_pack_falls_back_to_torch_s_own_linear(monkeypatch):
    import selfmotivated.packed as packed

    def broken(weight):
        raise RuntimeError("oneDNN: unsupported platform")

    monkeypatch.setattr(packed, "_pack", broken)
    monkeypatch.setattr(packed, "can_pack", lambda: True)
    monkeypatch.setattr(packed, "_failed", False)
    layer = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with torch.inference_mode(), packed.packed_linears([layer]) as patched:
        assert patched == [] and torch.equal(layer(x), torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert packed._failed and "forward" not in layer.__dict__
