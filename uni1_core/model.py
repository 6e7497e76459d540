"""The decoder of Lumina-mGPT 2.0 (Chameleon family) and of Qwen2 / Qwen3 text models: one
network, one forward path, chosen by config.json's model_type; with a static KV cache.

    model = Uni1Model.from_pretrained("Alpha-VLLM/Lumina-mGPT-2.0", dtype=torch.bfloat16, device="cuda")
    logits = model(input_ids)                           # (B, T) -> (B, T, vocab) float32, no cache
    model = Uni1Model.from_pretrained(folder, quantize="int8")   # int8 linears, streamed (quantized_fill.py)

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

Per layer (pre-norm; Chameleon's `swin_norm` moves the norms after the sublayers):

    h   = x + Attn(RMSNorm(x))           swin:  h   = x + RMSNorm(Attn(x))
    out = h + SwiGLU(RMSNorm(h))                out = h + RMSNorm(SwiGLU(h))

Attention is GQA; q and k are normalised per head over head_dim, then rotated by RoPE
(rotate-half layout). The qk-norm depends on the family:
  - chameleon: LayerNorm without affine, then an affine per head (weights (heads, head_dim)).
    Checkpoints of the release store that affine per model-parallel shard, (model_parallel_size,
    head_dim); `from_pretrained` expands it to one row per head, as the reference does.
  - qwen3: RMSNorm with one weight (head_dim,) for all query heads and one for all key heads.
  - qwen2: none; q/k/v have biases instead.
Config also gives head_dim (else hidden_size // heads), tied embeddings and the RoPE base.
Chameleon's image-logit masking and its `model.vqmodel.*` keys concern Chameleon only.

Layout: gpt-fast's. Each layer holds `attention.wqkv` (q, k, v rows), `attention.wo`,
`attention.qk_norm`, `feed_forward.w13` (gate, up rows) and `feed_forward.w2`: plain nn.Linear
modules (a weight-only quantiser swaps them; a fused matrix quantises as one). state_dict() and
load_state_dict() speak the Hugging Face names (`model.layers.0.self_attn.q_proj.weight`, ...),
so checkpoint folders load and save as they are (see hf_layout).

Speed: a small model's decode step costs kernel launches, not arithmetic. Hence the fused
matmuls; q and k normalised and rotated as one tensor; fp32 RMSNorm in three kernels
(rms_norm_mirrored); without autograd, the layers run in inference mode; RoPE angles come from a
table made once per device and dtype; GQA is left to SDPA (enable_gqa) instead of copying the
cached keys per head; the cache mask is made once per call (and skipped for one token per row at
equal lengths). Training (autograd) runs the same code.
"""
from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .limits import resolve_device
from .checkpoint import CheckpointError, list_safetensors_dir, read_tensors, resolve_model_dir
from .quantize import DEFAULT_GROUP_SIZE
from .quantized_fill import fill_quantized, read_spec

QK_NORM_EPS = 1e-5                      # Chameleon's qk LayerNorm: fixed, not in the config
IGNORED_KEY_PREFIXES = ("model.vqmodel.",)   # Chameleon's unused VQ-VAE: belongs to nothing here
SUPPORTED_MODEL_TYPES = ("chameleon", "qwen2", "qwen3")
QK_NORMS = ("layernorm", "rmsnorm", "none")
# What each family fixes that its config.json does not say: (qk-norm, q/k/v bias, o bias);
# None means "attention_bias".
FAMILY_DEFAULTS = {"chameleon": ("layernorm", None, None),      # per-head LayerNorm with affine
                   "qwen2": ("none", True, False),              # biased q/k/v, no qk-norm
                   "qwen3": ("rmsnorm", None, None)}            # per-head RMSNorm over head_dim
_DTYPES = {"float32": torch.float32, "float": torch.float32, "fp32": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "half": torch.float16, "fp16": torch.float16}
FIX_CONFIG = " Fix: use the checkpoint's own config.json."
_COUNTS = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
           "num_key_value_heads", "head_dim", "max_position_embeddings", "model_parallel_size")


@dataclass
class ModelConfig:
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int | None = None           # None: hidden_size // num_attention_heads
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    rope_scaling: str | None = None       # None, "linear" or "dynamic"
    rope_factor: float = 1.0
    rms_norm_eps: float = 1e-5
    model_parallel_size: int = 1
    swin_norm: bool = False
    model_type: str = "chameleon"
    qk_norm: str | None = None            # "layernorm", "rmsnorm" or "none"; None: the family's
    mask_image_logits: bool = True        # Chameleon only: mask the IMGIMG ids' logits
    attention_bias: bool = False
    qkv_bias: bool | None = None          # None: the family's (attention_bias, or True for Qwen2)
    o_bias: bool | None = None            # None: the family's (attention_bias, or False for Qwen2)
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    vocabulary_map: dict = field(default_factory=dict)
    bos_token_id: int | None = None
    eos_token_id: int | list | None = None
    pad_token_id: int | None = None
    torch_dtype: str | None = None
    raw: dict = field(default_factory=dict, repr=False)   # the whole config.json, for extra sections ("uni1")

    def __post_init__(self):
        if self.model_type not in SUPPORTED_MODEL_TYPES:
            raise unsupported_model_type(self.model_type)
        qk_norm, qkv_bias, o_bias = FAMILY_DEFAULTS[self.model_type]
        self.qk_norm = self.qk_norm or qk_norm
        self.qkv_bias = bool(_first(self.qkv_bias, qkv_bias, self.attention_bias))
        self.o_bias = bool(_first(self.o_bias, o_bias, self.attention_bias))
        self._check_counts()
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise CheckpointError(f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                                      f"{self.num_attention_heads}, and the config gives no head_dim. Fix: use "
                                      "the checkpoint's own config.json.")
            self.head_dim = self.hidden_size // self.num_attention_heads
        self._check_shapes()

    def _check_counts(self) -> None:
        """Counts positive, numbers finite: a clear error instead of a traceback later."""
        for name in _COUNTS:
            value = getattr(self, name)
            if name == "head_dim" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise CheckpointError(f"config {name} must be a positive whole number, got {value!r}. Fix: use "
                                      "the checkpoint's own config.json.")
        for name in ("rms_norm_eps", "rope_theta", "rope_factor"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
                raise CheckpointError(f"config {name} must be a positive number, got {value!r}. Fix: use the "
                                      "checkpoint's own config.json.")

    def _check_shapes(self) -> None:
        if self.num_attention_heads % self.num_key_value_heads:
            raise CheckpointError(f"num_attention_heads {self.num_attention_heads} is not a multiple of "
                                  f"num_key_value_heads {self.num_key_value_heads}." + FIX_CONFIG)
        if self.head_dim % 2:
            raise CheckpointError(f"head_dim {self.head_dim} is odd; rotary embeddings need an even head_dim."
                                  + FIX_CONFIG)
        if self.qk_norm not in QK_NORMS:
            raise CheckpointError(f"qk_norm {self.qk_norm!r} is not one of {QK_NORMS}." + FIX_CONFIG)
        if not isinstance(self.vocabulary_map, dict):
            raise CheckpointError(f"config vocabulary_map must map token names to ids, got "
                                  f"{type(self.vocabulary_map).__name__}. Fix: use the checkpoint's own config.json.")

    @property
    def masked_token_ids(self) -> list[int]:
        """Chameleon: ids whose logits the reference sets to the dtype minimum (names starting with IMGIMG)."""
        if self.model_type != "chameleon" or not self.mask_image_logits:
            return []
        return sorted(int(i) for name, i in self.vocabulary_map.items()
                      if isinstance(name, str) and name.startswith("IMGIMG") and isinstance(i, int))

    def to_dict(self) -> dict:
        """The config.json form: the raw dict with this dataclass's fields written over it."""
        out = dict(self.raw)
        out.pop("rope_parameters", None)
        for f in fields(self):
            if f.name not in ("raw", "rope_scaling", "rope_factor"):
                out[f.name] = getattr(self, f.name)
        out["rope_scaling"] = {"type": self.rope_scaling, "factor": self.rope_factor} if self.rope_scaling else None
        return out

    @classmethod
    def from_file(cls, path: str | os.PathLike) -> ModelConfig:
        path = Path(path)
        try:
            raw = json.loads(path.read_text())
        except (OSError, ValueError, RecursionError) as err:
            raise CheckpointError(f"{path} is not readable JSON ({type(err).__name__}: {err}). Fix: download "
                                  "config.json of the checkpoint again.") from err
        try:
            return cls.from_dict(raw)
        except CheckpointError as err:
            raise CheckpointError(f"{path}: {err}") from None

    @classmethod
    def from_dict(cls, raw: dict) -> ModelConfig:
        if not isinstance(raw, dict):
            raise CheckpointError(f"config must be a JSON object of settings, got {type(raw).__name__} "
                                  f"{_short(raw)}. Fix: use the checkpoint's own config.json.")
        model_type = raw.get("model_type")
        if model_type not in SUPPORTED_MODEL_TYPES:
            raise unsupported_model_type(model_type)
        required = ["vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads"]
        missing = [k for k in required if k not in raw]
        if missing:
            raise CheckpointError(f"config lacks {missing}. Fix: use the checkpoint's own config.json.")
        if raw.get("hidden_act", "silu") != "silu":
            raise CheckpointError(f"hidden_act {raw['hidden_act']!r} is not supported (these families use 'silu')."
                                  + FIX_CONFIG)
        _check_full_attention(raw)
        heads = _whole(raw, "num_attention_heads")
        scaling, factor, theta = _rope_settings(raw)
        return cls(
            vocab_size=_whole(raw, "vocab_size"),
            hidden_size=_whole(raw, "hidden_size"),
            intermediate_size=_whole(raw, "intermediate_size"),
            num_hidden_layers=_whole(raw, "num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=_whole(raw, "num_key_value_heads", heads),
            head_dim=_whole(raw, "head_dim", None),
            max_position_embeddings=_whole(raw, "max_position_embeddings", 4096),
            rope_theta=theta, rope_scaling=scaling, rope_factor=factor,
            rms_norm_eps=_number(raw, "rms_norm_eps", 1e-5),
            model_parallel_size=_whole(raw, "model_parallel_size", 1),
            swin_norm=bool(raw.get("swin_norm", False)),
            model_type=model_type,
            qk_norm=raw.get("qk_norm"),
            mask_image_logits=bool(raw.get("mask_image_logits", True)),
            attention_bias=bool(raw.get("attention_bias", False)),
            qkv_bias=raw.get("qkv_bias"),
            o_bias=raw.get("o_bias"),
            mlp_bias=bool(raw.get("mlp_bias", False)),
            tie_word_embeddings=bool(raw.get("tie_word_embeddings", False)),
            vocabulary_map=raw.get("vocabulary_map") or {},
            bos_token_id=raw.get("bos_token_id"),
            eos_token_id=raw.get("eos_token_id"),
            pad_token_id=raw.get("pad_token_id"),
            torch_dtype=raw.get("torch_dtype") or raw.get("dtype"),
            raw=raw,
        )


def unsupported_model_type(model_type) -> CheckpointError:
    return CheckpointError(
        f"config has model_type {model_type!r:.60}, but uni1_core runs only {', '.join(SUPPORTED_MODEL_TYPES)} "
        "checkpoints: Chameleon-family image models such as Alpha-VLLM/Lumina-mGPT-2.0, and Qwen2 / Qwen2.5 / "
        "Qwen3 text models. Fix: pass the folder or repo id of such a checkpoint.")


def _first(*values):
    return next(v for v in values if v is not None)


def _short(value) -> str:
    """A config value as config.json writes it, cut to a readable length."""
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _whole(raw: dict, key: str, default=...):
    """raw[key] as an int (JSON may write 32.0), or the default when absent or null."""
    value = raw.get(key)
    if value is None:
        if default is ...:
            raise CheckpointError(f"config {key} is null; it must be a positive whole number." + FIX_CONFIG)
        return default
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise CheckpointError(f"config {key} must be a positive whole number, got {_short(value)}. Fix: use the "
                              "checkpoint's own config.json.")
    return value


def _number(raw: dict, key: str, default: float) -> float:
    value = raw.get(key)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise CheckpointError(f"config {key} must be a number, got {_short(value)}." + FIX_CONFIG)
    return float(value)


def _check_full_attention(raw: dict) -> None:
    """Qwen configs may ask for sliding-window layers, which this network does not have."""
    kinds = raw.get("layer_types") or []
    windowed = raw.get("use_sliding_window") or any(k != "full_attention" for k in kinds if isinstance(k, str))
    if windowed:
        raise CheckpointError("config asks for sliding-window attention (use_sliding_window / layer_types), "
                              "which uni1_core does not implement; every layer attends to the whole context. "
                              "Fix: use a checkpoint with full attention (use_sliding_window: false).")


def _rope_settings(raw: dict) -> tuple[str | None, float, float]:
    """(scaling type, factor, theta) from either the classic keys (rope_theta, rope_scaling)
    or the newer transformers form (rope_parameters: {rope_type, rope_theta, factor})."""
    params = raw.get("rope_parameters") or raw.get("rope_scaling") or {}
    if not isinstance(params, dict):
        raise CheckpointError(f"config rope_parameters / rope_scaling must be an object, got {_short(params)}."
                              + FIX_CONFIG)
    theta = _number(params, "rope_theta", None) or _number(raw, "rope_theta", 10000.0)
    kind = params.get("rope_type", params.get("type", "default"))
    if kind in (None, "default"):
        return None, 1.0, theta
    if kind in ("linear", "dynamic"):
        return kind, _number(params, "factor", 1.0), theta
    raise CheckpointError(f"rope scaling {kind!r} is not supported; uni1_core implements none, 'linear' and "
                          "'dynamic'. Fix: use a checkpoint whose config has no other rope scaling.")


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

    dtype torch.int8 stores each key and value vector (one token, one head) as int8 with one
    fp32 scale, symmetric (scale = max |x| / 127), in k_scale, v_scale (layers, batch, kv_heads,
    max_len, 1), and dequantises on read: half the memory of bf16 at head_dim 128, plus 3 % for
    the scales (the layout of torchao's quantised KV cache). Rollback, ragged rows and tree
    windows work unchanged: a slot's scale is written and moved with its vector.
    """

    def __init__(self, num_layers: int, batch_size: int, num_kv_heads: int, max_len: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device | str):
        shape = (num_layers, batch_size, num_kv_heads, max_len, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.k_scale = self.v_scale = None
        if dtype == torch.int8:
            self.k_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
            self.v_scale = torch.zeros(shape[:-1] + (1,), dtype=torch.float32, device=device)
        elif not dtype.is_floating_point:
            raise ValueError(f"a KV cache holds a float dtype or torch.int8, not {dtype}.")
        self._lengths = torch.zeros(batch_size, dtype=torch.long, device=device)

    @property
    def quantized(self) -> bool:
        return self.k_scale is not None

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys, values and scales."""
        return sum(t.numel() * t.element_size() for t in self._tensors())

    def _tensors(self) -> list[torch.Tensor]:
        return [self.k, self.v] + ([self.k_scale, self.v_scale] if self.quantized else [])

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor, rows, slots, start: int | None) -> None:
        """Store new keys and values (B, T, kv_heads, head_dim) of one layer: row b's token t in slot
        slots[b, t] (rows: arange(B)[:, None]), or, when every row starts at slot `start`, in
        start .. start+T-1 (a slice copy, several times cheaper than the scatter)."""
        if not self.quantized:
            _put(self.k[layer], k, rows, slots, start)
            _put(self.v[layer], v, rows, slots, start)
            return
        for x, store, scales in ((k, self.k, self.k_scale), (v, self.v, self.v_scale)):
            q, scale = quantize_per_vector(x)
            _put(store[layer], q, rows, slots, start)
            _put(scales[layer], scale, rows, slots, start)

    def read(self, layer: int, key_len: int, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of slots 0 .. key_len-1 of one layer, (B, kv_heads, key_len, head_dim), in dtype."""
        k, v = self.k[layer, :, :, :key_len], self.v[layer, :, :, :key_len]
        if self.quantized:
            # int8 -> dtype is exact; the in-place product with the fp32 scales is computed in fp32
            # and rounded once, as a product in fp32 then a cast would be, but without the two
            # fp32 copies of a layer's keys and values (0.6 GB at the 7B's 768x768 cache)
            k = k.to(dtype).mul_(self.k_scale[layer, :, :, :key_len])
            v = v.to(dtype).mul_(self.v_scale[layer, :, :, :key_len])
        elif k.dtype != dtype:              # a cache of another float dtype (new_cache(dtype=...))
            k, v = k.to(dtype), v.to(dtype)
        return k, v

    def move_slots(self, rows_mask: torch.Tensor, dst: torch.Tensor, src: torch.Tensor) -> None:
        """Copy every layer's key and value (and scale) at slot src[r] to slot dst[r], for the rows
        where rows_mask (B,) bool; no host sync (other rows copy a slot onto itself)."""
        src = torch.where(rows_mask, src, dst)
        r = torch.arange(len(dst), device=dst.device)
        for t in self._tensors():
            t[:, r, :, dst] = t[:, r, :, src]

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


def _put(store: torch.Tensor, x: torch.Tensor, rows, slots, start: int | None) -> None:
    """store (B, kv_heads, max_len, d) <- x (B, T, kv_heads, d) at the slots of KVCache.write."""
    if start is not None:
        store[:, :, start : start + x.shape[1]] = x.transpose(1, 2)
    else:
        store[rows, :, slots] = x.to(store.dtype)           # store[rows, :, slots]: (B, T, kv_heads, d)


def quantize_per_vector(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 over the last dimension: x ~= q * scale, |q| <= 127, scale (..., 1) fp32."""
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny) / 127
    return (x / scale).round().clamp_(-127, 127).to(torch.int8), scale


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


class HeadRMSNorm(nn.Module):
    """Qwen3's qk-norm: RMSNorm over head_dim, one weight for all query heads and one for all key
    heads. weight: (2, head_dim), rows q and k (Hugging Face: self_attn.q_norm / k_norm.weight)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, eps: float):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.eps = num_heads, num_kv_heads, eps
        self.weight = nn.Parameter(torch.ones(2, head_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, T, heads + kv_heads, head_dim)
        w = self.weight
        rows = torch.cat((w[:1].expand(self.num_heads, -1), w[1:].expand(self.num_kv_heads, -1)))
        # statistics in fp32, back to the activation dtype before the weight (as Qwen3RMSNorm)
        return F.rms_norm(x.float(), x.shape[-1:], eps=self.eps).to(x.dtype) * rows


def make_qk_norm(cfg: ModelConfig) -> nn.Module | None:
    """The qk-norm of one layer, over the query and key heads together, or None."""
    H, KV, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    if cfg.qk_norm == "layernorm":
        return HeadLayerNorm(H + KV, D)
    if cfg.qk_norm == "rmsnorm":
        return HeadRMSNorm(H, KV, D, cfg.rms_norm_eps)
    return None


class Attention(nn.Module):
    """GQA with q, k and v as one matmul (wqkv), an optional qk-norm, RoPE and SDPA."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        self.wqkv = nn.Linear(cfg.hidden_size, (H + 2 * KV) * D, bias=cfg.qkv_bias)
        self.wo = nn.Linear(H * D, cfg.hidden_size, bias=cfg.o_bias)
        self.qk_norm = make_qk_norm(cfg)

    def forward(self, x, rope, layer_cache=None):
        # Token-major (B, T, heads, head_dim) until SDPA: the qk-norm, RoPE and the cache write
        # all want that layout. q and k stay one tensor through the norm and RoPE (one call each).
        B, T, _ = x.shape
        H, KV, D = self.num_heads, self.num_kv_heads, self.head_dim
        qkv = self.wqkv(x)
        qk = qkv[..., :(H + KV) * D].view(B, T, H + KV, D)
        if self.qk_norm is not None:
            qk = self.qk_norm(qk)
        qk = apply_rope(qk, *rope)                      # rope: cos, signed sin (B or 1, T, 1, D)
        v = qkv[..., (H + KV) * D:].view(B, T, KV, D)
        return self.wo(self.attend(qk[:, :, :H], qk[:, :, H:], v, layer_cache))

    def attend(self, q, k, v, layer_cache):
        """(B, T, heads or kv_heads, head_dim) queries, new keys and values -> (B, T, heads * head_dim);
        with a cache, the new keys and values are written to it first and all its keys are used."""
        B, T, H, D = q.shape
        if layer_cache is None:
            k, v, mask = k.transpose(1, 2), v.transpose(1, 2), None
        else:
            cache, layer, rows, slots, key_len, mask, start = layer_cache
            cache.write(layer, k, v, rows, slots, start)
            k, v = cache.read(layer, key_len, q.dtype)
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


class FeedForward(nn.Module):
    """SwiGLU with gate and up as one matmul (w13, rows gate then up), then down (w2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.w13 = nn.Linear(cfg.hidden_size, 2 * cfg.intermediate_size, bias=cfg.mlp_bias)
        self.w2 = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=cfg.mlp_bias)

    def forward(self, x):
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


def layer_norm_call(x: torch.Tensor, norm: RMSNorm) -> torch.Tensor:
    """A decoder layer's RMSNorm: in fp32 the three-kernel form (rms_norm_mirrored), which a small
    model's decode step notices; in bf16/fp16 the reference's fp32 statistics."""
    if x.dtype == torch.float32:
        return rms_norm_mirrored(x, torch.cat((norm.weight, norm.weight)), norm.eps)
    return rms_norm(x, norm.weight, norm.eps)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.swin_norm = cfg.swin_norm
        self.attention = Attention(cfg)
        self.feed_forward = FeedForward(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        hf = hf_layout(cfg)
        self._register_state_dict_hook(functools.partial(_to_hf_names, layout=hf))
        self._register_load_state_dict_pre_hook(functools.partial(_from_hf_names, layout=hf))

    def forward(self, x, rope, layer_cache=None):
        norm1, norm2 = self.input_layernorm, self.post_attention_layernorm
        if self.swin_norm:
            h = x + layer_norm_call(self.attention(x, rope, layer_cache), norm1)
            return h + layer_norm_call(self.feed_forward(h), norm2)
        h = x + self.attention(layer_norm_call(x, norm1), rope, layer_cache)
        return h + self.feed_forward(layer_norm_call(h, norm2))


# ---------------------------------------------------------------------------------------------
# Hugging Face names. A layer stores q/k/v, gate/up and the two qk-norms fused (one matmul, one
# quantised matrix each); checkpoints keep the Hugging Face names and layout. state_dict() splits
# the fused tensors into views named as there, and load_state_dict() accepts those names and
# concatenates them. Only float `weight`/`bias` entries are mapped: a module a quantiser swapped
# in keeps its own entries under the internal name.

def hf_layout(cfg: ModelConfig) -> dict[str, tuple[tuple[str, ...], tuple[int, ...] | None]]:
    """internal module -> (Hugging Face modules, rows of each along dim 0; None: a plain rename),
    in Hugging Face's order. A row count of 0 marks a 1-D tensor stored as one row (Qwen3's
    qk-norm weights)."""
    H, KV, D, I = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.intermediate_size
    qk_norm = {"layernorm": (H, KV), "rmsnorm": (0, 0)}.get(cfg.qk_norm)
    layout = {
        "attention.wqkv": (("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"), (H * D, KV * D, KV * D)),
        "attention.wo": (("self_attn.o_proj",), None),
        "attention.qk_norm": (("self_attn.q_norm", "self_attn.k_norm"), qk_norm),
        "feed_forward.w13": (("mlp.gate_proj", "mlp.up_proj"), (I, I)),
        "feed_forward.w2": (("mlp.down_proj",), None),
    }
    if qk_norm is None:
        del layout["attention.qk_norm"]
    return layout


def _to_hf_names(module, state_dict, prefix, local_metadata, layout):
    # This layer's entries are the last ones; they are put back in Hugging Face's order (the
    # order of transformers' own state_dict), renamed and split, then the rest (the norms).
    mine = {k: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(prefix)]}
    for internal, (names, rows) in layout.items():
        parts = {}
        for param in ("weight", "bias"):
            t = mine.get(f"{prefix}{internal}.{param}")
            if t is None or not t.is_floating_point():
                continue
            del mine[f"{prefix}{internal}.{param}"]
            if rows is None:
                parts[param] = [t]
            else:
                parts[param] = [part if n else part[0] for part, n in zip(t.split([n or 1 for n in rows]), rows)]
        for i, name in enumerate(names):
            for param, split in parts.items():
                state_dict[f"{prefix}{name}.{param}"] = split[i]
    state_dict.update(mine)


def _from_hf_names(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs, layout):
    for internal, (names, rows) in layout.items():
        for param in ("weight", "bias"):
            keys = [f"{prefix}{name}.{param}" for name in names]
            if not all(k in state_dict for k in keys):
                continue        # internal names (or nothing): load_state_dict reports what is missing
            parts = [state_dict.pop(k) for k in keys]
            if rows is None:
                fused = parts[0]
            else:
                fused = torch.cat([p if n else p[None] for p, n in zip(parts, rows)])
            state_dict[f"{prefix}{internal}.{param}"] = fused


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
        masked_ids = config.masked_token_ids
        # the ids whose logits the reference sets to the minimum (Chameleon's IMGIMG names), or None
        self._masked_ids = torch.tensor(masked_ids, device="cpu") if masked_ids else None
        self._rope_tables = {}              # (device, dtype) -> (cos, signed sin), (positions, head_dim)

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    @property
    def dtype(self) -> torch.dtype:
        return self.lm_head.weight.dtype

    def new_cache(self, batch_size: int, max_len: int, dtype: torch.dtype | str | None = None,
                  device: torch.device | str | None = None) -> KVCache:
        """A cache for batch_size rows of up to max_len tokens. dtype: None (the model's), a float
        dtype, or torch.int8 / "int8" (int8 vectors with one scale per token and head)."""
        cfg = self.config
        if dtype is None:
            dtype = self.dtype
        elif dtype in ("int8", torch.int8):
            dtype = torch.int8
        else:
            dtype = parse_dtype(dtype)
        return KVCache(cfg.num_hidden_layers, batch_size, cfg.num_key_value_heads, max_len, cfg.head_dim,
                       dtype=dtype, device=device or self.device)

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
        if self._masked_ids is not None:
            if self._masked_ids.device != logits.device:
                self._masked_ids = self._masked_ids.to(logits.device)
            logits.index_fill_(-1, self._masked_ids, torch.finfo(logits.dtype).min)
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
        layer_caches = [(cache, layer, rows, slots, key_len, mask, start) for layer in range(cache.k.shape[0])]
        return n_valid, layer_caches, positions, key_len

    # -----------------------------------------------------------------------------------------
    # Loading

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | os.PathLike, dtype: str | torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", cache_dir: str | os.PathLike | None = None,
                        quantize: str | None = None, group_size: int = DEFAULT_GROUP_SIZE, *, lm_head: str = "image",
                        embedding: str = "host", keep_ids=None) -> Uni1Model:
        """Load a checkpoint folder, 'demo' or a Hugging Face repo id.

        The config is checked against the weight files' headers first (layer count, and every
        shape of one layer, the embedding and the head), so a config that does not belong to the
        weights fails in milliseconds, before any network exists. Then the network is built on the
        meta device, every key is checked (a missing, unexpected or wrongly shaped key is an error
        naming the file and the key), and every tensor is read from its file straight onto
        `device` and put in place, so the weights exist once.

        quantize "int8" | "int4" (group_size for int4) quantises the decoder's linear layers while
        the bf16 weights stream in, one layer at a time (quantized_fill.py); lm_head "image" |
        "full" | "keep" and embedding "host" | "keep" say what happens to those two tables (see
        docs/quantization.md; keep_ids: the rows an image-only head keeps). A pre-quantised folder
        (`python -m uni1_core quantize`, a "quantization" entry in its config.json) loads as it is
        quantised; asking for another setting than it holds is an error.
        """
        device = resolve_device(device)          # a missing CUDA named as such, before any read
        folder = resolve_model_dir(path_or_repo_id, cache_dir=cache_dir, check_config=ModelConfig.from_file)
        config = ModelConfig.from_file(folder / "config.json")
        dtype = parse_dtype(dtype, config)
        spec, prequantised = read_spec(folder, config.raw, quantize, group_size, lm_head, embedding)
        entries = list_safetensors_dir(folder)
        _check_config_against_headers(entries, config, folder)
        with torch.device("meta"):
            model = cls(config)
        if spec is None:
            model._load_float(entries, folder, dtype, device)
        else:
            fill_quantized(model, folder, entries, spec, prequantised, dtype=dtype, device=device,
                           layout=hf_layout(config), expand=_expand_qk_norm, ignored_prefixes=_ignored(config),
                           keep_ids=keep_ids)
        model.requires_grad_(False)
        return model.eval()

    def _load_float(self, entries, folder: Path, dtype: torch.dtype, device: torch.device) -> None:
        """Every key checked against the network, then read and assigned (from_pretrained)."""
        expected = _expected_shapes(self)
        plan = _check_keys(entries, expected, self.config, folder)
        tensors = read_tensors(plan, device=device, dtype=dtype)
        state = {key: _expand_qk_norm(key, t, expected[key]) for key, t in tensors.items()}
        self.load_state_dict(state, strict=not self.config.tie_word_embeddings, assign=True)
        if self.config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def save_pretrained(self, folder: str | os.PathLike) -> Path:
        """Write config.json (the raw config) and model.safetensors: a folder `from_pretrained` reads."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        config = self.config.to_dict()
        config.pop("dtype", None)
        config["torch_dtype"] = str(self.dtype).removeprefix("torch.")
        (folder / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True))
        # q/k/v and gate/up are views of the fused weights: safetensors wants tensors of their own
        state = {k: v.detach().clone() if v._base is not None else v.detach().contiguous()
                 for k, v in self.state_dict().items()}
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


