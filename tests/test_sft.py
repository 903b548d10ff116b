"""SFT (stage 2) on tiny models: response-only loss, learning on a toy set, LoRA, saved folders, bad input."""

import json
import random

import pytest
import torch

from selfmotivated.sft import SFTConfig, collate_sft, load_sft_rows, run_sft, sft_loss, tokenize_sft
from selfmotivated.tiny import build_tiny_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")


def prompt_of(question: str) -> str:
    return f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"


def write_toy_sft(path, n=120, seed=0):
    """A learnable toy: the response restates the question's numbers and their sum in a fixed format."""
    rng = random.Random(seed)
    with open(path, "w") as fh:
        for i in range(n):
            a, b = rng.randint(1, 9), rng.randint(1, 9)
            fh.write(json.dumps({"question_id": f"q{i}", "prompt": prompt_of(f"What is {a} plus {b}?"),
                                 "response": f"{a} plus {b} makes {a + b}. The answer is {a + b}."}) + "\n")
    return str(path)


def base_config(tiny_dir, tmp_path, **kw):
    values = dict(model=tiny_dir, train_file=write_toy_sft(tmp_path / "sft.jsonl"), out=str(tmp_path / "out"),
                  learning_rate=3e-3, epochs=2, batch_size=8, val_fraction=0.2, save_steps=0, progress=False,
                  early_stopping_patience=0, warmup_ratio=0.0)
    values.update(kw)
    return SFTConfig(**values)


