"""Training kernels patched into a student: logits and loss only at response positions, chunked.

`ResponseOnlyHead` makes the vocabulary projection run only on the hidden states that predict a
response token; `chunked_linear_cross_entropy` scores them a chunk of rows at a time with their
gradients computed in the forward (no [tokens, vocabulary] tensor); a tied input embedding's lookup
adds its gradient rows in place into the head's (`_tied_lookup_function`). Used by train.py.
"""

from __future__ import annotations

import functools
from typing import Any

from cotdistill.errors import CotdistillError


class ResponseOnlyHead:
    """Make the vocabulary projection run only on the hidden states that predict a response token.

    A forward pre-hook on the output layer keeps the [N, H] rows selected by `mask` (set just
    before each forward) in `hidden` and hands the layer an empty input, so the model's own
    forward (incl. DDP wrappers) runs unchanged but produces no logits; `response_loss` then
    projects and scores those rows in chunks (`chunked_linear_cross_entropy`). With `fused=False`
    (FSDP, or an output layer that is not a plain Linear) the layer gets the [N, H] rows instead
    and the model returns [N, V] logits.
    """

    def __init__(self, model: Any, fused: bool = True, kernel: str = "chunked"):
        import torch

        self.kernel = kernel  # "chunked" or "liger": which fused loss scores the gathered rows
        self.mask = None
        self.hidden = None
        self.head = model.get_output_embeddings()
        if self.head is None:
            raise CotdistillError(f"student {type(model).__name__} has no output embedding layer")
        config = getattr(model.config, "text_config", model.config)
        self.softcap = getattr(config, "final_logit_softcapping", None)
        self.fused = fused and type(self.head) is torch.nn.Linear
        self._handle = self.head.register_forward_pre_hook(self._gather)
        self.sink: list | None = None  # per loss call: the head's weight gradient, handed to the tied lookup
        # A tied input embedding's lookup adds its gradient rows into the head's (see _tied_lookup_function).
        emb = model.get_input_embeddings()
        scale = _tied_lookup_scale(emb, self.head) if self.fused else False
        self._emb = None if scale is False else emb
        if self._emb is not None:
            emb.forward = functools.partial(_tied_lookup, emb, scale, self)

    def _gather(self, module: Any, args: tuple) -> tuple | None:
        if self.mask is None:
            return None
        rows = args[0][self.mask]
        if not self.fused:
            return (rows,) + tuple(args[1:])
        self.hidden = rows
        return (rows[:0],) + tuple(args[1:])

    def remove(self) -> None:
        self._handle.remove()
        if self._emb is not None:
            del self._emb.forward


def _tied_lookup_scale(emb: Any, head: Any) -> Any:
    """The factor a tied input embedding multiplies its lookup by (None: 1), or False if it can't be replaced.

    Replaceable: a plain `nn.Embedding`, or a subclass that scales the lookup by its `embed_scale`
    (Gemma), checked on a few rows; weight shared with the head and trained; no max_norm/freq scaling.
    """
    import torch
    import torch.nn.functional as F

    if (not isinstance(emb, torch.nn.Embedding) or emb.weight is not head.weight or not emb.weight.requires_grad
            or emb.sparse or emb.max_norm is not None or emb.scale_grad_by_freq or "forward" in vars(emb)):
        return False
    if type(emb) is torch.nn.Embedding:
        return None
    scale = getattr(emb, "embed_scale", None)
    if not isinstance(scale, torch.Tensor) or scale.numel() != 1:
        return False
    with torch.no_grad():
        ids = torch.arange(min(8, emb.num_embeddings), device=emb.weight.device)
        same = torch.equal(emb(ids), F.embedding(ids, emb.weight, emb.padding_idx) * scale.to(emb.weight.dtype))
    return scale if same else False


def _tied_lookup(emb: Any, scale: Any, head: ResponseOnlyHead, ids: Any) -> Any:
    return _tied_lookup_function().apply(ids, emb.weight, scale, emb.padding_idx, head.sink)


@functools.cache
def _tied_lookup_function():
    """Autograd Function for a tied embedding's lookup that adds its weight gradient into the head's.

    The head's dense [V, H] weight gradient (from `LinearCE`) reaches autograd first; a dense or
    sparse lookup gradient arriving second makes autograd add the two out of place: a fresh [V, H]
    tensor per backward (0.85 s of a 17 s step for Gemma's 262k x 640 matrix). Here the lookup adds
    its few hundred rows in place into the head's gradient, which `LinearCE`'s backward (always
    earlier: the head comes last) leaves in `sink`, and hands autograd nothing of its own.
    """
    import torch
    import torch.nn.functional as F

    class TiedLookup(torch.autograd.Function):
        @staticmethod
        def forward(ctx, ids, weight, scale, padding_idx, sink):
            ctx.save_for_backward(ids)
            ctx.scale, ctx.padding_idx, ctx.sink, ctx.like = scale, padding_idx, sink, weight
            out = F.embedding(ids, weight, padding_idx)
            return out if scale is None else out * scale.to(weight.dtype)  # as the module computes it

        @staticmethod
        def backward(ctx, grad_out):
            (ids,) = ctx.saved_tensors
            idx, rows = ids.reshape(-1), grad_out.reshape(-1, grad_out.shape[-1])
            if ctx.padding_idx is not None:  # the padding row gets no gradient, as in nn.Embedding
                keep = idx != ctx.padding_idx
                idx, rows = idx[keep], rows[keep]
            if ctx.scale is not None:
                rows = rows * ctx.scale.to(rows.dtype)
            if ctx.sink:
                ctx.sink.pop().index_add_(0, idx, rows.to(ctx.like.dtype))  # no reference kept: autograd adopts it
                return None, None, None, None, None
            grad = torch.zeros_like(ctx.like)  # no head gradient this time (not fused): a dense one of its own
            return None, grad.index_add_(0, idx, rows.to(grad.dtype)), None, None, None

    return TiedLookup


