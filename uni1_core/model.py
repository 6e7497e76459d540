"""The Lumina-mGPT 2.0 transformer: a Chameleon-family decoder, with a static KV cache.

    model = Uni1Model.from_pretrained("Alpha-VLLM/Lumina-mGPT-2.0", dtype=torch.bfloat16, device="cuda")
    logits = model(input_ids)                           # (B, T) -> (B, T, vocab) float32, no cache

    cache = model.new_cache(batch_size=2, max_len=10000)
    logits = model(prompt_ids, cache=cache)             # prefill; cache.lengths += T
    logits = model(window_ids, cache=cache, n_valid=n)  # row b holds n[b] real tokens, then padding
    cache.lengths = cache.lengths - rejected            # roll back: later writes overwrite the slots
    logits = model(prompt_ids, cache=cache, n_valid=n, last_only=True)   # (B, 1, vocab): row b's token n[b]-1

Row b's new tokens go to cache slots lengths[b] .. lengths[b]+T-1, their RoPE positions are those
slot numbers, and query t sees slots <= lengths[b]+t; afterwards lengths += n (default T).

A window may also be a tree (`tree=parents`, one parent index per token, -1 for the first): token
t then sits at RoPE position lengths[b] + depth(t) and sees the cache and its own ancestors only.
A chain (parents t-1) is the plain window. The sampler hangs alternative tokens off the chain this
way, to get in the same forward the law after each alternative (see sampler.py, "branches").

Per layer (pre-norm; `swin_norm` moves the norms after the sublayers):

    h   = x + Attn(RMSNorm(x))           swin:  h   = x + RMSNorm(Attn(x))
    out = h + SwiGLU(RMSNorm(h))                out = h + RMSNorm(SwiGLU(h))

Attention is GQA with Chameleon's qk-norm: q and k are LayerNorm-ed over head_dim only, then
an affine per head (weights (heads, head_dim)), then rotated by RoPE (rotate-half layout).
Checkpoints of the release store that affine per model-parallel shard, (model_parallel_size,
head_dim); `from_pretrained` expands it to one row per head, as the reference does.

Speed: a small model's decode step costs kernel launches, not arithmetic. So without autograd
the layers run in inference mode, RoPE angles come from a table made once per device and dtype,
GQA is left to SDPA (enable_gqa) instead of copying the cached keys per head, the cache mask is
made once per call (and skipped for one token per row at equal lengths), and models with
hidden_size <= FUSE_MAX_HIDDEN run DecoderLayer.fused_forward on concatenated q/k/v and gate/up
weights. With autograd on (training) every layer runs its submodules, as written above.

Parameter names are the Hugging Face ones (`model.layers.0.self_attn.q_proj.weight`, ...), so a
checkpoint folder loads as it is. Spec: shared/specs/lumina_mgpt2.md section 1.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import CheckpointError, list_safetensors_dir, read_tensors, resolve_model_dir

QK_NORM_EPS = 1e-5                      # fixed in Chameleon, not in the config
IGNORED_KEY_PREFIXES = ("model.vqmodel.",)   # Chameleon's unused VQ-VAE: belongs to nothing here
SUPPORTED_MODEL_TYPES = ("chameleon",)
_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16}


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: str | None = None       # None, "linear" or "dynamic"
    rope_factor: float = 1.0
    rms_norm_eps: float = 1e-5
    model_parallel_size: int = 1
    swin_norm: bool = False
    mask_image_logits: bool = True
    attention_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    vocabulary_map: dict = field(default_factory=dict)
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    raw: dict = field(default_factory=dict, repr=False)   # the whole config.json, for extra sections ("uni1")

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def masked_token_ids(self) -> list[int]:
        """Ids whose logits the reference sets to the dtype minimum: names starting with IMGIMG."""
        return sorted(int(i) for name, i in self.vocabulary_map.items() if name.startswith("IMGIMG"))

    def to_dict(self) -> dict:
        """The config.json form: the raw dict with this dataclass's fields written over it."""
        out = dict(self.raw)
        out.pop("rope_parameters", None)
        for f in fields(self):
            if f.name not in ("raw", "rope_scaling", "rope_factor"):
                out[f.name] = getattr(self, f.name)
        out["model_type"] = SUPPORTED_MODEL_TYPES[0]
        out["rope_scaling"] = {"type": self.rope_scaling, "factor": self.rope_factor} if self.rope_scaling else None
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError) as err:
            raise CheckpointError(f"{path} is not readable JSON ({type(err).__name__}: {err}). Fix: download "
                                  "config.json of the checkpoint again.") from err
        try:
            return cls.from_dict(raw)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise CheckpointError(
                f"config has model_type {model_type!r}, but uni1_core runs only Chameleon-family checkpoints "
                f"(model_type {SUPPORTED_MODEL_TYPES[0]!r}) such as Alpha-VLLM/Lumina-mGPT-2.0. Fix: pass the "
                "folder or repo id of such a checkpoint.")
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise CheckpointError(f"config lacks {missing}. Fix: use the checkpoint's own config.json.")
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"hidden_act {raw['hidden_act']!r} is not supported (Chameleon uses 'silu').")
        heads = int(raw["num_attention_heads"])
        kv_heads = int(raw.get("num_key_value_heads") or heads)
        scaling, factor, theta = _rope_settings(raw)
        cfg = cls(
            vocab_size=int(raw["vocab_size"]),
            hidden_size=int(raw["hidden_size"]),
            intermediate_size=int(raw["intermediate_size"]),
            num_hidden_layers=int(raw["num_hidden_layers"]),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            max_position_embeddings=int(raw.get("max_position_embeddings", 4096)),
            rope_theta=theta, rope_scaling=scaling, rope_factor=factor,
            rms_norm_eps=float(raw.get("rms_norm_eps", 1e-5)),
            model_parallel_size=int(raw.get("model_parallel_size") or 1),
            swin_norm=bool(raw.get("swin_norm", False)),
            mask_image_logits=bool(raw.get("mask_image_logits", True)),
            attention_bias=bool(raw.get("attention_bias", False)),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            vocabulary_map=dict(raw.get("vocabulary_map") or {}),
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            raw=raw,
        )
        if cfg.hidden_size % heads:
            raise CheckpointError(f"hidden_size {cfg.hidden_size} is not a multiple of num_attention_heads {heads}.")
        if heads % kv_heads:
            raise CheckpointError(f"num_attention_heads {heads} is not a multiple of num_key_value_heads {kv_heads}.")
        if cfg.head_dim % 2:
            raise CheckpointError(f"head_dim {cfg.head_dim} is odd; rotary embeddings need an even head_dim.")
        return cfg