def _expected_shapes(model: Uni1Model) -> dict[str, tuple]:
    """Hugging Face key -> shape, of every tensor a checkpoint of this network holds."""
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)       # the embedding's; a file need not hold a copy
    return expected


def _check_config_against_headers(entries, config: ModelConfig, folder: Path) -> None:
    """The config's counts and shapes against the weight headers, before any network is built: a
    network of one layer on the meta device gives the expected shapes (costs nothing), and the
    layer count is read off the key names."""
    layers = set()
    for key in entries:
        if key.startswith("model.layers."):
            index = key.split(".", 3)[2]
            if index.isdigit():
                layers.add(int(index))
    n = config.num_hidden_layers
    if len(layers) != n or (layers and max(layers) != n - 1):
        held = f"layers 0..{max(layers)} ({len(layers)} in all)" if layers else "no decoder layer"
        first_missing = next((i for i in range(n) if i not in layers), n)
        what = (f"they lack 'model.layers.{first_missing}.*'" if first_missing < n
                else f"'model.layers.{n}.*' and above are unexpected")
        raise CheckpointError(f"config.json says num_hidden_layers {n}, but the weights in {folder} hold {held}: "
                              f"{what}. Fix: use the config.json that came with these weights.")
    with torch.device("meta"):
        probe = Uni1Model(replace(config, num_hidden_layers=1))
    for key, shape in _expected_shapes(probe).items():
        entry = entries.get(key)
        if entry is not None and not _shape_accepted(key, entry.shape, shape, config):
            raise _shape_error(key, entry, shape, config)
        # a missing key is reported by _check_keys, with the full count


