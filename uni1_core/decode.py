"""The decode step at static shapes, for `torch.compile` (CUDA graphs on CUDA).

The model's own cached forward (`Uni1Model.forward`) cuts the keys at the longest row plus the
window and builds its mask for that length, so its shapes change every step and it reads the
cache lengths on the host once per call. That suits eager mode. A compiled step wants the
opposite: the same shapes every call and no host synchronisation, so that one CUDA graph can
replay the whole forward. `StaticForward` is that forward:

- keys: the whole cache (`max_len` slots), always; the mask hides the slots above each query;
- the cache's `max_len` is rounded up to a multiple of `CACHE_BUCKET`, so prompts of similar
  length share one compiled graph;
- positions, slots, mask and RoPE rows are computed on the device from `cache.lengths`;
- the window's width and tree are fixed per sampler call (the sampler keeps the full window
  to the end of the stream in this mode), so each (rows, width, tree, max_len) bucket compiles
  once: ar (width 1), sjd (its window), sjd_coupled (window plus branches).

The price of one shape: every step reads the keys and values of the whole cache (masked), where
the eager forward reads the filled part only; at the end of an image the two are the same.

It runs the model's own layers (`layer(x, rope, layer_cache)`), so the weights and the layer
code are the model's; only the cache plan differs. Where `torch.compile` fails (no compiler,
an unsupported model) the step falls back to the eager forward with one log line, never a crash.
"""
from __future__ import annotations

import logging
import weakref

import torch

from .model import tree_layout

log = logging.getLogger("uni1")

CACHE_BUCKET = 128          # cache slots are rounded up to a multiple of this (one graph per bucket)


def default_compile(device: torch.device) -> bool:
    """Compile by default where it pays: on CUDA (CUDA graphs remove the launch cost of every
    op). On CPU the compiled step was slower for the demo model (bench/README.md)."""
    return torch.device(device).type == "cuda"


