"""Linear layers under bf16 autocast that keep no bf16 copy of their weight for the backward (training on a CPU).

Under autocast a linear layer casts its fp32 weight to bf16 and autograd keeps that copy until the
layer's backward: one bf16 copy of every weight (SmolLM2-135M: 257 MiB) lives from the end of the
forward through most of the backward, where training peaks. Here the layer saves its fp32 weight
(the parameter itself, no copy) and casts it again in the backward: the same bf16 products, one more
cast per layer per backward.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any


@functools.cache
def _recast_linear_function():
    import torch
    import torch.nn.functional as F

    class RecastLinear(torch.autograd.Function):
        """`F.linear` in `dtype` as autocast computes it, saving the fp32 weight instead of its cast."""

        @staticmethod
        def forward(ctx, x, weight, bias, dtype):
            xc = x.to(dtype)
            ctx.save_for_backward(xc, weight, bias)
            ctx.dtype, ctx.x_dtype = dtype, x.dtype
            with torch.autocast(x.device.type, enabled=False):
                return F.linear(xc, weight.to(dtype), None if bias is None else bias.to(dtype))

        @staticmethod
        def backward(ctx, grad):
            xc, weight, bias = ctx.saved_tensors
            g = grad.to(ctx.dtype).reshape(-1, grad.shape[-1])
            gx = gw = gb = None
            if ctx.needs_input_grad[0]:  # as autograd differentiates x16 @ w16^T: g @ w16, then back to x's dtype
                gx = (g @ weight.to(ctx.dtype)).reshape(*grad.shape[:-1], weight.shape[1]).to(ctx.x_dtype)
            if ctx.needs_input_grad[1]:  # (x16^T @ g)^T, the operand order autograd uses for w16^T
                gw = (xc.reshape(-1, xc.shape[-1]).t() @ g).t().to(weight.dtype)
            if bias is not None and ctx.needs_input_grad[2]:
                gb = g.sum(0).to(bias.dtype)
            return gx, gw, gb, None

    return RecastLinear


def _forward(mod: Any, x: Any) -> Any:
    import torch
    import torch.nn.functional as F

    dev = x.device.type
    if torch.is_autocast_enabled(dev) and torch.is_grad_enabled() and mod.weight.dtype == torch.float32:
        return _recast_linear_function().apply(x, mod.weight, mod.bias, torch.get_autocast_dtype(dev))
    return F.linear(x, mod.weight, mod.bias)


@contextlib.contextmanager
def recast_linears(model: Any, skip: Any = None):
    """Inside the block, the model's plain `nn.Linear` layers (all but `skip`) keep no autocast weight copy
    for the backward; outside it, or without autocast, they compute exactly as before."""
    import torch

    patched = []
    try:
        for mod in model.modules():
            if type(mod) is torch.nn.Linear and mod is not skip and "forward" not in vars(mod):
                mod.forward = functools.partial(_forward, mod)
                patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward
