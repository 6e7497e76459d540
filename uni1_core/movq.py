"""MoVQGAN, the image tokenizer of Lumina-mGPT 2.0: encoder, vector quantiser, and a decoder whose
every GroupNorm is modulated by the codes (SpatialNorm). See ../shared/specs/movqgan_tokenizer.md.

    movq = MoVQ.from_pretrained("ai-forever/MoVQGAN", dtype=torch.bfloat16, device="cuda")
    codes = movq.encode(images)     # (B, 3, H, W) in [-1, 1] -> (B, H/8, W/8) long
    images = movq.decode(codes)     # (B, H/8, W/8) -> (B, 3, H, W) in about [-1, 1]

Parameter names are those of the original release (`encoder.*`, `decoder.*`, `quant_conv.*`,
`post_quant_conv.*`, `quantize.embedding.weight`), so its state dict loads without renaming.
The module is a plain nn.Module and trainable: `encode_latents`, `quantize` (straight-through
when gradients are on) and `decode_latents` are the pieces of `forward`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from .movq_load import (
    check_state_dict,
    config_for,
    convert_ckpt_to_safetensors,
    infer_config,
    load_state_dict,
    resolve_movq_file,
    write_safetensors,
)

__all__ = ["MoVQ", "MoVQConfig", "convert_ckpt_to_safetensors", "pil_to_tensor", "tensor_to_pil", "center_crop"]

# Cap on the number of query positions per attention call and on positions per quantiser
# distance block: bounds the (queries x keys) and (positions x codes) scratch matrices, which
# at 768 x 768 would otherwise be 9216 x 9216 and 9216 x 16384.
ATTN_QUERY_CHUNK = 4096
QUANT_POSITION_CHUNK = 1024


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
        """Read the shape from original-layout weights. Only shapes are inspected; the caller checks
        every key and shape against a model built from the result (see `check_state_dict`)."""
        return infer_config(sd, norm_groups=norm_groups)


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
        h = h.unflatten(3, (zw, W // zw)).unflatten(2, (zh, H // zh))  # B, C, zh, sh, zw, sw
        scale, shift = scale[:, :, :, None, :, None], shift[:, :, :, None, :, None]
        if torch.is_grad_enabled():
            h = h * scale + shift
        else:
            h = h.mul_(scale).add_(shift)
        return h.flatten(4, 5).flatten(2, 3)


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
        B, C, H, W = x.shape
        h = apply_norm(self.norm, x, zq)
        # (B, 1 head, H*W, C), contiguous: the fused SDPA kernels want unit stride on the last dim
        q, k, v = (conv(h).flatten(2).transpose(1, 2).unsqueeze(1).contiguous() for conv in (self.q, self.k, self.v))
        # Softmax is per query row, so splitting the queries is exact; it bounds the score
        # matrix when SDPA falls back to its plain kernel (head dim C is too wide for flash).
        out = torch.cat(
            [F.scaled_dot_product_attention(qc, k, v) for qc in q.split(ATTN_QUERY_CHUNK, dim=2)], dim=2
        )
        out = out.squeeze(1).transpose(1, 2).reshape(B, C, H, W)
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
        B, D, h, w = z.shape
        flat = z.detach().float().permute(0, 2, 3, 1).reshape(-1, D)
        book = self.embedding.weight.detach().float()
        book_sq = (book * book).sum(1)
        out = []
        for part in flat.split(QUANT_POSITION_CHUNK):
            dist = (part * part).sum(1, keepdim=True) + book_sq - 2.0 * part @ book.t()
            out.append(dist.argmin(1))
        return torch.cat(out).view(B, h, w)

    def embed(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, h, w) codes -> (B, D, h, w) codebook vectors."""
        return self.embedding(codes).permute(0, 3, 1, 2).contiguous()

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
        path_or_repo_id: str | os.PathLike = "ai-forever/MoVQGAN",
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
        cache_dir: str | os.PathLike | None = None,
        filename: str | None = None,
    ) -> "MoVQ":
        """Load from a .ckpt (read with torch.load(weights_only=True): no code runs), a .safetensors
        file, a folder holding one, or a Hugging Face repo id (default file movqgan_270M.ckpt).
        The shape is read from the weights (or from the config that save_pretrained stored with
        them), then every key and shape is checked. The codebook stays fp32 (distances are fp32)."""
        path = resolve_movq_file(path_or_repo_id, cache_dir=cache_dir, filename=filename)
        sd = load_state_dict(path)
        cfg = config_for(sd, path)
        with torch.device("meta"):
            model = cls(cfg)
        check_state_dict(model, sd, path)
        model.load_state_dict(sd, strict=True, assign=True)
        for name, child in model.named_children():  # the codebook keeps its stored precision, in fp32
            child.to(device=device, dtype=torch.float32 if name == "quantize" else dtype)
        return model.eval().requires_grad_(False)

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Weights (original key names) and config to one .safetensors file that from_pretrained reads."""
        write_safetensors(self.state_dict(), self.cfg, path)


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
