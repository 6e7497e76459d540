"""MoVQGAN, the image tokenizer of Lumina-mGPT 2.0: encoder, vector quantiser, and a decoder whose
every GroupNorm is modulated by the codes (SpatialNorm). docs/format.md describes the network
and its checkpoint.

    movq = MoVQ.from_pretrained("ai-forever/MoVQGAN", dtype=torch.bfloat16, device="cuda")
    codes = movq.encode(images)     # (B, 3, H, W) in [-1, 1] -> (B, H/8, W/8) long
    images = movq.decode(codes)     # (B, H/8, W/8) -> (B, 3, H, W) in about [-1, 1]

Parameter names are those of the original release (`encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*`, `quantize.embedding.weight`), so its state dict loads without renaming.
The module is a plain nn.Module and trainable: `encode_latents`, `quantize` (straight-through
when gradients are on) and `decode_latents` are the pieces of `forward`.

Loading (the end of this file) reads the shape from the weights' headers, checks the config
stored with them against those shapes, and only then builds the network, on the meta device.
Reading files is checkpoint.py's job: a `.ckpt` goes through its restricted unpickler.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from einops import rearrange
from PIL import Image
from torch import nn

from .checkpoint import (CheckpointError, download_file, list_safetensors_file, load_pickle_checkpoint, read_metadata,
                         read_tensors, save_safetensors)

__all__ = ["MoVQ", "MoVQConfig", "convert_ckpt_to_safetensors", "default_source", "pil_to_tensor", "tensor_to_pil",
           "center_crop"]

# Cap on the number of query positions per attention call and on positions per quantiser
# distance block: bounds the (queries x keys) and (positions x codes) scratch matrices, which
# at 768 x 768 would otherwise be 9216 x 9216 and 9216 x 16384.
ATTN_QUERY_CHUNK = 4096
QUANT_POSITION_CHUNK = 1024

DEFAULT_REPO = "ai-forever/MoVQGAN"
DEFAULT_FILENAME = "movqgan_270M.ckpt"
# The MoVQ of a model folder, by preference: the demo model ships movq.safetensors; a release
# folder may hold the converted or the original file.
FOLDER_CANDIDATES = ("movq.safetensors", "movqgan_270M.safetensors", "movqgan_270M.ckpt", "movq.ckpt")

# Keys of the model, by prefix; `quantize.embedding.weight` is the whole quantiser.
MODEL_PREFIXES = ("encoder.", "decoder.", "quant_conv.", "post_quant_conv.", "quantize.embedding.weight")
# Training-only state that release checkpoints may carry next to the model (the reference loads
# with strict=False): the perceptual/GAN loss with its discriminator, and EMA copies.
TRAINING_ONLY_PREFIXES = ("loss.", "discriminator.", "ema_", "model_ema.")
# safetensors metadata entry holding the MoVQConfig as JSON (written by save_pretrained and
# convert): it carries what shapes cannot tell, such as the norm group count of a small model.
CONFIG_METADATA_KEY = "movq_config"


@dataclass(frozen=True)
class MoVQConfig:
    """Shape of a MoVQGAN. Defaults are the 270M release (configs/movqgan_270M.yaml)."""

    ch: int = 256
    ch_mult: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_resolutions: tuple[int, ...] = (32,)
    resolution: int = 256  # nominal only: it places attention, the real image size is free
    in_channels: int = 3
    out_ch: int = 3
    z_channels: int = 4
    embed_dim: int = 4
    n_embed: int = 16384
    norm_groups: int = 32
    norm_eps: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
        object.__setattr__(self, "attn_resolutions", tuple(self.attn_resolutions))
        sizes = {f.name: getattr(self, f.name) for f in fields(self) if f.type == "int"}
        sizes.update({f"ch_mult[{i}]": m for i, m in enumerate(self.ch_mult)})
        bad = {k: v for k, v in sizes.items() if isinstance(v, bool) or not isinstance(v, int) or v < 1}
        if bad or not self.ch_mult:
            raise ValueError(f"MoVQConfig: {bad or 'ch_mult'} must be positive integers")
        if not all(isinstance(r, int) for r in self.attn_resolutions):
            raise ValueError(f"MoVQConfig: attn_resolutions {self.attn_resolutions} must be integers")
        if isinstance(self.norm_eps, bool) or not isinstance(self.norm_eps, (int, float)) or not self.norm_eps > 0:
            raise ValueError(f"MoVQConfig: norm_eps {self.norm_eps!r} must be a positive number")
        for c in [self.ch * m for m in self.ch_mult] + [self.ch]:
            if c % self.norm_groups:
                raise ValueError(f"MoVQConfig: {c} channels are not divisible by norm_groups={self.norm_groups}")

    @property
    def num_levels(self) -> int:
        return len(self.ch_mult)

    @property
    def downsample_factor(self) -> int:
        return 2 ** (self.num_levels - 1)

    def level_channels(self, level: int) -> int:
        return self.ch * self.ch_mult[level]

    def has_attention(self, level: int) -> bool:
        # The nominal resolution halves per level from `resolution`, whatever the input size.
        return self.resolution // 2**level in self.attn_resolutions

    @classmethod
    def from_state_dict(cls, sd: dict, norm_groups: int = 32) -> "MoVQConfig":
        """Read the shape from original-layout weights (tensors or shapes). Only shapes are
        inspected; the caller checks every key against the result (see `check_shapes`)."""
        return config_from_shapes({k: tuple(v.shape) if hasattr(v, "shape") else tuple(v) for k, v in sd.items()},
                                  norm_groups=norm_groups)


# ----------------------------------------------------------------------------- building blocks


def swish(x: torch.Tensor) -> torch.Tensor:
    # In place at inference: the activation is a fresh norm output, and at 768 x 768 a copy of it
    # is the largest tensor of the decoder.
    return F.silu(x, inplace=not torch.is_grad_enabled())


class SpatialNorm(nn.Module):
    """GroupNorm(f) * conv_y(zq) + conv_b(zq), zq nearest-upsampled to f's size (MoVQ's decoder norm)."""

    def __init__(self, channels: int, zq_channels: int, groups: int, eps: float):
        super().__init__()
        self.norm_layer = nn.GroupNorm(groups, channels, eps=eps, affine=True)
        self.conv_y = nn.Conv2d(zq_channels, channels, 1)
        self.conv_b = nn.Conv2d(zq_channels, channels, 1)

    def forward(self, f: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        # A 1x1 conv commutes with nearest upsampling, so the scale and shift are computed at
        # code resolution and broadcast over each s x s block: no full-size copies of them.
        scale, shift = self.conv_y(zq), self.conv_b(zq)
        h = self.norm_layer(f)
        (H, W), (zh, zw) = f.shape[-2:], zq.shape[-2:]
        if H % zh or W % zw:  # not an integer factor: fall back to the literal definition
            scale = F.interpolate(scale, size=(H, W), mode="nearest")
            shift = F.interpolate(shift, size=(H, W), mode="nearest")
            return h * scale + shift
        h = rearrange(h, "b c (zh sh) (zw sw) -> b c zh sh zw sw", zh=zh, zw=zw)   # a view: no copy
        scale, shift = (rearrange(t, "b c zh zw -> b c zh 1 zw 1") for t in (scale, shift))
        if torch.is_grad_enabled():
            h = h * scale + shift
        else:
            h = h.mul_(scale).add_(shift)
        return rearrange(h, "b c zh sh zw sw -> b c (zh sh) (zw sw)")


def make_norm(channels: int, cfg: MoVQConfig, zq_channels: int | None) -> nn.Module:
    if zq_channels is None:
        return nn.GroupNorm(cfg.norm_groups, channels, eps=cfg.norm_eps, affine=True)
    return SpatialNorm(channels, zq_channels, cfg.norm_groups, cfg.norm_eps)


def apply_norm(norm: nn.Module, x: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return norm(x) if zq is None else norm(x, zq)


class ResnetBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cfg: MoVQConfig, zq_channels: int | None = None):
        super().__init__()
        self.norm1 = make_norm(cin, cfg, zq_channels)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.norm2 = make_norm(cout, cfg, zq_channels)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        if cin != cout:
            self.nin_shortcut = nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = self.conv1(swish(apply_norm(self.norm1, x, zq)))
        h = self.conv2(swish(apply_norm(self.norm2, h, zq)))
        if hasattr(self, "nin_shortcut"):
            x = self.nin_shortcut(x)
        return x + h


class AttnBlock(nn.Module):
    """Single-head self-attention over all H*W positions, scale C^-0.5, residual."""

    def __init__(self, channels: int, cfg: MoVQConfig, zq_channels: int | None = None):
        super().__init__()
        self.norm = make_norm(channels, cfg, zq_channels)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor, zq: torch.Tensor | None = None) -> torch.Tensor:
        h = apply_norm(self.norm, x, zq)
        # One head over the H*W positions; contiguous: the fused SDPA kernels want unit stride on the last dim
        q, k, v = (rearrange(conv(h), "b c h w -> b 1 (h w) c").contiguous() for conv in (self.q, self.k, self.v))
        # Softmax is per query row, so splitting the queries is exact; it bounds the score
        # matrix when SDPA falls back to its plain kernel (head dim C is too wide for flash).
        out = torch.cat(
            [F.scaled_dot_product_attention(qc, k, v) for qc in q.split(ATTN_QUERY_CHUNK, dim=2)], dim=2
        )
        out = rearrange(out, "b 1 (h w) c -> b c h w", h=x.shape[2])
        return x + self.proj_out(out)


class Downsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))  # asymmetric: right and bottom only


class Upsample(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


def make_level(blocks: list[nn.Module], attns: list[nn.Module]) -> nn.Module:
    level = nn.Module()
    level.block = nn.ModuleList(blocks)
    level.attn = nn.ModuleList(attns)
    return level


def make_mid(channels: int, cfg: MoVQConfig, zq_channels: int | None) -> nn.Module:
    mid = nn.Module()
    mid.block_1 = ResnetBlock(channels, channels, cfg, zq_channels)
    mid.attn_1 = AttnBlock(channels, cfg, zq_channels)
    mid.block_2 = ResnetBlock(channels, channels, cfg, zq_channels)
    return mid


def run_mid(mid: nn.Module, h: torch.Tensor, zq: torch.Tensor | None) -> torch.Tensor:
    return mid.block_2(mid.attn_1(mid.block_1(h, zq), zq), zq)


# ----------------------------------------------------------------------------- encoder / decoder


class Encoder(nn.Module):
    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        self.down = nn.ModuleList()
        cin = cfg.ch
        for i in range(cfg.num_levels):
            cout = cfg.level_channels(i)
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks):
                blocks.append(ResnetBlock(cin, cout, cfg))
                cin = cout
                if cfg.has_attention(i):
                    attns.append(AttnBlock(cout, cfg))
            level = make_level(blocks, attns)
            if i != cfg.num_levels - 1:
                level.downsample = Downsample(cout)
            self.down.append(level)
        self.mid = make_mid(cin, cfg, None)
        self.norm_out = make_norm(cin, cfg, None)
        self.conv_out = nn.Conv2d(cin, cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = run_mid(self.mid, h, None)
        return self.conv_out(swish(self.norm_out(h)))


class Decoder(nn.Module):
    """MOVQDecoder: every norm is a SpatialNorm conditioned on the quantised latents zq."""

    def __init__(self, cfg: MoVQConfig):
        super().__init__()
        zq = cfg.embed_dim
        top = cfg.level_channels(cfg.num_levels - 1)
        self.conv_in = nn.Conv2d(cfg.z_channels, top, 3, padding=1)
        self.mid = make_mid(top, cfg, zq)
        # Stored by level index (up.0 is the full-resolution level) but run from the last level
        # down, as in the release; level i's first block takes level i+1's channels.
        self.up = nn.ModuleList()
        for i in range(cfg.num_levels):
            cin = cfg.level_channels(min(i + 1, cfg.num_levels - 1))
            cout = cfg.level_channels(i)
            blocks, attns = [], []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(ResnetBlock(cin, cout, cfg, zq))
                cin = cout
                if cfg.has_attention(i):
                    attns.append(AttnBlock(cout, cfg, zq))
            level = make_level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(cout)
            self.up.append(level)
        self.norm_out = make_norm(cfg.level_channels(0), cfg, zq)
        self.conv_out = nn.Conv2d(cfg.level_channels(0), cfg.out_ch, 3, padding=1)

    def forward(self, z: torch.Tensor, zq: torch.Tensor) -> torch.Tensor:
        h = run_mid(self.mid, self.conv_in(z), zq)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h, zq)
                if len(level.attn):
                    h = level.attn[j](h, zq)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(swish(self.norm_out(h, zq)))


class VectorQuantizer(nn.Module):
    """Nearest codebook entry by squared L2 distance |z|^2 + |e|^2 - 2 z.e, computed in fp32;
    ties go to the lowest index (torch.argmin returns the first minimum)."""

    def __init__(self, n_embed: int, embed_dim: int):
        super().__init__()
        # Skip the random init on the meta device (from_pretrained): see Decoder in model.py.
        meta_weight = torch.empty(n_embed, embed_dim) if torch.empty(0).is_meta else None
        self.embedding = nn.Embedding(n_embed, embed_dim, _weight=meta_weight)

    def codes(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, h, w) latents -> (B, h, w) long codes."""
        b, _, h, w = z.shape
        flat = rearrange(z.detach().float(), "b d h w -> (b h w) d")
        book = self.embedding.weight.detach().float()
        book_sq = (book * book).sum(1)
        out = []
        for part in flat.split(QUANT_POSITION_CHUNK):
            dist = (part * part).sum(1, keepdim=True) + book_sq - 2.0 * part @ book.t()
            out.append(dist.argmin(1))
        return torch.cat(out).view(b, h, w)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, D, h, w) codebook vectors."""
        return rearrange(self.embedding(codes), "b h w d -> b d h w").contiguous()

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        codes = self.codes(z)
        z_q = self.embed(codes).to(z.dtype)
        if torch.is_grad_enabled() and z.requires_grad:
            z_q = z + (z_q - z).detach()  # straight-through: gradients flow to the encoder as identity
        return z_q, codes


# ----------------------------------------------------------------------------- the tokenizer


class MoVQ(nn.Module):
    def __init__(self, cfg: MoVQConfig = MoVQConfig()):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.quant_conv = nn.Conv2d(cfg.z_channels, cfg.embed_dim, 1)
        self.quantize = VectorQuantizer(cfg.n_embed, cfg.embed_dim)
        self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)
        self.decoder = Decoder(cfg)

    # -- facts the transformer side checks against
    @property
    def downsample_factor(self) -> int:
        return self.cfg.downsample_factor

    @property
    def num_codes(self) -> int:
        return self.cfg.n_embed

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    @property
    def dtype(self) -> torch.dtype:
        return self.decoder.conv_in.weight.dtype

    @property
    def device(self) -> torch.device:
        return self.decoder.conv_in.weight.device

    def check_compatible(self, num_image_codes: int, downsample_factor: int | None = None) -> None:
        """Raise if this tokenizer cannot serve a transformer with `num_image_codes` image tokens."""
        if num_image_codes != self.num_codes:
            raise ValueError(
                f"MoVQ codebook has {self.num_codes} codes but the transformer's image vocabulary has "
                f"{num_image_codes}: this tokenizer does not belong to this model. Load the MoVQ that the "
                f"model was trained with (Lumina-mGPT 2.0: ai-forever/MoVQGAN movqgan_270M.ckpt, 16384 codes)."
            )
        if downsample_factor is not None and downsample_factor != self.downsample_factor:
            raise ValueError(
                f"MoVQ downsamples by {self.downsample_factor} but the model's image grid assumes "
                f"{downsample_factor} pixels per code: load the matching MoVQ."
            )

    # -- trainable pieces
    def encode_latents(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> pre-quantisation latents (B, embed_dim, H/f, W/f)."""
        return self.quant_conv(self.encoder(images))

    def decode_latents(self, z_q: torch.Tensor) -> torch.Tensor:
        """Quantised latents (B, embed_dim, h, w) -> images (B, 3, h*f, w*f)."""
        return self.decoder(self.post_quant_conv(z_q), z_q)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training step helper: returns (reconstruction, latents z, codes). The usual VQ losses are
        mse(embed(codes), z.detach()) + beta * mse(z, embed(codes).detach()) plus the pixel loss."""
        z = self.encode_latents(images)
        z_q, codes = self.quantize(z)
        return self.decode_latents(z_q), z, codes

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        return self.quantize.embed(codes)

    # -- inference API
    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1], H and W multiples of `downsample_factor` -> (B, H/f, W/f) long codes."""
        f = self.downsample_factor
        if images.ndim != 4 or images.shape[1] != self.cfg.in_channels:
            raise ValueError(f"MoVQ.encode wants (B, {self.cfg.in_channels}, H, W) images, got shape {tuple(images.shape)}")
        if images.shape[2] % f or images.shape[3] % f:
            raise ValueError(
                f"MoVQ.encode: height and width must be multiples of {f}, got {images.shape[2]}x{images.shape[3]}; "
                f"crop first (center_crop)"
            )
        if not images.is_floating_point():
            raise ValueError(f"MoVQ.encode wants float pixels in [-1, 1], got {images.dtype}; use pil_to_tensor")
        lo, hi = images.aminmax()
        if lo < -1.5 or hi > 1.5:  # decoder outputs overshoot [-1, 1] a little; 0..1 or 0..255 inputs do not fit
            raise ValueError(
                f"MoVQ.encode wants pixels in [-1, 1], got values in [{lo.item():.3g}, {hi.item():.3g}]; "
                f"scale 8-bit images with x / 255 * 2 - 1 (pil_to_tensor does this)"
            )
        z = self.encode_latents(images.to(device=self.device, dtype=self.dtype))
        return self.quantize.codes(z)

    @torch.no_grad()
    def decode(self, codes: torch.Tensor, max_batch: int = 1) -> torch.Tensor:
        """(B, h, w) codes -> (B, 3, h*f, w*f) float pixels in about [-1, 1] (model dtype).
        Images are decoded `max_batch` at a time: peak memory is one image's, not the batch's."""
        if codes.ndim != 3:
            raise ValueError(f"MoVQ.decode wants a (B, h, w) grid of codes, got shape {tuple(codes.shape)}")
        if codes.is_floating_point() or codes.dtype == torch.bool:
            raise ValueError(f"MoVQ.decode wants integer codes, got {codes.dtype}")
        if codes.numel() and (codes.min() < 0 or codes.max() >= self.num_codes):
            raise ValueError(
                f"MoVQ.decode: codes must lie in [0, {self.num_codes}), got [{codes.min().item()}, {codes.max().item()}]; "
                f"subtract the vocabulary offset of the image tokens first"
            )
        codes = codes.to(self.device, torch.long)
        out = []
        for part in codes.split(max(1, max_batch)):
            z_q = self.embed(part).to(self.dtype)
            out.append(self.decode_latents(z_q))
        return torch.cat(out)

    # -- loading
    @classmethod
    def from_pretrained(
        cls,
        path_or_repo_id: str | os.PathLike = DEFAULT_REPO,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        filename: str | None = None,
    ) -> "MoVQ":
        """Load from a .ckpt (read with torch.load(weights_only=True): no code runs), a .safetensors
        file, a folder holding one, or a Hugging Face repo id (default file movqgan_270M.ckpt).
        The shape is read from the weights (or from the config that save_pretrained stored with
        them, checked against the weights), then every key and shape is checked, all before
        the network is built. The codebook stays fp32 (distances are computed in fp32)."""
        path = resolve_movq_file(path_or_repo_id, cache_dir=cache_dir, filename=filename)
        weights = read_weights(path)           # tensors, or for safetensors header entries only
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        cfg = config_for(shapes, path)
        with torch.device("meta"):
            model = cls(cfg)
        check_shapes(model, shapes, path)
        if path.suffix == ".safetensors":
            weights = read_tensors(weights)
        model.load_state_dict(weights, strict=True, assign=True)
        for name, child in model.named_children():  # the codebook keeps its stored precision, in fp32
            child.to(device=device, dtype=torch.float32 if name == "quantize" else dtype)
        return model.eval().requires_grad_(False)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Weights (original key names) and config to one .safetensors file that from_pretrained reads."""
        save_safetensors(self.state_dict(), path, {CONFIG_METADATA_KEY: json.dumps(asdict(self.cfg))})


# ----------------------------------------------------------------------------- finding the weights


def default_source(model_dir: str | os.PathLike) -> str:
    """The MoVQ that belongs to a model folder: its own file if it holds one, else the release's
    tokenizer on the hub. The one place this choice is made (the pipeline and the nodes ask)."""
    local = [Path(model_dir) / f for f in FOLDER_CANDIDATES if (Path(model_dir) / f).is_file()]
    return str(local[0]) if local else DEFAULT_REPO


def resolve_movq_file(path_or_repo_id: str | os.PathLike, cache_dir: str | os.PathLike | None = None,
                      filename: str | None = None) -> Path:
    """A file, a folder holding one checkpoint, or a Hugging Face repo id -> a local file path."""
    p = Path(path_or_repo_id).expanduser()
    if p.is_file():
        return p
    if p.is_dir():
        return find_in_folder(p, filename)
    text = str(path_or_repo_id)
    if os.path.isabs(text) or text.startswith(".") or text.count("/") != 1:
        raise CheckpointError(f"MoVQ weights: {text!r} is neither an existing file or folder nor a Hugging Face "
                              f"repo id like {DEFAULT_REPO!r}. Fix: check the path.")
    return download_file(text, filename or DEFAULT_FILENAME, cache_dir=cache_dir)


def find_in_folder(folder: Path, filename: str | None) -> Path:
    if filename is not None:
        if not (folder / filename).is_file():
            raise CheckpointError(f"MoVQ weights: {folder / filename} does not exist")
        return folder / filename
    for name in FOLDER_CANDIDATES:
        if (folder / name).is_file():
            return folder / name
    found = sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.ckpt"))
    if len(found) == 1:
        return found[0]
    listing = ", ".join(sorted(x.name for x in folder.iterdir())) or "nothing"
    raise CheckpointError(f"MoVQ weights: the folder {folder} holds {listing}; expected one of "
                          f"{', '.join(FOLDER_CANDIDATES)} (or a single *.safetensors / *.ckpt file)")


# ----------------------------------------------------------------------------- reading and checking them


def read_weights(path: Path) -> dict:
    """The model's entries of a .safetensors file (header entries: no data read yet) or of a
    .ckpt (tensors, through the restricted unpickler; a plain state dict or a Lightning
    checkpoint {"state_dict": ...}). Training-only keys are dropped; any other key is an error."""
    if path.suffix == ".safetensors":
        raw = list_safetensors_file(path)
    else:
        raw = load_pickle_checkpoint(path)
        if isinstance(raw, dict) and isinstance(raw.get("state_dict"), dict):
            raw = raw["state_dict"]
        if not isinstance(raw, dict):
            raise CheckpointError(f"MoVQ weights: {path} holds a {type(raw).__name__}, not a state dict")
    weights, unknown = {}, []
    for key, value in raw.items():
        if key.startswith(MODEL_PREFIXES):
            if not hasattr(value, "shape"):
                raise CheckpointError(f"MoVQ weights: {path}: {key} is a {type(value).__name__}, not a tensor")
            weights[key] = value
        elif not key.startswith(TRAINING_ONLY_PREFIXES):
            unknown.append(key)
    if unknown:
        raise CheckpointError(
            f"MoVQ weights: {path} has keys that belong neither to MoVQGAN nor to its known training-only state "
            f"({', '.join(p + '*' for p in TRAINING_ONLY_PREFIXES)}): {', '.join(unknown[:8])}"
            f"{' ...' if len(unknown) > 8 else ''}. Is this a MoVQGAN checkpoint?")
    if not weights:
        raise CheckpointError(f"MoVQ weights: {path} contains no MoVQGAN keys (encoder.*, decoder.*, quantize.*)")
    return weights


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model's tensors from a .safetensors or .ckpt file, training-only keys dropped."""
    weights = read_weights(Path(path))
    return read_tensors(weights) if Path(path).suffix == ".safetensors" else weights