def _rope_settings(raw: dict) -> tuple[str | None, float, float]:
    """(scaling type, factor, theta) from either the classic keys (rope_theta, rope_scaling)
    or the newer transformers form (rope_parameters: {rope_type, rope_theta, factor})."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    theta = float(params.get("rope_theta", raw.get("rope_theta", 10000.0)))
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return None, 1.0, theta
    if kind in ("linear", "dynamic"):
        return kind, float(params["factor"]), theta
    raise CheckpointError(f"rope scaling {kind!r} is not supported; Chameleon checkpoints use none, 'linear' "
                          "or 'dynamic'.")


def parse_dtype(dtype: str | torch.dtype | None, config: ModelConfig | None = None) -> torch.dtype:
    """torch.dtype from a dtype, a name ('bfloat16', 'fp16', ...) or 'auto' (the config's torch_dtype)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        dtype = (config.torch_dtype if config is not None else None) or "float32"
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise ValueError(f"dtype {dtype!r} is not supported; use one of float32, bfloat16, float16 or 'auto'.")
    return _DTYPES[name]


# ---------------------------------------------------------------------------------------------
# The static KV cache

class KVCache:
    """Pre-allocated keys and values for every layer, with a valid length per batch row.

    k, v: (layers, batch, kv_heads, max_len, head_dim). Row b's tokens occupy slots
    0 .. lengths[b]-1, and slot number = RoPE position. Rolling back is assigning smaller
    lengths: the attention mask never looks above a query's own slot, so stale slots are
    invisible until they are overwritten.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def batch_size(self) -> int:
        return self.k.shape[1]

    @property
    def max_len(self) -> int:
        return self.k.shape[3]

    @property
    def lengths(self) -> torch.Tensor:
        """(batch,) long: valid slots per row. Assign (a tensor or a list) to roll back."""
        return self._lengths

    @lengths.setter
    def lengths(self, value) -> None:
        value = torch.as_tensor(value, dtype=torch.long, device=self._lengths.device)
        if value is self._lengths:
            return
        value = value.expand(self.batch_size) if value.dim() == 0 else value
        if value.shape != self._lengths.shape:
            raise ValueError(f"cache.lengths must have shape ({self.batch_size},), got {tuple(value.shape)}.")
        lo, hi = torch.stack(value.aminmax()).tolist()         # one host sync: set once per sampler step
        if lo < 0 or hi > self.max_len:
            raise ValueError(f"cache.lengths must lie in 0..{self.max_len}, got {value.tolist()}.")
        self._lengths.copy_(value)

    def reset(self) -> None:
        self._lengths.zero_()


# ---------------------------------------------------------------------------------------------
# The network

class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    if not _HAS_RMS_NORM:                   # torch < 2.4
        xf = x.float()
        return weight * (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    if x.dtype == torch.float32:            # one call instead of five: small models are op-bound
        return F.rms_norm(x, weight.shape, weight, eps)
    # Statistics in fp32, then back to the activation dtype before the weight (as the reference).
    return weight * F.rms_norm(x.float(), weight.shape, eps=eps).to(x.dtype)


_HAS_RMS_NORM = hasattr(F, "rms_norm")


def rms_norm_mirrored(x: torch.Tensor, weight_twice: torch.Tensor, eps: float) -> torch.Tensor:
    """fp32 RMSNorm in three kernels, for small models' decode steps: on CPU `F.rms_norm` is a
    composite of about eight ops while `F.layer_norm` is one kernel, and the LayerNorm of [x, -x]
    is exactly RMSNorm (its mean is 0 and its variance is mean(x^2)). weight_twice: cat(w, w)."""
    d = x.shape[-1]
    return F.layer_norm(torch.cat((x, -x), dim=-1), (2 * d,), weight_twice, None, eps)[..., :d]


class HeadLayerNorm(nn.Module):
    """Chameleon's qk-norm: LayerNorm over head_dim with no affine, then an affine per head."""

    def __init__(self, num_heads: int, head_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(num_heads, head_dim))
        self.bias = nn.Parameter(torch.zeros(num_heads, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, T, heads, head_dim)
        return head_layer_norm(x, self.weight, self.bias)


def head_layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    x = F.layer_norm(x, x.shape[-1:], eps=QK_NORM_EPS)
    if x.dtype == torch.float32:            # one kernel; in bf16/fp16 keep the reference's two roundings
        return torch.addcmul(bias, x, weight)
    return x * weight + bias


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor) -> torch.Tensor:
    """Rotate-half RoPE, x * cos + rotate_half(x) * sin, with rotate_half(x) = cat(-x2, x1) written
    as roll(x) times a sin whose first half is negated: the same numbers in three kernels, not six."""
    return x * cos + x.roll(x.shape[-1] // 2, dims=-1) * sin_signed


# SDPA maps query head h to kv head h // (heads // kv_heads) itself from torch 2.5 on, without
# copying the cached keys and values once per query head.
_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _negate_first_half(sin: torch.Tensor) -> torch.Tensor:
    half = sin.shape[-1] // 2
    return torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        bias = cfg.attention_bias
        self.q_proj = nn.Linear(cfg.hidden_size, self.num_heads * self.head_dim, bias=bias)
        self.k_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.v_proj = nn.Linear(cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=bias)
        self.q_norm = HeadLayerNorm(self.num_heads, self.head_dim)
        self.k_norm = HeadLayerNorm(self.num_kv_heads, self.head_dim)

    def forward(self, x, rope, layer_cache=None):
        # Token-major (B, T, heads, head_dim) until SDPA: the qk-norm, RoPE and the cache write
        # all want that layout, so nothing is transposed back and forth.
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_norm(self.q_proj(x).view(B, T, H, D))
        k = self.k_norm(self.k_proj(x).view(B, T, KV, D))
        v = self.v_proj(x).view(B, T, KV, D)
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)       # rope: cos, signed sin (B or 1, T, 1, D)
        return self.o_proj(self.attend(q, k, v, layer_cache))

    def attend(self, q, k, v, layer_cache):
        """(B, T, heads or kv_heads, head_dim) queries, new keys and values -> (B, T, heads * head_dim);
        with a cache, the new keys and values are written to it first and all its keys are used."""
        B, T, H, D = q.shape
        if layer_cache is None:
            k, v, mask = k.transpose(1, 2), v.transpose(1, 2), None
        else:
            k_cache, v_cache, rows, slots, key_len, mask, start = layer_cache
            if start is not None:       # every row writes slots start .. start+T-1: a plain copy
                k_cache[:, :, start : start + T] = k.transpose(1, 2)
                v_cache[:, :, start : start + T] = v.transpose(1, 2)
            else:
                k_cache[rows, :, slots] = k.to(k_cache.dtype)   # k_cache[rows, :, slots]: (B, T, KV, D)
                v_cache[rows, :, slots] = v.to(v_cache.dtype)
            k, v = k_cache[:, :, :key_len], v_cache[:, :, :key_len]
            if k.dtype != q.dtype:              # a cache of another dtype (new_cache(dtype=...))
                k, v = k.to(q.dtype), v.to(q.dtype)
        q = q.transpose(1, 2)
        if _SDPA_HAS_GQA:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=layer_cache is None,
                                                 enable_gqa=H != self.num_kv_heads)
        else:
            out = F.scaled_dot_product_attention(q, self._repeat_kv(k), self._repeat_kv(v), attn_mask=mask,
                                                 is_causal=layer_cache is None)
        return out.transpose(1, 2).reshape(B, T, H * D)

    def _repeat_kv(self, x: torch.Tensor) -> torch.Tensor:
        # GQA before torch 2.5: each kv head serves num_heads // num_kv_heads query heads.
        n_rep = self.num_heads // self.num_kv_heads
        if n_rep == 1:
            return x
        B, H, L, D = x.shape
        return x[:, :, None].expand(B, H, n_rep, L, D).reshape(B, H * n_rep, L, D)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# Small models (the demo, tests, the benchmark's tiny one) decode at the speed of kernel launches,
