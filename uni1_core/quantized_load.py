"""Pre-quantised folders (writing them, the `quantize` command) and the KV-cache choice.

    model = load_quantized("Alpha-VLLM/Lumina-mGPT-2.0", quantize="int4", device="cuda")
    quantize_folder("bf16_folder", "int8_folder", "int8")      # python -m uni1_core quantize
    model = Uni1Model.from_pretrained("int8_folder")           # its config.json says how

Loading itself is `Uni1Model.from_pretrained(..., quantize=...)` (streamed from bf16, or a
pre-quantised folder as it is; quantized_fill.py fills the network); load_quantized is the same
call with the defaults of a quantised load spelled out. See quantize.py for the formats and
docs/quantization.md for the choices.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from .checkpoint import INDEX_FILE, SINGLE_FILE, resolve_model_dir
from .model import Uni1Model
from .quantize import DEFAULT_GROUP_SIZE, QuantizationError


def load_quantized(path_or_repo_id, quantize: str | None = None, group_size: int = DEFAULT_GROUP_SIZE, *,
                   dtype="auto", device="cpu", lm_head: str = "image", embedding: str = "host",
                   keep_ids=None, cache_dir=None) -> Uni1Model:
    """A Uni1Model with int8/int4 decoder layers, from a bf16 checkpoint (streamed) or a
    pre-quantised folder. quantize=None on a plain folder: the ordinary float model. The same as
    Uni1Model.from_pretrained with dtype "auto" (the checkpoint's) by default."""
    return Uni1Model.from_pretrained(path_or_repo_id, dtype=dtype, device=device, cache_dir=cache_dir,
                                     quantize=quantize, group_size=group_size, lm_head=lm_head,
                                     embedding=embedding, keep_ids=keep_ids)


# ---------------------------------------------------------------------------------------------
# Writing

def save_quantized(model: Uni1Model, folder, source_folder=None, max_shard_bytes: int = 1 << 30) -> Path:
    """config.json with the "quantization" entry, and the state dict in shards of at most
    max_shard_bytes (each shard is serialised from memory, so small shards keep the copy small).
    Other files of source_folder (tokenizer, MoVQ weights, ...) are copied alongside."""
    from safetensors.torch import save_file

    spec = getattr(model, "quantization", None)
    if spec is None:
        raise QuantizationError("save_quantized needs a quantised model (quantize_model_ or load_quantized).")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if source_folder is not None:
        _copy_side_files(Path(source_folder), folder)
    config = model.config.to_dict()
    config.pop("dtype", None)
    config["torch_dtype"] = str(model.dtype).removeprefix("torch.")
    config["quantization"] = spec.to_dict()
    (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
    state = model.state_dict()
    if model.config.tie_word_embeddings and "lm_head.weight" in state:
        state.pop("lm_head.weight")
    shards, current, size = [], {}, 0
    for key, t in state.items():
        nbytes = t.numel() * t.element_size()
        if current and size + nbytes > max_shard_bytes:
            shards.append(current)
            current, size = {}, 0
        current[key], size = t, size + nbytes
    shards.append(current)
    weight_map = {}
    for i, shard in enumerate(shards):
        name = SINGLE_FILE if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file({k: v.detach().cpu().contiguous() for k, v in shard.items()}, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
    if len(shards) > 1:
        total = sum(t.numel() * t.element_size() for t in state.values())
        (folder / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                    indent=2))
    return folder


def _copy_side_files(src: Path, dst: Path) -> None:
    weights = {SINGLE_FILE, INDEX_FILE}
    if (src / INDEX_FILE).is_file():
        weights |= set(json.loads((src / INDEX_FILE).read_text())["weight_map"].values())
    for path in src.iterdir():
        if path.is_file() and path.name not in weights and path.name != "config.json":
            shutil.copy2(path, dst / path.name)


def quantize_folder(src, dst, mode: str, group_size: int = DEFAULT_GROUP_SIZE, lm_head: str = "image",
                    max_shard_bytes: int = 1 << 30, cache_dir=None) -> Path:
    """A bf16 checkpoint -> a pre-quantised folder (streamed: the quantised model + one layer in memory)."""
    folder = resolve_model_dir(src, cache_dir=cache_dir)
    if Path(dst).resolve() == folder.resolve():
        raise QuantizationError(f"the output folder {dst} is the input folder. Fix: write to a new folder.")
    model = load_quantized(folder, mode, group_size, dtype="bfloat16", lm_head=lm_head, embedding="host")
    return save_quantized(model, dst, source_folder=folder, max_shard_bytes=max_shard_bytes)


# ---------------------------------------------------------------------------------------------
# Command line: python -m uni1_core quantize IN OUT --bits 8|4

def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="write a pre-quantised copy of a checkpoint (int8 or int4 weights)")
    p.add_argument("src", help="bf16 checkpoint folder, Hugging Face repo id, or 'demo'")
    p.add_argument("dst", help="output folder (created)")
    p.add_argument("--bits", type=int, choices=(8, 4), required=True)
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, help="int4 group (32, 64, 128, 256)")
    p.add_argument("--lm-head", choices=("image", "full"), default="image",
                   help="image: keep only the image rows the sampler reads (default); full: every row")


def run(args) -> int:
    out = quantize_folder(args.src, args.dst, "int8" if args.bits == 8 else "int4", args.group_size, args.lm_head)
    size = sum(p.stat().st_size for p in out.glob("model*.safetensors"))
    print(f"wrote {out} ({size / 1e9:.2f} GB of weights)" if size >= 1e8 else f"wrote {out} ({size / 1e6:.1f} MB of weights)")
    return 0


KV_CACHE_CHOICES = ("auto", "bf16", "int8")


def model_has_int8_cache(model: Uni1Model) -> bool:
    """Whether this Uni1Model makes int8 caches (new_cache(..., dtype="int8"))."""
    try:
        return model.new_cache(1, 1, dtype="int8", device="meta").k.dtype == torch.int8
    except (ValueError, TypeError):
        return False


def resolve_kv_cache(model: Uni1Model, kv_cache: str = "auto") -> str:
    """Choose the KV cache the model's callers get from model.new_cache(rows, max_len): "auto" is
    int8 for quantised weights (where the model can make one), else the model dtype ("bf16")."""
    if kv_cache not in KV_CACHE_CHOICES:
        raise QuantizationError(f"kv_cache={kv_cache!r}: choose one of {KV_CACHE_CHOICES}.")
    quantised = getattr(model, "quantization", None) is not None
    want = "int8" if kv_cache == "int8" or (kv_cache == "auto" and quantised) else "bf16"
    if want == "int8" and not model_has_int8_cache(model):
        if kv_cache == "int8":
            raise QuantizationError("this Uni1Model cannot make an int8 KV cache. Fix: use kv_cache='bf16'.")
        want = "bf16"
    if want == "int8":
        # The sampler asks new_cache(rows, max_len) without a dtype: make int8 this model's default.
        make = type(model).new_cache.__get__(model)
        model.new_cache = lambda batch_size, max_len, dtype=None, device=None: make(
            batch_size, max_len, dtype if dtype is not None else "int8", device)
    return want
