"""Uni1 Model Loader and Uni1 VQ Loader."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from . import paths, runtime
from .handles import CATEGORY, UNI1_MODEL, UNI1_VQ, ModelHandle, VQHandle

log = logging.getLogger("uni1")


def _progress_tqdm():
    """A tqdm class for huggingface_hub that also drives the node's ComfyUI progress bar (the
    files fetched so far), so a first-use download is visible in the UI, not only the console."""
    from huggingface_hub.utils import tqdm as hub_tqdm

    class NodeProgressTqdm(hub_tqdm):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.node_progress = runtime.Progress(int(self.total or 0))

        def update(self, n=1):
            out = super().update(n)
            self.node_progress.on_progress(int(self.n), int(self.total or self.n))
            return out

    return NodeProgressTqdm


def _download(repo_id: str):
    """Fetch a Hugging Face repo into models/uni1/<owner>/<name>; later runs find the folder
    locally (it is then listed under the same name) and never touch the network.

    A workflow is shared data, so the repo it names is untrusted: its config.json comes first
    and a model of another type is refused before anything else is fetched; then only the
    tokenizer files and the safetensors weights the index names (see download_model)."""
    from ..uni1_core.checkpoint import DownloadError, download_model
    from ..uni1_core.model import ModelConfig
    target = paths.download_dir(repo_id)
    log.info("uni1: downloading %s into %s (once; later runs are offline)", repo_id, target)
    try:
        return download_model(repo_id, local_dir=target, tqdm_class=_progress_tqdm(),
                              check_config=ModelConfig.from_file)
    except DownloadError as exc:
        if runtime.is_interrupt(exc.__cause__):   # Cancel pressed during the download
            raise exc.__cause__ from None
        raise RuntimeError(
            f"could not download {repo_id} from Hugging Face ({exc.__cause__}). Download it yourself into "
            f"{target} (for example `huggingface-cli download {repo_id} --local-dir {target}`) "
            f"and pick it from the list.") from exc


def resolve_model_source(name: str) -> str:
    """A loader choice -> what uni1_core's from_pretrained takes ('demo' or a local folder)."""
    if name == paths.DEMO:
        return paths.DEMO
    local = paths.resolve_local(name)
    if local is not None:
        return str(local)
    if paths.is_repo_id(name):
        return str(_download(name))
    raise paths.ModelPathError(paths.validate_choice(name))


class Uni1ModelLoader:
    DESCRIPTION = ("Loads a Uni1 autoregressive image model (the embedded CPU demo model, Lumina-mGPT 2.0, "
                   "or its Omni variant) from ComfyUI/models/uni1/, downloading a Hugging Face repo there "
                   "on first use. The weights are managed by ComfyUI: they move to the GPU when a sampler "
                   "runs and are released by 'Unload models'.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_MODEL,)
    RETURN_NAMES = ("model",)
    OUTPUT_TOOLTIPS = ("The loaded model (transformer + text tokenizer); connect it to a VQ Loader and a sampler.",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model_name": (paths.list_models(), {
                "default": paths.DEMO,
                "tooltip": "'demo' is the tiny model shipped with the pack (runs on a CPU in seconds). Other "
                           "entries are folders in ComfyUI/models/uni1/ (with config.json) or Hugging Face repo "
                           "ids, downloaded into that folder on first use (Lumina-mGPT 2.0: 7B parameters, about 15 GB)."}),
            "dtype": (list(runtime.DTYPES), {
                "default": "auto",
                "tooltip": "Weight precision. auto: float32 on a CPU, bfloat16 on GPUs that support it, else "
                           "float16. bfloat16 halves memory: Lumina-mGPT 2.0 holds about 15 GB of weights in bf16, plus its KV cache while sampling."}),
        }, "optional": {
            "quantize": (["none", "int8", "int4"], {"default": "none", "tooltip": _memory_tooltip("quantize")}),
            "kv_cache": (["auto", "bf16", "int8"], {"default": "auto", "tooltip": _memory_tooltip("kv_cache")}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, model_name):
        # Taking model_name here replaces ComfyUI's "value not in list" check with ours, which
        # explains unsafe names and accepts repo ids typed into an API workflow.
        return paths.validate_choice(model_name, "model")

    def load(self, model_name, dtype, quantize="none", kv_cache="auto"):
        from ..uni1_core.pipeline import Uni1Pipeline
        source = resolve_model_source(model_name)
        torch_dtype = runtime.pick_dtype(dtype, runtime.torch_device())
        # Load where ComfyUI parks weights; Managed.load() moves them to the GPU when needed.
        pipe = Uni1Pipeline.from_pretrained(source, dtype=torch_dtype, device=runtime.offload_device(),
                                            quantize=None if quantize == "none" else quantize, kv_cache=kv_cache)
        pipe.model.eval()
        return (ModelHandle(pipe, runtime.Managed.wrap(pipe.model), model_name),)


class Uni1VQLoader:
    DESCRIPTION = ("Loads the MoVQGAN image tokenizer that turns image tokens into pixels (and images into "
                   "tokens for the Omni model). 'from model folder' uses the one that belongs to the model "
                   "(the demo ships its own; Lumina-mGPT 2.0 uses ai-forever/MoVQGAN, about 1 GB).")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_VQ,)
    RETURN_NAMES = ("vq",)
    OUTPUT_TOOLTIPS = ("The MoVQGAN tokenizer; connect it to VQ Decode / VQ Encode (and optionally the sampler "
                       "for live previews).",)
    FUNCTION = "load"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": (UNI1_MODEL, {"tooltip": "The model whose image codes this tokenizer must match."}),
            "vq_name": (paths.list_vqs(), {
                "default": paths.VQ_FROM_MODEL,
                "tooltip": "'from model folder': the MoVQ weights inside the model folder, else "
                           "ai-forever/MoVQGAN. Or a *movq*.safetensors file in ComfyUI/models/uni1/, or a "
                           "Hugging Face repo id."}),
        }}

    @classmethod
    def VALIDATE_INPUTS(cls, vq_name):
        return paths.validate_choice(vq_name, "VQ model")

    def load(self, model, vq_name):
        from ..uni1_core.movq import default_source
        pipe = model.pipe
        if vq_name == paths.VQ_FROM_MODEL:
            source = default_source(pipe.model_dir)
        else:
            local = paths.resolve_local(vq_name)
            if local is None and not paths.is_repo_id(vq_name):
                raise paths.ModelPathError(paths.validate_choice(vq_name, "VQ model"))
            source = str(local) if local is not None else vq_name
        # A repo's file is kept under models/uni1 (not the user's HF cache), when ComfyUI is here.
        cache_dir = None if Path(source).exists() else _repo_cache_dir(source)
        movq = pipe.load_movq(source, dtype=torch.float32, device=runtime.offload_device(), cache_dir=cache_dir)
        movq.eval()
        return (VQHandle(movq, runtime.Managed.wrap(movq), vq_name),)


def _memory_tooltip(widget: str) -> str:
    """The widget's tooltip with the memory of each choice for Lumina-mGPT 2.0 at 768x768 with CFG."""
    from ..uni1_core.memory import widget_tooltip
    return widget_tooltip(widget)


def _repo_cache_dir(repo_id: str):
    try:
        return str(paths.download_dir(repo_id))
    except paths.ModelPathError:
        return None