def cache_len(needed: int) -> int:
    return -(-needed // CACHE_BUCKET) * CACHE_BUCKET


def window_layout(tree: list[int] | None, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth (width,) and ancestor-or-self matrix (width, width) of a window: a chain or a tree."""
    depth, sees = tree_layout(tree if tree is not None else [-1, *range(width - 1)], width)
    return depth.to(device), sees.to(device)


def static_window_forward(model, ids, cache, lengths, depth, sees, cos_table, sin_table):
    """(rows, W) window ids -> (rows, W, vocab) float32 logits, writing the window's keys and
    values at slots lengths[r] + t. Every shape depends only on (rows, W, max_len): no host sync."""
    rows, width = ids.shape
    max_len = cache.max_len
    device = ids.device
    x = model.model.embed_tokens(ids)
    slots = lengths[:, None] + torch.arange(width, device=device)[None, :]        # (rows, W) cache slots
    positions = lengths[:, None] + depth[None, :]                                 # RoPE positions
    # query t sees the cache below lengths[r] and the window slots of its ancestors
    rel = torch.arange(max_len, device=device)[None, :] - lengths[:, None]        # (rows, max_len)
    in_window = (rel >= 0) & (rel < width)
    visible = sees[:, rel.clamp(0, width - 1)].permute(1, 0, 2) & in_window[:, None, :]
    visible = (visible | (rel < 0)[:, None, :])[:, None]                          # (rows, 1, W, max_len)
    mask = torch.zeros(visible.shape, dtype=x.dtype, device=device).masked_fill(~visible, float("-inf"))
    rope = cos_table[positions][:, :, None], sin_table[positions][:, :, None]
    row_index = torch.arange(rows, device=device)[:, None]
    for i, layer in enumerate(model.model.layers):
        x = layer(x, rope, (cache, i, row_index, slots, max_len, mask, None))
    return model.lm_head(model.model.norm(x)).float()


class StaticForward:
    """Callable as the sampler calls a model: `forward(ids, cache=, n_valid=, tree=)`, for the
    decode windows of one model; `compiled` says whether torch.compile is in use."""

    def __init__(self, model, compile: bool = True):
        self._model = weakref.ref(model)     # kept per model (static_forward): never keep it alive
        self.device = model.device
        self.compiled = compile
        self._step = static_window_forward
        if compile:
            mode = "reduce-overhead" if self.device.type == "cuda" else None
            try:
                self._step = torch.compile(static_window_forward, mode=mode, dynamic=False)
            except Exception as exc:                 # e.g. a Python that torch.compile does not support
                self._fall_back(exc)
        self._rope = None
        self._kept_cache = None
        self._layouts = {}

    @property
    def model(self):
        return self._model()

    def _fall_back(self, exc: Exception) -> None:
        log.warning("uni1: torch.compile does not work here (%s: %s); the decode step runs uncompiled",
                    type(exc).__name__, str(exc).strip().splitlines()[0] if str(exc).strip() else "")
        self._step, self.compiled = static_window_forward, False

    def new_cache(self, rows: int, max_len: int):
        """A cache of `rows` rows and at least `max_len` slots, lengths 0. With CUDA graphs the last
        one is kept and reused: a graph writes into the cache in place, which it may only do at
        addresses that never change (a new cache per call would record the graphs again)."""
        shape_key = (rows, cache_len(max_len))
        if self._kept_cache is not None and self._kept_cache[0] == shape_key:
            cache = self._kept_cache[1]
            cache.reset()
            return cache
        cache = self.model.new_cache(*shape_key)
        if self.compiled and self.device.type == "cuda":
            self._kept_cache = None                          # free the previous one first
            for tensor in cache._tensors():                  # keys, values (and int8 scales)
                torch._dynamo.mark_static_address(tensor)
            self._kept_cache = (shape_key, cache)
        return cache

    def rope_tables(self, max_len: int, dtype: torch.dtype):
        if self._rope is None or self._rope[0].shape[0] < max_len or self._rope[0].dtype != dtype:
            cos, sin = self.model.rope_for(torch.arange(max_len, device=self.device)[None], max_len, dtype)
            self._rope = cos[0, :, 0], sin[0, :, 0]                       # (max_len, head_dim)
        return self._rope

    def layout(self, tree, width: int):
        """window_layout on the device, copied there once per tree (a copy per step would wait)."""
        key = (tuple(tree) if tree is not None else None, width)
        if key not in self._layouts:
            self._layouts[key] = window_layout(tree, width, self.device)
        return self._layouts[key]

    def __call__(self, ids, cache, n_valid, tree=None):
        depth, sees = self.layout(tree, ids.shape[1])
        cos, sin = self.rope_tables(cache.max_len, self.model.dtype)
        args = (self.model, ids, cache, cache.lengths, depth, sees, cos, sin)
        if self.compiled and self.device.type == "cuda":
            torch.compiler.cudagraph_mark_step_begin()     # the previous step's logits are dead
        try:
            logits = self._step(*args)
        except Exception as exc:
            if not self.compiled:
                raise
            # Compilation happens at the first call of each shape, before anything is written;
            # a failed run wrote at most the same keys and values that the rerun writes again.
            self._fall_back(exc)
            logits = self._step(*args)
        masked = getattr(self.model, "_masked_ids", None)    # the release's masked logits, as forward does
        if masked is not None:
            logits = logits.index_fill(-1, masked.to(logits.device), torch.finfo(logits.dtype).min)
        cache.lengths.add_(n_valid)
        return logits


_FORWARDS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def static_forward(model, compile: bool = True) -> StaticForward | None:
    """The model's StaticForward (made once per model and reused, so each shape compiles once
    per process), or None where a static step cannot serve the model; then the caller uses the
    eager forward."""
    cfg = getattr(model, "config", None)
    if cfg is None or not hasattr(model, "model") or not hasattr(model, "rope_for"):
        log.warning("uni1: compile is on, but %s is not a Uni1Model; using the eager forward",
                    type(model).__name__)
        return None
    if cfg.rope_scaling == "dynamic":
        log.warning("uni1: compile is on, but dynamic RoPE scaling changes with the length; using the eager forward")
        return None
    per_model = _FORWARDS.setdefault(model, {})
    if compile not in per_model:
        per_model[compile] = StaticForward(model, compile)
    return per_model[compile]
