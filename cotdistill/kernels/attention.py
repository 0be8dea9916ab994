"""Padding-free attention: in a packed row, each example attends only to its own earlier tokens.

transformers gives SDPA a packed row as one dense block-diagonal [N x N] mask (N = every token of
the per-device batch), so attention costs O(N^2) although only the blocks on the diagonal are
used: at 64 examples of ~200 tokens that is ~64x the attention work a padded batch does, and more
than the whole useful work of a 135M student. This module registers an attention implementation
with transformers' `AttentionInterface` under `NAME` that reads the example boundaries the
`PackCollator` sends along (`cu_seq_lens_q`, transformers' own flash-attention keyword) and

- on CUDA in bf16/fp16 calls torch's own flash-attention varlen kernel
  (`torch.nn.attention.varlen.varlen_attn`, torch >= 2.10): no mask, no work across examples;
- elsewhere (a CPU, fp32, an older torch, a head size or window flash does not take) runs SDPA on
  each example's slice: exact and still without cross-example work, but one call per example.

Not registered as a mask function on purpose: transformers then builds no mask at all for it
(masking_utils treats unknown implementations like an external kernel). So it is only for packed
training rows (and right-padded ones, where causality alone is enough) — never for generation
with left padding; `use_for_training` sets it and `restore` puts the model's own one back.
"""

from __future__ import annotations

import functools
import inspect
import math
import sys
from typing import Any

NAME = "cotdistill_varlen"
_FLASH_FAILED: list[str] = []  # the first error of torch's varlen kernel here: from then on, the exact fallback


@functools.cache
def _varlen_fn() -> tuple[Any, frozenset] | tuple[None, frozenset]:
    """torch's varlen flash attention and its parameter names (looked up once), or None where this torch has none."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None, frozenset()
    return varlen_attn, frozenset(inspect.signature(varlen_attn).parameters)


def _flash_call(query, key, value, cu, max_len: int, scaling: float, window: int | None):
    """(T, H, D) packed q/k/v through torch's varlen kernel, or None when its API cannot express the call.

    torch 2.10 took `is_causal`, later releases `window_size=(left, right)` (causal = (-1, 0)),
    `scale` and `enable_gqa`: the call is built from the signature this torch has.
    """
    import torch

    fn, params = _varlen_fn()
    if fn is None:
        return None
    kw: dict[str, Any] = {}
    if "window_size" in params:
        kw["window_size"] = (-1 if window is None else window - 1, 0)
    elif "is_causal" in params and (window is None or max_len <= window):  # a window no example reaches
        kw["is_causal"] = True
    else:
        return None
    d = query.shape[-1]
    if "scale" in params:
        kw["scale"] = scaling
    elif not math.isclose(scaling, d**-0.5):
        query = query * (scaling * math.sqrt(d))  # the kernel scales by 1/sqrt(d)
    if key.shape[1] != query.shape[1]:
        if "enable_gqa" in params:
            kw["enable_gqa"] = True
        else:
            rep = query.shape[1] // key.shape[1]
            key, value = key.repeat_interleave(rep, dim=1), value.repeat_interleave(rep, dim=1)
    cu = cu.to(device=query.device, dtype=torch.int32)
    return fn(query, key, value, cu, cu, max_len, max_len, **kw)


def _per_example(query, key, value, bounds: list[int], scaling: float, window: int | None):
    """(1, H, T, D) q/k/v -> (1, T, H, D): SDPA on each example's own slice (exact; any device, any dtype)."""
    import torch
    import torch.nn.functional as F

    outs = []
    for s, e in zip(bounds[:-1], bounds[1:]):
        q, k, v = query[:, :, s:e], key[:, :, s:e], value[:, :, s:e]
        n = e - s
        if window is not None and n > window:  # causal and within the sliding window
            i = torch.arange(n, device=q.device)
            mask = (i[None, :] <= i[:, None]) & (i[:, None] - i[None, :] < window)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scaling,
                                               enable_gqa=k.shape[1] != q.shape[1])
        else:
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                               enable_gqa=k.shape[1] != q.shape[1])
        outs.append(o)
    return torch.cat(outs, dim=2).transpose(1, 2).contiguous()