def _column_max(z: Any) -> Any:
    """Max over dim 0 of [V, rows] logits, in two stages when V allows: one pass along the long
    dimension is slow on a CPU for row counts that are not a multiple of 16 (102 vs 20 ms at 62 rows)."""
    v, rows = z.shape
    if v % 64:
        return z.amax(dim=0, keepdim=True)
    return z.view(v // 64, 64, rows).amax(dim=1).amax(dim=0, keepdim=True)


@functools.cache
def _linear_ce_function():
    """The autograd Function behind `chunked_linear_cross_entropy` (built once; torch loads lazily).

    Its forward walks `chunk` rows at a time and computes the loss *and* its gradients for the
    hidden states and the weight right away (softmax minus one-hot), so only one chunk of logits
    ever exists and nothing is recomputed; its backward just scales the stored gradients.
    """
    import torch

    class LinearCE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, hidden, weight, bias, target, softcap, chunk, sink):
            need_h, need_w, need_b = ctx.needs_input_grad[:3]
            # no zero-fill pass over [V, H]: the first chunk writes, later ones add (zeros only without rows)
            alloc = torch.empty_like if hidden.shape[0] else torch.zeros_like
            grad_h = alloc(hidden) if need_h else None
            grad_w = alloc(weight) if need_w else None
            grad_b = torch.zeros_like(bias) if need_b else None
            total = torch.zeros((), dtype=torch.float32, device=hidden.device)
            dev = hidden.device.type
            mm_dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else weight.dtype
            w = weight.to(mm_dtype)
            # Vocabulary-major logits [V, rows] = W @ h^T: for a few hundred rows against a [V, H] weight,
            # this CPU runs W @ h^T and the weight gradient g @ h 1.2-1.5x faster than h @ W^T and g^T @ h.
            for s in range(0, hidden.shape[0], chunk):
                h, t = hidden[s : s + chunk].to(mm_dtype), target[s : s + chunk]
                z = torch.mm(w, h.t()).float()
                if bias is not None:
                    z += bias.to(z.dtype)[:, None]
                if softcap:
                    tanh = torch.tanh(z / softcap)
                    z = tanh * softcap
                z_t = z.gather(0, t[None, :])
                top = _column_max(z)
                g = z.sub_(top).exp_()  # in place of the logits: one exp pass, no [V, rows] temporary
                norm = g.sum(dim=0, keepdim=True)
                total += (norm.log() + top - z_t).sum()  # log-sum-exp minus the target's logit
                g.div_(norm)  # softmax
                g[t, torch.arange(len(t), device=g.device)] -= 1
                if softcap:
                    g.mul_(1 - tanh * tanh)
                    del tanh
                if grad_b is not None:
                    grad_b += g.sum(1)
                g = g.to(mm_dtype)
                if grad_h is not None:
                    grad_h[s : s + chunk] = g.t() @ w
                if grad_w is not None and grad_w.dtype == mm_dtype:
                    if s == 0:
                        torch.mm(g, h, out=grad_w)
                    else:
                        grad_w.addmm_(g, h)  # in place: no [V, H] temporary per chunk
                elif grad_w is not None:
                    if s == 0:
                        grad_w.copy_(g @ h)
                    else:
                        grad_w += g @ h
            ctx.grads, ctx.sink = [grad_h, grad_w, grad_b], sink
            return total

        @staticmethod
        def backward(ctx, grad_out):
            grads, ctx.grads = ctx.grads, None
            grads = [None if g is None else g.mul_(grad_out) for g in grads]
            if ctx.sink is not None and grads[1] is not None:
                ctx.sink.append(grads[1])  # a tied embedding's lookup adds its rows here, later in this backward
            return grads[0], grads[1], grads[2], None, None, None, None

    return LinearCE


def chunked_linear_cross_entropy(hidden: Any, head: Any, target: Any, softcap: float | None = None,
                                 chunk: int | None = None, sink: list | None = None) -> Any:
    """Summed next-token cross-entropy of `head(hidden)` against `target`, chunked over rows.

    Default chunk: 128 MiB of fp32 logits (128 rows for a 262k vocabulary). `sink`: a list the
    backward appends the weight's gradient to (see `_tied_lookup_function`).
    """
    chunk = chunk or max(16, (1 << 25) // head.weight.shape[0])
    return _linear_ce_function().apply(hidden, head.weight, head.bias, target, softcap, chunk, sink)


@functools.cache
def liger_available() -> bool:
    """Whether Liger's fused linear cross-entropy (Triton, CUDA only; extra [gpu]) can be imported."""
    try:
        from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy  # noqa: F401
    except Exception:  # ImportError, or Triton failing to initialise without a GPU
        return False
    return True


def liger_linear_cross_entropy(hidden: Any, head: Any, target: Any, softcap: float | None = None) -> Any:
    """Summed cross-entropy of `head(hidden)` against `target` through Liger's fused Triton kernel (CUDA).

    Same contract as `chunked_linear_cross_entropy`; the matmuls run in the autocast dtype (bf16), as
    ours do. A tied input embedding then gets its own dense gradient (no `sink`), which autograd adds.
    """
    import torch
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy

    dev = hidden.device.type
    dtype = torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else head.weight.dtype
    bias = None if head.bias is None else head.bias.to(dtype)
    with torch.autocast(dev, enabled=False):
        out = liger_fused_linear_cross_entropy(input=hidden.to(dtype), weight=head.weight.to(dtype), target=target,
                                               bias=bias, reduction="sum", softcap=softcap)
    loss = out[0] if isinstance(out, tuple) else out
    return loss.float()
