"""Linear layers from oneDNN-packed weights on CPU: the same products, ~1.25x faster on this project's CPU.

Why by hand: torch's CPU `F.linear` (an MKL GEMM) packs the weight into the kernel's blocked layout again on
every call. `torch.ops.mkldnn._reorder_linear_weight` packs it once, and `_linear_pointwise` multiplies by
the packed copy. Measured on 2 EPYC cores over SmolLM2-135M's 30 layers: 1.25-1.35x at 48 to 2048 rows, and
1.7x for the LM head at 48 rows. The sums run in another order, so results match `F.linear` to float
rounding (~1e-6 relative), not bit for bit.

`packed_linears(modules)` points the forward of every plain float32 CPU `nn.Linear` among `modules` at a
packed copy of its weight for the length of a block, then gives each module its own forward back:
- a weight that is trained (requires_grad, or in the optimizer's `trained` parameters: a PPO model's idle
  adapters are frozen only until their turn) is packed for no-grad passes only (rollouts, scoring, reference
  and old log-probs); with gradients on, the module runs its own `F.linear`, so its weight gets its gradient
  and every optimizer step is seen;
- a frozen weight (a LoRA base layer, a tied LM head) is packed for training too, with a second packed copy
  of its transpose for the backward pass: the input's gradient is grad @ W. PPO's update uses this: its
  micro-batches are a few short responses over shared prompt keys/values, where packing pays (the update
  phase of `sml bench ppo`: 20.4 s -> 16.6 s). SFT and reward-model steps of 4 x 256 tokens gained nothing
  measurable (0.94x at 4 x 256, 1.09x at 4 x 150 tokens, LoRA, best of 6 steps), so they do not use it.
The packed copies are made on entry, so a weight must not change inside the block unless it is trained
(trained weights are never read from the copies while gradients are on). The block holds one extra copy of
the packed weights (two of the frozen ones when `training`).
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F


_failed = False  # set once packing has raised in this process: every later block runs unpacked


def can_pack() -> bool:
    """Whether this torch build has the oneDNN ops packing needs."""
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def _packable(module) -> bool:
    weight = getattr(module, "weight", None)
    return (type(module) is torch.nn.Linear and weight.device.type == "cpu" and weight.dtype == torch.float32
            and "forward" not in module.__dict__)  # already patched (nested block) or wrapped by a hook library


def _frozen(module, trained: set[int] = frozenset()) -> bool:
    params = [p for p in (module.weight, module.bias) if p is not None]
    return not any(p.requires_grad or id(p) in trained for p in params)


def _pack(weight: torch.Tensor) -> torch.Tensor:
    return torch.ops.mkldnn._reorder_linear_weight(weight.detach().contiguous(), None)


def _packed_matmul(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


class _FrozenPackedLinear(torch.autograd.Function):
    """y = x W^T + b for a frozen W, both ways through packed copies: dx = dy W."""

    @staticmethod
    def forward(ctx, x, packed, packed_t, bias):
        ctx.packed_t = packed_t
        return _packed_matmul(x, packed, bias)

    @staticmethod
    def backward(ctx, grad):
        return _packed_matmul(grad.contiguous(), ctx.packed_t, None), None, None, None


def _forward(module: torch.nn.Linear, training: bool, trained: set[int] = frozenset()):
    packed, bias = _pack(module.weight), module.bias
    if not _frozen(module, trained):
        def forward(x):
            if torch.is_grad_enabled():  # a trained weight: its own forward, so it gets its gradient
                return F.linear(x, module.weight, module.bias)
            return _packed_matmul(x, packed, bias)
        return forward
    packed_t = _pack(module.weight.t()) if training else None

    def forward(x):
        if torch.is_grad_enabled() and x.requires_grad:
            if packed_t is None:
                return F.linear(x, module.weight, bias)
            return _FrozenPackedLinear.apply(x, packed, packed_t, bias)
        return _packed_matmul(x, packed, bias)
    return forward


@contextlib.contextmanager
def packed_linears(modules, training: bool = False, trained=()):
    """Within the block, each plain float32 CPU `nn.Linear` among `modules` computes from packed weights (see
    the module docstring); `training` also packs frozen weights' transposes for backward passes. `trained`:
    parameters an optimizer may change in the block (for example every adapter of a PPO model, of which only
    the active one requires grad at a time): their layers are never packed for training. Yields the patched
    modules; on exit every forward is the module's own again. A no-op without oneDNN."""
    global _failed
    trained = {id(p) for p in trained}
    patched = []
    try:
        if can_pack() and not _failed:
            for module in modules:
                if not _packable(module) or (training and not _frozen(module, trained)):
                    continue
                try:
                    module.forward = _forward(module, training, trained)
                except RuntimeError as err:  # a oneDNN build that cannot pack here: run torch's own kernels
                    _failed = True
                    logging.getLogger(__name__).warning("packed weights off: %s", err)
                    break
                patched.append(module)
        yield patched
    finally:
        for module in patched:
            del module.forward
