"""Linear layers run through oneDNN with their weights packed once (used by engines/hf.py on a CPU)."""

from __future__ import annotations

import contextlib
import functools
from typing import Any


@functools.cache
def onednn_linear_available() -> bool:
    """Whether this torch build runs a linear layer through oneDNN with a prepacked weight."""
    import torch

    try:
        w = torch.ones(4, 4)
        out = torch.ops.mkldnn._linear_pointwise(torch.ones(2, 4), torch.ops.mkldnn._reorder_linear_weight(w, 2),
                                                 None, "none", [], "")
        return bool(torch.equal(out, torch.full((2, 4), 4.0)))
    except (AttributeError, RuntimeError, NotImplementedError):
        return False


def _packed_forward(packed: Any, bias: Any, x: Any) -> Any:
    import torch

    return torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")


@contextlib.contextmanager
def packed_linears(model: Any, min_numel: int = 1 << 16):
    """On a CPU, run the model's large fp32 linear layers through oneDNN with weights packed once.

    A decode step multiplies a few rows by each weight; MKL's `x @ W^T` reaches a fraction of this
    CPU's speed there, while oneDNN with the weight reordered into its blocked layout is 1.5-2x
    faster for SmolLM2's layers and head at 4-64 rows (bench/RESULTS_earlier.md). Same products up to the
    float rounding order. Small layers (below `min_numel` weights) gain nothing and are left alone,
    as are other devices and dtypes, and layers whose forward is already replaced (accelerate hooks).
    The packed copies live only inside the block.
    """
    import torch

    patched = []
    try:
        if model.device.type == "cpu" and onednn_linear_available():
            for mod in model.modules():
                if (type(mod) is torch.nn.Linear and "forward" not in vars(mod)
                        and mod.weight.dtype == torch.float32 and mod.weight.numel() >= min_numel):
                    packed = torch.ops.mkldnn._reorder_linear_weight(mod.weight.detach(), 64)
                    mod.forward = functools.partial(_packed_forward, packed, mod.bias)
                    patched.append(mod)
        yield
    finally:
        for mod in patched:
            del mod.forward
