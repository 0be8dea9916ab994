"""A KV cache layer for generation that writes into one preallocated buffer (used by engines/hf.py)."""

from __future__ import annotations

import functools
from typing import Any


@functools.cache
def buffered_layer_class() -> type:
    from transformers.cache_utils import DynamicLayer

    class BufferedLayer(DynamicLayer):
        """A full-attention KV cache layer whose keys/values live in a buffer sized for the whole generation.

        `DynamicLayer` concatenates (copies) the whole cache at every step: a quarter of a 64-row decode
        step on a CPU. Here a step writes one column and hands attention a view of the filled part.
        """

        def __init__(self, keys: Any, values: Any, capacity: int):
            super().__init__()
            self.lazy_initialization(keys, values)
            self._rows, self._n = keys.shape[0], keys.shape[-2]
            # uninitialised: only the filled part [:, :, :_n] is ever read
            self._k = keys.new_empty(*keys.shape[:2], capacity, keys.shape[-1])
            self._v = values.new_empty(*values.shape[:2], capacity, values.shape[-1])
            self._k[:, :, : self._n], self._v[:, :, : self._n] = keys, values
            self._views()

        def _views(self) -> None:
            self.keys = self._k[: self._rows, :, : self._n]
            self.values = self._v[: self._rows, :, : self._n]

        def update(self, key_states: Any, value_states: Any, *args: Any, **kwargs: Any) -> tuple[Any, Any]:
            n = self._n + key_states.shape[-2]
            if n > self._k.shape[-2]:
                raise RuntimeError(f"KV buffer of {self._k.shape[-2]} positions overflowed")
            self._k[: self._rows, :, self._n : n] = key_states
            self._v[: self._rows, :, self._n : n] = value_states
            self._n = n
            self._views()
            return self.keys, self.values

        def batch_select_indices(self, indices: Any) -> None:
            # Row i becomes row indices[i]; only rows that move are copied (the engine's row pruning moves few).
            import torch

            moved = (indices != torch.arange(len(indices), device=indices.device)).nonzero().squeeze(1)
            if len(moved):
                src = indices[moved]
                self._k[moved, :, : self._n] = self._k[src, :, : self._n]
                self._v[moved, :, : self._n] = self._v[src, :, : self._n]
            self._rows = len(indices)
            self._views()

        def crop(self, tokens_to_remove: int) -> None:
            raise NotImplementedError("BufferedLayer does not crop")

    return BufferedLayer