# not of arithmetic: for them, a layer runs on concatenated copies of its q/k/v and gate/up weights
# (see DecoderLayer.fused_forward). Larger models skip the copies: their matmuls dominate, and
# Lumina-mGPT 2.0 (hidden 4096) would pay gigabytes for them.
FUSE_MAX_HIDDEN = 1024


@dataclass
class FusedWeights:
    qkv: torch.Tensor                   # (heads * head_dim + 2 * kv_heads * head_dim, hidden)
    qkv_bias: torch.Tensor | None
    qk_norm: torch.Tensor               # (heads + kv_heads, head_dim)
    qk_norm_bias: torch.Tensor
    o: torch.Tensor                     # the rest: the parameters themselves, no copies
    o_bias: torch.Tensor | None
    gate_up: torch.Tensor               # (2 * intermediate, hidden)
    gate_up_bias: torch.Tensor | None
    down: torch.Tensor
    down_bias: torch.Tensor | None
    norm1: torch.Tensor
    norm2: torch.Tensor
    norm1_twice: torch.Tensor           # cat(norm1, norm1): for rms_norm_mirrored
    norm2_twice: torch.Tensor
    eps: float


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swin_norm = cfg.swin_norm
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

        self.fuse = cfg.hidden_size <= FUSE_MAX_HIDDEN
        self._fused = None          # (key, FusedWeights): see fused_weights

    def forward(self, x, rope, layer_cache=None):
        # (torch.compile fuses by itself, and cannot trace fused_weights' cache key)
        if self.fuse and not torch.is_grad_enabled() and not torch.compiler.is_compiling():
            return self.fused_forward(x, rope, layer_cache)
        if self.swin_norm:
            h = x + self.input_layernorm(self.self_attn(x, rope, layer_cache))
            return h + self.post_attention_layernorm(self.mlp(h))
        h = x + self.self_attn(self.input_layernorm(x), rope, layer_cache)
        return h + self.mlp(self.post_attention_layernorm(h))

    def fused_forward(self, x, rope, layer_cache=None):
        """The same layer with q/k/v as one matmul, gate/up as one, and the qk-norm and RoPE of
        q and k as one call each: about half the kernel launches of `forward`, which is what a
        small model's decode step costs. Plain functions on the weights, not submodule calls, for
        the same reason."""
        w, attn = self.fused_weights(), self.self_attn
        B, T, _ = x.shape
        H, KV, D = attn.num_heads, attn.num_kv_heads, attn.head_dim

        def attention(h):
            qkv = F.linear(h, w.qkv, w.qkv_bias)
            qk = head_layer_norm(qkv[..., :(H + KV) * D].view(B, T, H + KV, D), w.qk_norm, w.qk_norm_bias)
            qk = apply_rope(qk, *rope)
            v = qkv[..., (H + KV) * D:].view(B, T, KV, D)
            return F.linear(attn.attend(qk[:, :, :H], qk[:, :, H:], v, layer_cache), w.o, w.o_bias)

        def feed_forward(h):
            gate, up = F.linear(h, w.gate_up, w.gate_up_bias).chunk(2, dim=-1)
            return F.linear(F.silu(gate) * up, w.down, w.down_bias)

        def norm(h, weight, weight_twice):
            if h.dtype == torch.float32:
                return rms_norm_mirrored(h, weight_twice, w.eps)
            return rms_norm(h, weight, w.eps)       # bf16 / fp16: statistics in fp32

        if self.swin_norm:
            h = x + norm(attention(x), w.norm1, w.norm1_twice)
            return h + norm(feed_forward(h), w.norm2, w.norm2_twice)
        h = x + attention(norm(x, w.norm1, w.norm1_twice))
        return h + feed_forward(norm(h, w.norm2, w.norm2_twice))

    def fused_weights(self) -> FusedWeights:
        """The layer's weights for fused_forward, remade whenever a parameter changes: a new tensor
        (load_state_dict(assign=True), .to(), .half()) or an in-place write (an optimiser step,
        load_state_dict) moves its data pointer or its version counter."""
        # read straight from the modules' parameter dicts: this runs every layer of every step
        modules = (*self._modules.values(), *self.self_attn._modules.values(), *self.mlp._modules.values())
        # Weights created under inference mode (ComfyUI runs nodes, loaders included, in it) have
        # no version counter; they cannot be written in place outside inference mode anyway.
        key = tuple((p.data_ptr(), 0 if p.is_inference() else p._version)
                    for m in modules for p in m._parameters.values() if p is not None)
        if self._fused is None or self._fused[0] != key:
            a, m = self.self_attn, self.mlp

            def cat(*ts):
                return None if ts[0] is None else torch.cat(ts)
            with torch.inference_mode(False), torch.no_grad():   # kept across calls: ordinary tensors
                fused = FusedWeights(
                    qkv=cat(a.q_proj.weight, a.k_proj.weight, a.v_proj.weight),
                    qkv_bias=cat(a.q_proj.bias, a.k_proj.bias, a.v_proj.bias),
                    qk_norm=cat(a.q_norm.weight, a.k_norm.weight), qk_norm_bias=cat(a.q_norm.bias, a.k_norm.bias),
                    o=a.o_proj.weight, o_bias=a.o_proj.bias,
                    gate_up=cat(m.gate_proj.weight, m.up_proj.weight), gate_up_bias=cat(m.gate_proj.bias, m.up_proj.bias),
                    down=m.down_proj.weight, down_bias=m.down_proj.bias,
                    norm1=self.input_layernorm.weight, norm2=self.post_attention_layernorm.weight,
                    norm1_twice=cat(self.input_layernorm.weight, self.input_layernorm.weight),
                    norm2_twice=cat(self.post_attention_layernorm.weight, self.post_attention_layernorm.weight),
                    eps=self.input_layernorm.eps)
            self._fused = (key, fused)
        return self._fused[1]