def _shape_error(key: str, entry, shape: tuple, config: ModelConfig) -> CheckpointError:
    mp = config.model_parallel_size
    accepted = f"{shape} or ({mp}, {shape[1]})" if _is_qk_norm(key) and len(shape) == 2 else f"{shape}"
    return CheckpointError(f"{entry.file}: {key!r} has shape {entry.shape}, expected {accepted} from config.json "
                           f"(vocab_size {config.vocab_size}, hidden_size {config.hidden_size}, intermediate_size "
                           f"{config.intermediate_size}, {config.num_attention_heads} heads, "
                           f"{config.num_key_value_heads} kv heads, head_dim {config.head_dim}). Fix: check that "
                           "config.json belongs to these weights.")


def _shape_accepted(key: str, got: tuple, shape: tuple, config: ModelConfig) -> bool:
    mp = config.model_parallel_size
    if got == shape:
        return True
    # Chameleon's per-shard qk-norm affine (model_parallel_size, head_dim), expanded at load time
    return (_is_qk_norm(key) and len(shape) == 2 and got == (mp, shape[1]) and shape[0] % mp == 0)


def _is_qk_norm(key: str) -> bool:
    return key.endswith(("self_attn.q_norm.weight", "self_attn.q_norm.bias",
                         "self_attn.k_norm.weight", "self_attn.k_norm.bias"))