def test_loss_covers_response_tokens_and_eos_only():
    tok = build_tiny_tokenizer()
    rows = [{"prompt": prompt_of("Hi?"), "response": "Hello. The answer is 1."},
            {"prompt": prompt_of("A longer question here?"), "response": "Yes."}]
    items, dropped = tokenize_sft(rows, tok, max_length=512)
    assert dropped == 0
    batch = collate_sft(items, tok.pad_token_id)
    for b, row in enumerate(rows):
        want = tok(row["response"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        assert batch["targets"][b][batch["loss_mask"][b]].tolist() == want
    assert batch["loss_mask"].sum() == sum(len(it["ids"]) - it["n_prompt"] for it in items)


def test_response_only_loss_matches_transformers_masked_labels(tiny):
    """Our logits_to_keep path equals the textbook loss with prompt and padding labels set to -100."""
    model, tok = tiny
    rows = [{"prompt": prompt_of("What is 2 plus 2?"), "response": "2 plus 2 makes 4. The answer is 4."},
            {"prompt": prompt_of("Why?"), "response": "Because. The answer is yes."}]
    items, _ = tokenize_sft(rows, tok, 512)
    batch = collate_sft(items, tok.pad_token_id)
    labels = batch["input_ids"].clone()
    for b, it in enumerate(items):
        labels[b, :it["n_prompt"]] = -100
        labels[b, len(it["ids"]):] = -100
    with torch.no_grad():
        ours, _ = sft_loss(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=labels).loss
    assert torch.allclose(ours, reference, atol=1e-5)


def test_a_transformers_without_boolean_logits_masks_gets_the_same_losses(tiny, monkeypatch):
    """transformers 5.17 takes no boolean logits_to_keep mask: the full logits, masked after, give the same losses."""
    import selfmotivated.sft as sft

    model, tok = tiny
    items, _ = tokenize_sft([{"prompt": prompt_of("What is 2 plus 2?"), "response": "4. The answer is 4."},
                             {"prompt": prompt_of("Why?"), "response": "Because. The answer is yes."}], tok, 512)
    batch = collate_sft(items, tok.pad_token_id)
    with torch.no_grad():
        masked = sft.sft_token_losses(model, batch)
        monkeypatch.setattr(sft, "_logits_mask_supported", lambda: False)
        full = sft.sft_token_losses(model, batch)
    assert masked.shape == full.shape == (int(batch["loss_mask"].sum()),)
    assert torch.allclose(masked, full, atol=1e-6)


def test_full_sft_learns_and_saves_a_loadable_model(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    config = base_config(tiny_dir, tmp_path, epochs=3, eval_steps=6)
    metrics = run_sft(config)
    assert metrics["val_loss_final"] < 0.6 * metrics["val_loss_start"]  # learned, not just ran
    assert metrics["best_val_loss"] <= metrics["val_loss_final"]
    assert metrics["padding_fraction"] < 0.05  # length buckets keep padding small

    before = AutoModelForCausalLM.from_pretrained(tiny_dir)
    after = AutoModelForCausalLM.from_pretrained(metrics["model_dir"])
    old = dict(before.named_parameters())
    for name, p in after.named_parameters():
        assert not torch.equal(p, old[name]), f"{name} did not change"

    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["status"] == "finished"
    assert record["config"]["learning_rate"] == 3e-3
    assert record["versions"]["torch"] and record["versions"]["transformers"]
    assert record["data"]["train_rows"] + record["data"]["val_rows"] == 120
    assert record["metrics"]["val_loss_final"] == metrics["val_loss_final"]
    logged = [json.loads(line) for line in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("eval") for r in logged) and any("tokens_per_s" in r for r in logged)


def test_lora_trains_only_the_adapter_and_saves_adapter_or_merged(tiny_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    from selfmotivated.models import load_model

    metrics = run_sft(base_config(tiny_dir, tmp_path, method="lora", lora_r=4, learning_rate=1e-2))
    assert metrics["val_loss_final"] < metrics["val_loss_start"]
    folder = tmp_path / "out" / "model"
    assert (folder / "adapter_config.json").is_file() and (folder / "adapter_model.safetensors").is_file()
    adapter_config = json.loads((folder / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == tiny_dir

    model, tok = load_model(str(folder), device="cpu")  # how sml eval loads it
    base = AutoModelForCausalLM.from_pretrained(tiny_dir)
    base_params = dict(base.named_parameters())
    lora_changed = 0
    for name, p in model.named_parameters():
        if "lora_" in name:
            lora_changed += int("lora_B" in name and p.abs().sum() > 0)  # B starts at zero
        else:
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            assert torch.equal(p, base_params[plain]), f"base weight {plain} changed"
    assert lora_changed > 0

    ids = tok(prompt_of("What is 3 plus 4?"), return_tensors="pt")["input_ids"]
    with torch.no_grad():
        adapter_logits = model(ids).logits
    merged = run_sft(base_config(tiny_dir, tmp_path, method="lora", lora_r=4, learning_rate=1e-2, save_merged=True,
                                 resume=False))
    full = AutoModelForCausalLM.from_pretrained(merged["model_dir"])
    with torch.no_grad():
        assert torch.allclose(full(ids).logits, adapter_logits, atol=1e-4)


def test_early_stopping_stops_when_validation_gets_worse(tiny_dir, tmp_path):
    # A learning rate far too high makes the validation loss rise after the first evaluation.
    metrics = run_sft(base_config(tiny_dir, tmp_path, learning_rate=0.5, eval_steps=1, early_stopping_patience=2,
                                  max_grad_norm=0.0, epochs=3))
    assert metrics["stopped_early"]
    assert metrics["steps"] < 3 * 12
    assert metrics["best_step"] <= metrics["steps"] - 2


def test_bad_input_errors_name_the_problem(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "p"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: missing key\(s\) \['response'\]"):
        load_sft_rows(SFTConfig(model=tiny_dir, train_file=str(bad)))

    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    with pytest.raises(ValueError, match="no SFT rows"):
        load_sft_rows(SFTConfig(model=tiny_dir, train_file=str(empty)))

    with pytest.raises(ValueError, match="no training data"):
        run_sft(SFTConfig(model=tiny_dir, out=str(tmp_path / "x")))

    long_rows = tmp_path / "long.jsonl"
    long_rows.write_text(json.dumps({"prompt": "p" * 100, "response": "r" * 100}) + "\n")
    with pytest.raises(ValueError, match="longer than max_length=64"):
        run_sft(SFTConfig(model=tiny_dir, train_file=str(long_rows), out=str(tmp_path / "y"), max_length=64,
                          progress=False))
    with pytest.raises(ValueError, match=r"long.jsonl:1: 201 tokens, longer than max_length=64"):
        run_sft(SFTConfig(model=tiny_dir, train_file=str(long_rows), out=str(tmp_path / "z"), max_length=64,
                          too_long="error", progress=False))
    with pytest.raises(ValueError, match="context"):
        run_sft(SFTConfig(model=tiny_dir, train_file=str(long_rows), out=str(tmp_path / "w"), max_length=10**6,
                          progress=False))


def test_too_long_rows_are_dropped_and_counted(tiny_dir, tmp_path):
    path = write_toy_sft(tmp_path / "sft.jsonl", n=40)
    with open(path, "a") as fh:
        fh.write(json.dumps({"question_id": "long", "prompt": prompt_of("x" * 300), "response": "y"}) + "\n")
    run_sft(SFTConfig(model=tiny_dir, train_file=path, out=str(tmp_path / "out"), max_length=128, epochs=1,
                      batch_size=4, save_steps=0, progress=False))
    record = json.loads((tmp_path / "out" / "run.json").read_text())
    assert record["data"]["dropped_too_long"] == 1
    assert record["data"]["train_rows"] + record["data"]["val_rows"] == 40
