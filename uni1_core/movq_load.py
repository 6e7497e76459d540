"""Reading MoVQGAN weights safely: where the file is, how it is read, which keys belong to the
model, and what shape they describe.

A `.ckpt` is a pickle; it is only ever read with `torch.load(weights_only=True)`, PyTorch's
restricted unpickler that builds tensors and plain containers and refuses anything that would
import or call code. A file it refuses is reported, never retried unrestricted.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from .checkpoint import CheckpointError, download_file

DEFAULT_REPO = "ai-forever/MoVQGAN"
DEFAULT_FILENAME = "movqgan_270M.ckpt"

# Keys of the model, by prefix; `quantize.embedding.weight` is the whole quantiser.
MODEL_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.weight")
# Training-only state that release checkpoints may carry next to the model (the reference loads
# with strict=False): the perceptual/GAN loss with its discriminator, and EMA copies.
TRAINING_ONLY_PREFIXES = ("loss.", "discriminator.", "ema_", "model_ema.")

# safetensors metadata entry holding the MoVQConfig as JSON (written by save_pretrained and
# convert): it carries what shapes cannot tell, such as the norm group count of a small model.
CONFIG_METADATA_KEY = "movq_config"

# Folder contents we look for, in order of preference.
FOLDER_CANDIDATES = ("movq.safetensors", "movqgan_270M.safetensors", "movqgan_270M.ckpt", "movq.ckpt")


class MoVQLoadError(CheckpointError):
    """A MoVQ checkpoint could not be found, read, or matched to the network."""


# ----------------------------------------------------------------------------- finding the file


def resolve_movq_file(
    path_or_repo_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None, filename: str | None = None
) -> Path:
    """A file, a folder holding one checkpoint, or a Hugging Face repo id -> a local file path."""
    p = Path(path_or_repo_id).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        return find_in_folder(p, filename)
    text = str(path_or_repo_id)
    if os.path.isabs(text) or text.startswith(".") or text.count("/") != 1:
        raise MoVQLoadError(
            f"MoVQ weights: {text!r} is neither an existing file or folder nor a Hugging Face repo id "
            f"like {DEFAULT_REPO!r}"
        )
    return download_file(text, filename or DEFAULT_FILENAME, cache_dir=cache_dir)


def find_in_folder(folder: Path, filename: str | None) -> Path:
    if filename is not None:
        if not (folder / filename).is_file():
            raise MoVQLoadError(f"MoVQ weights: {folder / filename} does not exist")
        return folder / filename
    for name in FOLDER_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.ckpt"))
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(x.name for x in folder.iterdir())) or "nothing"
    raise MoVQLoadError(
        f"MoVQ weights: the folder {folder} holds {listing}; expected one of {', '.join(FOLDER_CANDIDATES)} "
        f"(or a single *.safetensors / *.ckpt file)"
    )


# ----------------------------------------------------------------------------- reading it


def read_pickle_restricted(path: Path) -> object:
    """torch.load with the restricted unpickler; memory-mapped when the file format allows it."""
    try:
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as e:
            if "mmap can only be used" not in str(e):
                raise
            return torch.load(path, map_location="cpu", weights_only=True)  # legacy (pre-zip) format
    except Exception as e:
        if type(e).__name__ != "UnpicklingError":  # (the pickle module stays out of run-time code)
            raise MoVQLoadError(f"MoVQ weights: could not read {path}: truncated or not a PyTorch checkpoint ({e})") from e
        if "Weights only load failed" not in str(e):
            raise MoVQLoadError(f"MoVQ weights: {path} is corrupt or truncated ({e}); download it again") from e
        reason = next(
            (line.strip() for line in str(e).splitlines() if re.search(r"unsupported|GLOBAL|not allowed", line, re.I)),
            str(e).strip().splitlines()[-1],
        )
        raise MoVQLoadError(
            f"Refusing to load {path}: its pickle asks to import or call code, not just to build tensors "
            f"({reason}). Loading it would run that code, so it is not loaded. If you trust where the file "
            f"came from, convert it once in a throwaway environment to safetensors, e.g.\n"
            f"  python -c \"import torch; from safetensors.torch import save_file; "
            f"sd = torch.load('{path}', map_location='cpu', weights_only=False); sd = sd.get('state_dict', sd); "
            f"save_file({{k: v.contiguous() for k, v in sd.items() if isinstance(v, torch.Tensor)}}, 'movq.safetensors')\"\n"
            f"and load movq.safetensors instead."
        ) from e


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as e:  # SafetensorError is not importable by a stable name across versions
        raise MoVQLoadError(f"MoVQ weights: could not read {path}: truncated or not a safetensors file ({e})") from e


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's tensors from a .safetensors or .ckpt file, training-only keys dropped.
    Accepts a plain state dict or a Lightning checkpoint ({"state_dict": ...})."""
    path = Path(path)
    if path.suffix == ".safetensors":
        raw = read_safetensors(path)
    else:
        raw = read_pickle_restricted(path)
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
        if not isinstance(raw, dict):
            raise MoVQLoadError(f"MoVQ weights: {path} holds a {type(raw).__name__}, not a state dict")
    sd, unknown = {}, []
    for key, value in raw.items():
        if key.startswith(MODEL_PREFIXES):
            if not isinstance(value, torch.Tensor):
                raise MoVQLoadError(f"MoVQ weights: {path}: {key} is a {type(value).__name__}, not a tensor")
            sd[key] = value
        elif not key.startswith(TRAINING_ONLY_PREFIXES):
            unknown.append(key)
    if unknown:
        raise MoVQLoadError(
            f"MoVQ weights: {path} has keys that belong neither to MoVQGAN nor to its known training-only state "
            f"({', '.join(p + '*' for p in TRAINING_ONLY_PREFIXES)}): {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}. Is this a MoVQGAN checkpoint?"
        )
    if not sd:
        raise MoVQLoadError(f"MoVQ weights: {path} contains no MoVQGAN keys (encoder.*, decoder.*, quantize.*)")
    return sd