def indices(shapes: dict, prefix: str) -> list[int]:
    """Sorted distinct integers i of keys `prefix{i}.`"""
    found = {int(m.group(1)) for k in shapes if (m := re.match(re.escape(prefix) + r"(\d+)\.", k))}
    return sorted(found)


def shape_of(shapes: dict, key: str) -> tuple[int, ...]:
    if key not in shapes:
        raise CheckpointError(f"MoVQ weights: missing {key}, needed to tell the network's shape")
    return tuple(shapes[key])


def config_from_shapes(shapes: dict[str, tuple[int, ...]], norm_groups: int = 32) -> MoVQConfig:
    """MoVQConfig from original-layout weight shapes (the nominal resolution is taken as 256)."""
    ch, in_channels = shape_of(shapes, "encoder.conv_in.weight")[:2]
    levels = indices(shapes, "encoder.down.")
    if not levels or levels != list(range(len(levels))):
        raise CheckpointError(f"MoVQ weights: encoder levels are {levels[:8]}, expected 0..n-1")
    ch_mult = []
    for i in levels:
        cout = shape_of(shapes, f"encoder.down.{i}.block.0.conv1.weight")[0]
        if cout % ch:
            raise CheckpointError(f"MoVQ weights: level {i} has {cout} channels, not a multiple of ch={ch}")
        ch_mult.append(cout // ch)
    resolution = 256
    z_channels = shape_of(shapes, "encoder.conv_out.weight")[0]
    n_embed, embed_dim = shape_of(shapes, "quantize.embedding.weight")
    if shape_of(shapes, "quant_conv.weight")[1] != z_channels:
        raise CheckpointError(f"MoVQ weights: encoder.conv_out gives {z_channels} channels but quant_conv takes "
                              f"{shape_of(shapes, 'quant_conv.weight')[1]} (double_z encoders are not MoVQGAN)")
    try:
        return MoVQConfig(
            ch=ch, ch_mult=tuple(ch_mult), num_res_blocks=len(indices(shapes, "encoder.down.0.block.")),
            attn_resolutions=tuple(resolution // 2**i for i in levels if indices(shapes, f"encoder.down.{i}.attn.")),
            resolution=resolution, in_channels=in_channels, out_ch=shape_of(shapes, "decoder.conv_out.weight")[0],
            z_channels=z_channels, embed_dim=embed_dim, n_embed=n_embed, norm_groups=norm_groups)
    except ValueError as e:
        raise CheckpointError(f"MoVQ weights describe an impossible network: {e}") from e


# What the weights' shapes fix; the stored config must agree on each before anything is built.
SHAPE_FIELDS = ("ch", "ch_mult", "num_res_blocks", "in_channels", "out_ch", "z_channels", "embed_dim", "n_embed")


def config_for(shapes: dict[str, tuple[int, ...]], path: Path) -> MoVQConfig:
    """The MoVQConfig stored in a safetensors file's metadata, checked against the shapes (so a
    config of a million blocks is refused before a single block is built); else the one the
    shapes imply."""
    text = read_metadata(path).get(CONFIG_METADATA_KEY) if path.suffix == ".safetensors" else None
    if text is None:
        return config_from_shapes(shapes)
    try:
        stored = json.loads(text)
        cfg = MoVQConfig(**stored) if isinstance(stored, dict) else None
    except (TypeError, ValueError) as e:
        cfg, stored = None, e
    if cfg is None:
        raise CheckpointError(f"MoVQ weights: {path} has an unusable {CONFIG_METADATA_KEY} metadata entry "
                              f"({stored}). Fix: write the file again with MoVQ.save_pretrained or convert-movq.")
    implied = config_from_shapes(shapes, norm_groups=cfg.norm_groups)
    differ = [f"{f}={getattr(cfg, f)} (weights: {getattr(implied, f)})" for f in SHAPE_FIELDS
              if getattr(cfg, f) != getattr(implied, f)]
    attention = [cfg.has_attention(i) for i in range(cfg.num_levels)]
    if not differ and attention != [bool(indices(shapes, f"encoder.down.{i}.attn.")) for i in range(cfg.num_levels)]:
        differ.append(f"attention at levels {attention}")
    if differ:
        raise CheckpointError(f"MoVQ weights: the config stored in {path} does not match its weights: "
                              f"{', '.join(differ)}. Fix: write the file again with MoVQ.save_pretrained.")
    return cfg


def check_shapes(model: nn.Module, shapes: dict[str, tuple[int, ...]], path) -> None:
    """Every model key present with its exact shape, nothing else: a checkpoint that fits no
    consistent MoVQGAN (e.g. the decoder disagrees with the encoder) is reported key by key."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = [k for k in expected if k not in shapes]
    extra = [k for k in shapes if k not in expected]
    wrong = [f"{k}: file {shapes[k]}, network {v}" for k, v in expected.items() if k in shapes and shapes[k] != v]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys: {', '.join(missing[:6])}{' ...' if len(missing) > 6 else ''}")
    if extra:
        hint = (" (norm `.conv` keys mean add_conv=True, which no MoVQGAN release uses)"
                if any(".conv." in k and "norm" in k for k in extra) else "")
        problems.append(f"unexpected {len(extra)} keys{hint}: {', '.join(extra[:6])}{' ...' if len(extra) > 6 else ''}")
    if wrong:
        problems.append(f"wrong shapes: {'; '.join(wrong[:6])}{' ...' if len(wrong) > 6 else ''}")
    if problems:
        raise CheckpointError(f"MoVQ weights {path} do not fit a consistent MoVQGAN (shape read from the "
                              f"encoder: {getattr(model, 'cfg', None)}): " + "; ".join(problems))


def convert_ckpt_to_safetensors(src: str | os.PathLike, dst: str | os.PathLike) -> MoVQConfig:
    """Read `src` restrictedly, check it is a complete MoVQGAN, write its model tensors to `dst`
    (safetensors, original key names and dtype, the config as metadata). Returns the MoVQConfig."""
    src = Path(src)
    sd = load_state_dict(src)
    shapes = {k: tuple(v.shape) for k, v in sd.items()}
    cfg = config_for(shapes, src)
    with torch.device("meta"):
        model = MoVQ(cfg)
    check_shapes(model, shapes, src)
    save_safetensors(sd, dst, {CONFIG_METADATA_KEY: json.dumps(asdict(cfg))})
    return cfg


# ----------------------------------------------------------------------------- pixels


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """PIL image -> (3, H, W) float32 in [-1, 1]: RGB, transparency blended onto white (as
    Lumina's to_rgb_if_rgba), then array / 255 * 2 - 1."""
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        rgb = Image.new("RGB", rgba.size, (255, 255, 255))
        rgb.paste(rgba, mask=rgba.split()[3])
        img = rgb
    elif img.mode != "RGB":
        img = img.convert("RGB")
    arr = np.asarray(img, dtype=np.float32)
    return torch.from_numpy(arr / 255.0 * 2.0 - 1.0).permute(2, 0, 1).contiguous()


def tensor_to_pil(x: torch.Tensor) -> Image.Image | list[Image.Image]:
    """(3, H, W) in [-1, 1] -> PIL RGB image; (B, 3, H, W) -> a list. 8-bit values are
    ((x + 1) * 127.5).round().clamp(0, 255), as the reference."""
    if x.ndim == 4:
        return [tensor_to_pil(one) for one in x]
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"tensor_to_pil wants (3, H, W) or (B, 3, H, W), got shape {tuple(x.shape)}")
    arr = ((x.detach().float().cpu() + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8)
    return Image.fromarray(arr.permute(1, 2, 0).numpy(), mode="RGB")


def center_crop(img: Image.Image, width: int, height: int) -> Image.Image:
    """Lumina's condition-image crop to width x height: halve with BOX while both sides are at
    least twice the target, BICUBIC-resize so the image covers the target, then crop the centre.
    (The reference's training helper picks a random offset; inference wants the centre.)"""
    if width <= 0 or height <= 0:
        raise ValueError(f"center_crop: target size must be positive, got {width}x{height}")
    while img.size[0] >= 2 * width and img.size[1] >= 2 * height:
        img = img.resize(tuple(s // 2 for s in img.size), resample=Image.BOX)
    scale = max(width / img.size[0], height / img.size[1])
    img = img.resize(tuple(round(s * scale) for s in img.size), resample=Image.BICUBIC)
    left, top = (img.size[0] - width) // 2, (img.size[1] - height) // 2
    return img.crop((left, top, left + width, top + height))
