"""The sampler's memory pre-flight: fail at once, naming the setting that fits, instead of
running out of memory minutes into a generation."""
from __future__ import annotations

import torch

from . import runtime


def check_memory(model_handle, width: int, height: int, batch: int, use_cfg: bool, window: int, branches: int):
    """Ask ComfyUI to free what it can for this generation, bring the model to the device, then
    compare the estimate (KV cache + activations) with the free memory. Returns the pipeline.

    Outside ComfyUI (no memory manager) only the model is loaded."""
    from ..uni1_core import memory

    pipe = model_handle.pipe
    mm = runtime.mm
    if mm is None or not hasattr(mm, "get_free_memory"):
        return model_handle.ready()
    spec = getattr(pipe.model, "quantization", None)
    quantize = spec.mode if spec is not None else "none"
    kv_cache = getattr(pipe, "kv_cache", "bf16")
    dtype = str(pipe.model.dtype).removeprefix("torch.")
    kw = dict(group_size=getattr(spec, "group_size", 128), dtype=dtype, window=window, branches=branches)
    est = memory.estimate(pipe.model.config, width, height, quantize, kv_cache, batch, use_cfg, **kw)
    device = runtime.torch_device()
    if hasattr(mm, "free_memory"):
        mm.free_memory(est.peak_bytes, device)           # unloads other models as needed
    pipe = model_handle.ready()
    free = int(mm.get_free_memory(device))
    needed = est.kv_cache_bytes + est.activations_bytes
    if needed > free:
        # the weights are already on the device: as a budget, they count on the free side
        message = memory.fit_message(pipe.model.config, width, height, quantize, kv_cache, batch, use_cfg,
                                     free + est.weights_bytes, **kw)
        raise torch.cuda.OutOfMemoryError(f"Uni1 sampler: {message or 'not enough free memory'}") \
            if device.type == "cuda" else MemoryError(f"Uni1 sampler: {message or 'not enough free memory'}")
    return pipe