# ----------------------------------------------------------------------------- what shape it is


def indices(sd: dict, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys `prefix{i}.`"""
    found = {int(m.group(1)) for k in sd if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def shape_of(sd: dict, key: str) -> tuple[int, ...]:
    if key not in sd:
        raise MoVQLoadError(f"MoVQ weights: missing {key}, needed to tell the network's shape")
    return tuple(sd[key].shape)


def infer_config(sd: dict, norm_groups: int = 32):
    """MoVQConfig from original-layout weight shapes (the nominal resolution is taken as 256)."""
    from .movq import MoVQConfig  # (movq imports this module: import here, not at the top)

    ch, in_channels = shape_of(sd, "encoder.conv_in.weight")[:2]
    levels = indices(sd, "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise MoVQLoadError(f"MoVQ weights: encoder levels are {levels}, expected 0..n-1")
    ch_mult = []
    for i in levels:
        cout = shape_of(sd, f"encoder.down.{i}.block.0.conv1.weight")[0]
        if cout % ch:
            raise MoVQLoadError(f"MoVQ weights: level {i} has {cout} channels, not a multiple of ch={ch}")
        ch_mult.append(cout // ch)
    num_res_blocks = len(indices(sd, "encoder.down.0.block."))
    resolution = 256
    attn_resolutions = tuple(resolution // 2**i for i in levels if indices(sd, f"encoder.down.{i}.attn."))
    z_channels = shape_of(sd, "encoder.conv_out.weight")[0]
    n_embed, embed_dim = shape_of(sd, "quantize.embedding.weight")
    if shape_of(sd, "quant_conv.weight")[1] != z_channels:
        raise MoVQLoadError(
            f"MoVQ weights: encoder.conv_out gives {z_channels} channels but quant_conv takes "
            f"{shape_of(sd, 'quant_conv.weight')[1]} (double_z encoders are not MoVQGAN)"
        )
    out_ch = shape_of(sd, "decoder.conv_out.weight")[0]
    try:
        return MoVQConfig(
            ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=num_res_blocks, attn_resolutions=attn_resolutions,
            resolution=resolution, in_channels=in_channels, out_ch=out_ch, z_channels=z_channels,
            embed_dim=embed_dim, n_embed=n_embed, norm_groups=norm_groups,
        )
    except ValueError as e:
        raise MoVQLoadError(f"MoVQ weights describe an impossible network: {e}") from e


def config_for(sd: dict, path: Path):
    """The MoVQConfig stored in a safetensors file's metadata, else the one the shapes imply."""
    from .movq import MoVQConfig

    text = None
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(CONFIG_METADATA_KEY)
    if text is None:
        return infer_config(sd)
    try:
        return MoVQConfig(**json.loads(text))
    except (TypeError, ValueError) as e:
        raise MoVQLoadError(f"MoVQ weights: {path} has an unusable {CONFIG_METADATA_KEY} metadata entry ({e})") from e


def check_state_dict(model: nn.Module, sd: dict, path) -> None:
    """Every model key present with its exact shape, nothing else: a checkpoint that fits no
    consistent MoVQGAN (e.g. the decoder disagrees with the encoder) is reported key by key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in sd]
    extra = [k for k in sd if k not in expected]
    wrong = [f"{k}: file {tuple(sd[k].shape)}, network {expected[k]}" for k in expected if k in sd and tuple(sd[k].shape) != expected[k]]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if extra:
        hint = " (norm `.conv` keys mean add_conv=True, which no MoVQGAN release uses)" if any(".conv." in k and "norm" in k for k in extra) else ""
        problems.append(f"unexpected {len(extra)} keys{hint}: {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}")
    if problems:
        cfg = getattr(model, "cfg", None)
        raise MoVQLoadError(
            f"MoVQ weights {path} do not fit a consistent MoVQGAN (shape read from the encoder: {cfg}): " + "; ".join(problems)
        )


# ----------------------------------------------------------------------------- converting


def convert_ckpt_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike):
    """Read `src` restrictedly, check it is a complete MoVQGAN, write its model tensors to `dst`
    (safetensors, original key names and dtype, the config as metadata). Returns the MoVQConfig."""
    from .movq import MoVQ

    src = Path(src)
    sd = load_state_dict(src)
    cfg = config_for(sd, src)
    with torch.device("meta"):
        model = MoVQ(cfg)
    check_state_dict(model, sd, src)
    write_safetensors(sd, cfg, dst)
    return cfg


def write_safetensors(sd: dict, cfg, dst: str | os.PathLike) -> None:
    """Tensors plus the config (as metadata) to `dst`, written to a temporary name first so an
    interrupted write never leaves a truncated file under the real name."""
    from safetensors.torch import save_file

    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".partial")
    metadata = {"format": "pt", CONFIG_METADATA_KEY: json.dumps(asdict(cfg))}
    save_file({k: v.detach().contiguous().clone() for k, v in sd.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, dst)