def _bounds_from_positions(position_ids) -> Any:
    """Cumulative example lengths of a packed row from its position ids (each example restarts at 0)."""
    import torch

    pos = position_ids[0]
    starts = torch.nonzero(pos == 0).flatten()
    return torch.cat([starts, torch.tensor([pos.numel()], device=pos.device)])


def varlen_attention(module: Any, query, key, value, attention_mask, dropout: float = 0.0,
                     scaling: float | None = None, sliding_window: int | None = None, softcap: float | None = None,
                     **kwargs) -> tuple[Any, None]:
    """transformers attention function: query (B, Hq, T, D), key/value (B, Hkv, T, D) -> ((B, T, Hq, D), None)."""
    import torch
    import torch.nn.functional as F

    if softcap is not None or dropout:
        raise ValueError(f"{NAME}: attention softcapping and dropout are not supported; use padded batches")
    scaling = scaling if scaling is not None else query.shape[-1] ** -0.5
    cu = kwargs.get("cu_seq_lens_q")
    if cu is None and kwargs.get("position_ids") is not None and query.shape[0] == 1:
        cu = _bounds_from_positions(kwargs["position_ids"])
    if cu is None:  # right-padded rows: causality keeps every real token away from the padding after it
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling,
                                             enable_gqa=key.shape[1] != query.shape[1])
        return out.transpose(1, 2).contiguous(), None
    if query.shape[0] != 1:
        raise ValueError(f"{NAME}: a packed batch is one row, got {query.shape[0]}")
    max_len = kwargs.get("max_length_q")
    if query.is_cuda and query.dtype in (torch.float32,) and torch.is_autocast_enabled("cuda"):
        dt = torch.get_autocast_dtype("cuda")  # rotary embeddings leave q/k in fp32 under autocast
        query, key, value = query.to(dt), key.to(dt), value.to(dt)
    if query.is_cuda and query.dtype in (torch.bfloat16, torch.float16) and not _FLASH_FAILED:
        if max_len is None:
            max_len = int((cu[1:] - cu[:-1]).max())
        try:
            out = _flash_call(query[0].transpose(0, 1), key[0].transpose(0, 1), value[0].transpose(0, 1), cu,
                              int(max_len), scaling, sliding_window)
        except (RuntimeError, TypeError, NotImplementedError) as e:  # a build or GPU this kernel does not support
            _FLASH_FAILED.append(f"{type(e).__name__}: {e}")
            print(f"warning: torch varlen flash attention failed ({_FLASH_FAILED[0].splitlines()[0][:200]}); "
                  "packed rows use per-example SDPA (exact, slower)", file=sys.stderr)
            out = None
        if out is not None:
            return out.unsqueeze(0), None
    return _per_example(query, key, value, [int(x) for x in cu.tolist()], scaling, sliding_window), None


def register() -> None:
    """Make `NAME` a transformers attention implementation (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(NAME, varlen_attention)


def supports(model: Any) -> bool:
    """Whether the model's attention can run packed through `NAME` (no logit softcapping, no dropout)."""
    cfg = getattr(model, "config", None)
    cfg = getattr(cfg, "text_config", None) or cfg
    return not getattr(cfg, "attn_logit_softcapping", None) and not getattr(cfg, "attention_dropout", 0.0)


def _set(model: Any, name: str) -> None:
    try:
        model.set_attn_implementation(name)
    except (AttributeError, ValueError):
        model.config._attn_implementation = name


def use_for_training(model: Any) -> str | None:
    """Switch a model to `NAME` for packed training; returns the implementation to restore (None: not switched)."""
    if not supports(model):
        return None
    register()
    before = getattr(model.config, "_attn_implementation", None) or "sdpa"
    _set(model, NAME)
    return before


def restore(model: Any, before: str | None) -> None:
    """Put back the implementation `use_for_training` replaced (so a saved or reused model generates as before)."""
    if before is not None:
        _set(model, before)