def _ignored(config: ModelConfig) -> tuple[str, ...]:
    """Checkpoint key prefixes that belong to no module of the network."""
    return IGNORED_KEY_PREFIXES if config.model_type == "chameleon" else ()


def _check_keys(entries, expected: dict, config: ModelConfig, folder: Path) -> dict:
    """The entries to load, after checking names and shapes against the network."""
    ignored = _ignored(config)
    for key, entry in entries.items():
        if key in expected or (ignored and key.startswith(ignored)):
            continue
        if key == "lm_head.weight" and config.tie_word_embeddings:
            continue          # tied to the embedding: the file may hold a copy
        raise CheckpointError(f"{entry.file} holds {key!r}, which is not a parameter of the {config.model_type} "
                              "network described by config.json. Fix: check that config.json belongs to "
                              "these weights (layer count, biases, tie_word_embeddings).")
    missing = [k for k in expected if k not in entries]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise CheckpointError(f"the weights in {folder} lack {missing[0]!r}{more}. Fix: download every shard "
                              "of the checkpoint again; config.json and the weights must belong together.")
    for key, shape in expected.items():
        got = entries[key].shape
        if _shape_accepted(key, got, shape, config):
            continue
        raise _shape_error(key, entries[key], shape, config)
    return {k: entries[k] for k in expected}


def _expand_qk_norm(key: str, t: torch.Tensor, shape: tuple) -> torch.Tensor:
    # Row s of a per-shard affine serves heads s*n .. s*n + n-1, n = heads // model_parallel_size.
    if _is_qk_norm(key) and tuple(t.shape) != shape:
        t = t.repeat_interleave(shape[0] // t.shape[0], dim=0)
    return t