class Decoder(nn.Module):
    """The body; named `model` inside Uni1Model so that the parameter names are Hugging Face's."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        # On the meta device (from_pretrained) skip the random init: a meta normal_ imports torch's
        # Python decompositions, a one-time 3 s that dominated loading the demo model.
        meta_weight = torch.empty(cfg.vocab_size, cfg.hidden_size) if torch.empty(0).is_meta else None
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, _weight=meta_weight)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class Uni1Model(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.model = Decoder(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        # Plain attributes, not buffers: the model is built on the meta device and only the
        # checkpoint's tensors are materialised. Both follow the logits' device lazily.
        masked_ids = config.masked_token_ids if config.mask_image_logits else []
        self._logit_mask = None             # (vocab,) bool: the logits the reference sets to the minimum
        if masked_ids:
            self._logit_mask = torch.zeros(config.vocab_size, dtype=torch.bool, device="cpu")
            self._logit_mask[masked_ids] = True
        self._rope_tables = {}              # (device, dtype) -> (cos, signed sin), (positions, head_dim)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        cfg = self.config
        return KVCache(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim,
                       dtype=dtype or self.dtype, device=device or self.device)

    def rope(self, positions: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape (B, 1, T, head_dim) for integer positions (B, T); angles in fp32."""
        cfg, d = self.config, self.config.head_dim
        theta = cfg.rope_theta
        pos = positions.float()
        if cfg.rope_scaling == "linear":
            pos = pos / cfg.rope_factor
        elif cfg.rope_scaling == "dynamic":
            # NTK: past the trained length, stretch the base, computed per call from the call's
            # largest position as the reference does (so, as there, cached keys written earlier
            # keep the base of their own call once a sequence outgrows max_position_embeddings).
            seq_len = int(positions.max()) + 1
            if seq_len > cfg.max_position_embeddings:
                ratio = cfg.rope_factor * seq_len / cfg.max_position_embeddings - (cfg.rope_factor - 1)
                theta = theta * ratio ** (d / (d - 2))
        inv_freq = 1.0 / (theta ** (torch.arange(0, d, 2, device=positions.device, dtype=torch.float32) / d))
        freqs = pos[..., None] * inv_freq
        emb = torch.cat((freqs, freqs), dim=-1)[:, None]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    def rope_for(self, positions: torch.Tensor, seq_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin (see apply_rope) of shape (B, T, 1, head_dim) for positions (B, T)
        whose largest is seq_len - 1: rows of a table made once, as `rope` would compute them."""
        cfg = self.config
        if cfg.rope_scaling == "dynamic" and seq_len > cfg.max_position_embeddings:
            cos, sin = self.rope(positions, dtype)       # the base depends on this call's length
            return cos.transpose(1, 2), _negate_first_half(sin.transpose(1, 2))
        key = (positions.device, dtype)
        table = self._rope_tables.get(key)
        if table is None or table[0].shape[0] < seq_len:
            n = 1 << max(8, (seq_len - 1).bit_length())          # grow by doubling
            if cfg.rope_scaling == "dynamic":
                n = min(n, cfg.max_position_embeddings)          # no stretched base in the table
            with torch.inference_mode(False):            # kept across calls, so an ordinary tensor
                cos, sin = self.rope(torch.arange(n, device=positions.device)[None], dtype)
                table = self._rope_tables[key] = (cos[0, 0], _negate_first_half(sin[0, 0]))
        cos, sin = table
        return cos[positions][:, :, None], sin[positions][:, :, None]

    def forward(self, input_ids: torch.Tensor, cache: KVCache | None = None,
                n_valid: torch.Tensor | None = None, last_only: bool = False,
                tree: list[int] | None = None) -> torch.Tensor:
        """(B, T) token ids -> (B, T, vocab) float32 logits. See the module docstring for the cache.

        last_only=True returns (B, 1, vocab): only each row's last real token (index n_valid[b] - 1),
        which is all a prefill needs; it spares a (B, T, vocab) tensor for long prompts.
        tree: (cached calls) the parent index of each of the T tokens, -1 for the first one only;
        the same tree for every row. None: a chain.
        """
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be (batch, tokens), got shape {tuple(input_ids.shape)}.")
        B, T = input_ids.shape
        x = self.model.embed_tokens(input_ids)
        if cache is None:
            if n_valid is not None or tree is not None:
                raise ValueError("n_valid and tree need a cache: without one every row is one plain sequence.")
            rope = self.rope_for(torch.arange(T, device=input_ids.device)[None], T, x.dtype)
            layer_caches = [None] * len(self.model.layers)
        else:
            n_valid, layer_caches, positions, key_len = self._cache_plan(cache, B, T, n_valid, x.dtype, tree)
            rope = self.rope_for(positions, key_len, x.dtype)
        # Without autograd the layers run in inference mode, which skips the version counters and
        # view tracking of every op: ~10% of a small model's decode step. The logits are made
        # outside it, so callers get ordinary tensors.
        with torch.inference_mode(not torch.is_grad_enabled()):
            for layer, layer_cache in zip(self.model.layers, layer_caches):
                x = layer(x, rope, layer_cache)
        if last_only:
            last = (n_valid - 1).clamp(min=0) if cache is not None else torch.full((B,), T - 1)
            x = x[torch.arange(B, device=x.device), last.to(x.device)][:, None]
        logits = self.lm_head(self.model.norm(x)).float()
        if self._logit_mask is not None:
            if self._logit_mask.device != logits.device:
                self._logit_mask = self._logit_mask.to(logits.device)
            logits.masked_fill_(self._logit_mask, torch.finfo(logits.dtype).min)
        if cache is not None:
            cache.lengths.add_(n_valid)
        return logits

    def _cache_plan(self, cache: KVCache, B: int, T: int, n_valid, dtype: torch.dtype, tree=None):
        """RoPE positions (= slots, for a chain), key length and mask for one cached call; the keys
        are cut at max(lengths) + T."""
        if cache.batch_size != B:
            raise ValueError(f"input_ids has {B} rows but the cache was made for {cache.batch_size}.")
        lengths = cache.lengths
        if n_valid is None:
            n_valid = torch.full((B,), T, dtype=torch.long, device=lengths.device)
        else:
            n_valid = torch.as_tensor(n_valid, dtype=torch.long, device=lengths.device)
            if n_valid.shape != (B,):
                raise ValueError(f"n_valid must have shape ({B},), got {tuple(n_valid.shape)}.")
        # the one host sync per call: where the keys end, whether a mask is needed, a check of n_valid
        shortest, longest, n_min, n_max = torch.stack([*lengths.aminmax(), *n_valid.aminmax()]).tolist()
        if n_min < 0 or n_max > T:
            raise ValueError(f"n_valid must lie in 0..{T} (the window length), got {n_valid.tolist()}.")
        key_len = longest + T
        if key_len > cache.max_len:
            raise ValueError(f"the cache holds {cache.max_len} slots but this call needs {key_len} "
                             f"(longest row {key_len - T} + {T} new tokens). Fix: make the cache with "
                             "new_cache(batch_size, max_len) large enough for the prompt, the image and one window.")
        steps = torch.arange(T, device=lengths.device)
        slots = lengths[:, None] + steps[None, :]                              # (B, T) = RoPE positions
        rows = torch.arange(B, device=lengths.device)[:, None]
        positions = slots
        if tree is not None:
            depth, sees = tree_layout(tree, T)
            depth, sees = depth.to(lengths.device), sees.to(lengths.device)
            positions = lengths[:, None] + depth[None, :]
            # query t sees the cache (slots < lengths[b]) and the window slots of its ancestors
            rel = torch.arange(key_len, device=lengths.device)[None, :] - lengths[:, None]      # (B, key_len)
            in_window = (rel >= 0) & (rel < T)
            visible = sees[:, rel.clamp(0, T - 1)].permute(1, 0, 2) & in_window[:, None, :]   # (B, T, key_len)
            visible = (visible | (rel < 0)[:, None, :])[:, None]
            mask = torch.full(visible.shape, float("-inf"), dtype=dtype, device=lengths.device)
            mask.masked_fill_(visible, 0.0)
        elif T == 1 and shortest == longest:
            mask = None                 # one query per row, and every row sees all key_len slots
        else:
            # query t of row b sees slots 0 .. lengths[b] + t; stale slots above are never visible.
            # Additive, made once per call (SDPA would turn a bool mask into this in every layer).
            visible = torch.arange(key_len, device=lengths.device)[None, None, None, :] <= slots[:, None, :, None]
            mask = torch.full(visible.shape, float("-inf"), dtype=dtype, device=lengths.device)
            mask.masked_fill_(visible, 0.0)
        # rows of one length (plain AR without guidance, a lone image) write their new keys with a
        # slice copy, several times cheaper than the scatter that ragged rows need
        start = shortest if shortest == longest else None
        layer_caches = [(k, v, rows, slots, key_len, mask, start)
                        for k, v in zip(cache.k.unbind(0), cache.v.unbind(0))]
        return n_valid, layer_caches, positions, key_len

    # -----------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, dtype: str | torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None) -> Uni1Model:
        """Load a checkpoint folder, 'demo' or a Hugging Face repo id.

        The network is built on the meta device and every tensor is read from its file straight
        onto `device` and put in place, so the weights exist once. Everything is checked before
        anything is read: a missing, unexpected or wrongly shaped key is an error naming the file
        and the key.
        """
        folder = resolve_model_dir(path_or_repo_id, cache_dir=cache_dir)
        config = ModelConfig.from_file(folder / "config.json")
        dtype = parse_dtype(dtype, config)
        device = torch.device(device)
        with torch.device("meta"):
            model = cls(config)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        if config.tie_word_embeddings:
            expected.pop("lm_head.weight", None)
        entries = list_safetensors_dir(folder)
        plan = _check_keys(entries, expected, config, folder)
        tensors = read_tensors(plan, device=device, dtype=dtype)
        state = {key: _expand_qk_norm(key, t, expected[key]) for key, t in tensors.items()}
        model.load_state_dict(state, strict=not config.tie_word_embeddings, assign=True)
        if config.tie_word_embeddings:
            model.lm_head.weight = model.model.embed_tokens.weight
        model.requires_grad_(False)
        return model.eval()


    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json (the raw config) and model.safetensors: a folder `from_pretrained` reads."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config.pop("dtype", None)
        config["torch_dtype"] = str(self.dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        if self.config.tie_word_embeddings:
            state.pop("lm_head.weight")          # the same tensor as the embedding
        save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
        return folder


def tree_layout(parents, T: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Depth (T,) and ancestor-or-self matrix (T, T) bool of a token tree given by parent indices."""
    return _tree_layout(tuple(int(p) for p in parents), T)


@functools.lru_cache(maxsize=64)         # a sampler reuses a handful of trees, once per forward
def _tree_layout(parents: tuple[int, ...], T: int) -> tuple[torch.Tensor, torch.Tensor]:
    if len(parents) != T or parents[:1] != (-1,) or any(not 0 <= p < t for t, p in enumerate(parents) if t):
        raise ValueError(f"tree must give each of the {T} window tokens a parent index before it "
                         f"(-1 for the first token only), got {list(parents)}")
    depth = [0] * T
    sees = torch.zeros(T, T, dtype=torch.bool)
    for t, p in enumerate(parents):
        if t:
            depth[t] = depth[p] + 1
            sees[t] = sees[p]
        sees[t, t] = True
    return torch.tensor(depth), sees


def _is_qk_norm(key: str) -> bool:
    return key.endswith(("self_attn.q_norm.weight", "self_attn.q_norm.bias",
                         "self_attn.k_norm.weight", "self_attn.k_norm.bias"))


def _check_keys(entries, expected: dict, config: ModelConfig, folder: Path) -> dict:
    """The entries to load, after checking names and shapes against the network."""
    for key, entry in entries.items():
        if key in expected or key.startswith(IGNORED_KEY_PREFIXES):
            continue
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue          # tied to the embedding: the file may hold a copy
        raise CheckpointError(f"{entry.file} holds {key!r}, which is not a parameter of the Chameleon "
                              "network described by config.json. Fix: check that config.json belongs to "
                              "these weights (layer count, biases, tie_word_embeddings).")
    missing = [k for k in expected if k not in entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"the weights in {folder} lack {missing[0]!r}{more}. Fix: download every shard "
                              "of the checkpoint again; config.json and the weights must belong together.")
    mp = config.model_parallel_size
    for key, shape in expected.items():
        got = entries[key].shape
        if got == shape:
            continue
        if _is_qk_norm(key) and got == (mp, shape[1]) and shape[0] % mp == 0:
            continue          # per-shard qk-norm affine, expanded at load time
        accepted = f"{shape} or ({mp}, {shape[1]})" if _is_qk_norm(key) else f"{shape}"
        raise CheckpointError(f"{entries[key].file}: {key!r} has shape {got}, expected {accepted} from "
                              "config.json. Fix: check that config.json belongs to these weights.")
    return {k: entries[k] for k in expected}


def _expand_qk_norm(key: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    # Row s of a per-shard affine serves heads s*n .. s*n + n-1, n = heads // model_parallel_size.
    if _is_qk_norm(key) and tuple(t.shape) != shape:
        t = t.repeat_interleave(shape[0] // t.shape[0], dim=0)
    return t
