"""Weight-only int8 / int4 quantisation of the decoder's linear layers, chosen at load time.

    quantize_model_(model, "int8")                     # every nn.Linear of the decoder, in place
    quantize_model_(model, "int4", group_size=128, lm_head="image", keep_ids=sub_vocab_ids(vocab))
    model = Uni1Model.from_pretrained("folder", quantize="int4")  # streamed: never the whole bf16 model
    save_quantized(model, "out_folder")        # a pre-quantised folder; from_pretrained reads it as it is

Formats (per output row n, input column k):
  int8  symmetric, one scale per output channel:   w[n, k] ~ q[n, k] * scale[n],  q in -127..127
  int4  asymmetric, one (scale, zero) per group of `group_size` input columns:
        w[n, k] ~ (q[n, k] - 8) * scale[n, k // g] + zero[n, k // g],  q in 0..15
        (the zero point is a float, tinygemm's convention, so the CUDA kernel reads it as is).
        Rows whose length is not a multiple of the group are padded with zero columns.

State-dict keys of a quantised linear `<name>` (what a pre-quantised folder holds):
  int8: <name>.weight_int8 (N, K) int8, <name>.weight_scale (N,) float32
  int4: <name>.weight_int4 (N, Kp/2) uint8, two columns per byte (column 2j in the high nibble),
        <name>.weight_scale and <name>.weight_zero (N, Kp/g) bfloat16
  and <name>.bias where the layer has one. An image-only lm_head adds lm_head.row_ids (R,) int64:
  the vocabulary id of each of its R rows. config.json gets a "quantization" entry
  (QuantSpec.to_dict).

Kernels, chosen per call from the device and dtype of the input and what the running torch has:
  CUDA int4  aten._weight_int4pack_mm (tinygemm) on aten._convert_weight_to_int4pack weights
  CPU  int4  aten._weight_int4pack_mm_for_cpu on aten._convert_weight_to_int4pack_for_cpu weights
  CPU  int8  aten._weight_int8pack_mm
  CUDA int8  F.linear(x, q.to(x.dtype)) * scale  (torch.compile fuses the cast)
  otherwise  the weight dequantised for the call and dropped afterwards
A kernel's packed weight replaces the portable one in memory (one copy of the weights); the
portable form is recovered exactly when the state dict is saved (see Int4Linear).

Embedding and lm_head (why: docs/quantization.md). The sampler reads only the image codes and two
structural ids of the logits, so `lm_head="image"` keeps only those rows (67 MB in int8 at the
7B shape instead of 705 MB) and returns the other logits as the dtype minimum, the value the
model already gives masked ids. The embedding is a gather of a few rows per step: `embedding=
"host"` keeps the table off the device: in host memory, or (a quantised load) in the checkpoint
file, from which the rows looked up are read, and sends the rows to the model's device.
"""
from __future__ import annotations

import functools
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

MODES = ("int8", "int4")
GROUP_SIZES = (32, 64, 128, 256)
DEFAULT_GROUP_SIZE = 128
LM_HEAD_CHOICES = ("image", "full", "keep")      # image rows only (quantised), all rows quantised, untouched
EMBEDDING_CHOICES = ("host", "keep")
FORMAT_VERSION = 1
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_TORCH = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])


def _op(name: str):
    """aten op `name` or None: older torch versions lack some (the pack allows torch >= 2.1)."""
    return getattr(torch.ops.aten, name, None)


class QuantizationError(ValueError):
    """A quantisation setting or a quantised checkpoint that cannot be used; says why and the fix."""


# ---------------------------------------------------------------------------------------------
# The arithmetic: quantise, dequantise, nibble packing

ROW_CHUNK = 256      # rows quantised at a time: float32 temporaries of ~ROW_CHUNK x K, not N x K


def _by_rows(fn, w: torch.Tensor, *args):
    """fn over row blocks of w, outputs concatenated along rows (bounded temporary memory)."""
    parts = [fn(w[i:i + ROW_CHUNK], *args) for i in range(0, w.shape[0], ROW_CHUNK)]
    return tuple(torch.cat(p) for p in zip(*parts))


def quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) float -> q (N, K) int8 in -127..127 and scale (N,) float32, w ~ q * scale[:, None]."""
    return _by_rows(_quantize_int8, w)


def _quantize_int8(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = w.float()
    scale = w.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(w / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale


def dequantize_int8(q: torch.Tensor, scale: torch.Tensor, dtype=torch.float32) -> torch.Tensor:
    return (q.to(torch.float32) * scale.float()[:, None]).to(dtype)


def padded_in_features(in_features: int, group_size: int) -> int:
    return -(-in_features // group_size) * group_size


def quantize_int4(w: torch.Tensor, group_size: int = DEFAULT_GROUP_SIZE):
    """(N, K) float -> q (N, Kp) uint8 in 0..15, scale and zero (N, Kp/g) bfloat16.

    Per group: min/max scaling over 16 levels, w ~ (q - 8) * scale + zero. The integers are
    computed from the bf16-rounded scale and zero, the values the kernels will use."""
    check_group_size(group_size)
    return _by_rows(_quantize_int4, w, group_size)


def _quantize_int4(w: torch.Tensor, group_size: int):
    N, K = w.shape
    Kp = padded_in_features(K, group_size)
    w = F.pad(w.float(), (0, Kp - K)).view(N, Kp // group_size, group_size)
    lo, hi = w.amin(dim=2), w.amax(dim=2)
    scale = ((hi - lo).clamp(min=1e-6) / 15).to(torch.bfloat16)
    zero = (lo + 8 * scale.float()).to(torch.bfloat16)
    low = zero.float() - 8 * scale.float()
    q = torch.round((w - low[..., None]) / scale.float()[..., None]).clamp_(0, 15).to(torch.uint8)
    return q.view(N, Kp), scale, zero


def dequantize_int4(q: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, in_features: int | None = None,
                    dtype=torch.float32) -> torch.Tensor:
    """q (N, Kp) 0..15 with scale, zero (N, Kp/g) -> (N, in_features) float."""
    N, Kp = q.shape
    g = Kp // scale.shape[1]
    w = (q.view(N, -1, g).float() - 8) * scale.float()[..., None] + zero.float()[..., None]
    return w.view(N, Kp)[:, :in_features or Kp].to(dtype)


def pack_nibbles(q: torch.Tensor) -> torch.Tensor:
    """(N, K) values 0..15 (K even) -> (N, K/2) uint8, column 2j in the high nibble of byte j."""
    q = q.to(torch.uint8)
    return (q[:, 0::2] << 4) | q[:, 1::2]


def unpack_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of pack_nibbles: (N, K/2) uint8 -> (N, K) uint8 in 0..15."""
    return torch.stack([packed >> 4, packed & 15], dim=-1).view(packed.shape[0], -1)


def check_group_size(group_size: int) -> None:
    if group_size not in GROUP_SIZES:
        raise QuantizationError(f"int4 group size {group_size} is not supported; use one of {GROUP_SIZES} "
                                "(smaller groups: more accurate, slightly larger).")


# ---------------------------------------------------------------------------------------------
# Kernel choice

def int8_kernel(x: torch.Tensor) -> str:
    """'int8pack' (CPU, half precision), 'cast' (CUDA; CPU in fp32) or 'dequant' for an input x."""
    if x.dtype in _KERNEL_DTYPES:
        # the CPU kernel gives wrong bf16 results (or crashes) when K is not a multiple of 16
        # ... and is for half-precision inputs: with fp32 it measured 15-25x slower than casting
        # the int8 weight (bench: a 4096x4096 layer, 72 rows, 1.2 s against 81 ms)
        if x.device.type == "cpu" and x.dtype != torch.float32 and _op("_weight_int8pack_mm") is not None \
                and x.shape[-1] % 16 == 0:
            return "int8pack"
        if x.device.type == "cpu" and x.dtype == torch.float32:
            return "cast"
        if x.device.type == "cuda":
            return "cast"
    return "dequant"


def int4_kernel(device: torch.device, dtype: torch.dtype) -> str:
    """'cpu_tinygemm', 'cuda_tinygemm' or 'dequant' for inputs of this device and dtype."""
    # the CPU kernel is for half-precision inputs: with fp32 it measured ~9x slower than
    # dequantising the layer and one fp32 matmul (a 4096x4096 layer, 72 rows: 2.3 s against 0.26 s)
    if device.type == "cpu" and dtype in _KERNEL_DTYPES and dtype != torch.float32 \
            and _op("_weight_int4pack_mm_for_cpu") is not None \
            and _op("_convert_weight_to_int4pack_for_cpu") is not None:
        return "cpu_tinygemm"
    if device.type == "cuda" and dtype in _KERNEL_DTYPES and _op("_weight_int4pack_mm") is not None \
            and _op("_convert_weight_to_int4pack") is not None and _TORCH >= (2, 2):
        return "cuda_tinygemm"
    return "dequant"


# Rows are padded to a multiple of this for the int4 kernels: the CPU kernel packs blocks of 64
# rows independently (a shorter last block gets another layout), and the CUDA one wants N % 8 == 0.
PACK_ROWS = 64


@functools.lru_cache(maxsize=16)
def _cpu_int4_order(k: int) -> torch.Tensor:
    """The CPU kernel's layout as a permutation: nibble j of a packed block of PACK_ROWS rows (low
    nibble of each byte first) holds element order[j] of that block's row-major (PACK_ROWS, k)
    integers. Found by packing the base-16 digits of every element's index, one pack per digit
    (tests check the round trip)."""
    n = PACK_ROWS * k
    index = torch.arange(n, dtype=torch.int64).view(PACK_ROWS, k)
    order = torch.zeros(n, dtype=torch.int64)
    digit, scale = 0, 1
    while scale < n:
        packed = torch.ops.aten._convert_weight_to_int4pack_for_cpu(((index // scale) % 16).to(torch.int32), 1)
        nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(-1).to(torch.int64)
        order += nibbles * scale
        digit, scale = digit + 1, scale * 16
    if not torch.equal(order.sort().values, torch.arange(n)):
        raise RuntimeError("the CPU int4 packing is not a permutation of nibbles in this torch version")
    return order


def cpu_unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """Inverse of aten._convert_weight_to_int4pack_for_cpu: (N, K/2) packed -> (N, K) uint8 0..15."""
    N, k = packed.shape[0], packed.shape[1] * 2
    order = _cpu_int4_order(k)
    nibbles = torch.stack([packed & 15, packed >> 4], dim=-1).reshape(N // PACK_ROWS, PACK_ROWS * k)
    out = torch.empty_like(nibbles)
    out[:, order] = nibbles
    return out.view(N, k)


def _inner_k_tiles(k: int) -> int:
    return next(t for t in (8, 4, 2) if k % (16 * t) == 0)


# ---------------------------------------------------------------------------------------------
# The modules

class QuantizedLinear(nn.Module):
    """Common part of Int8Linear and Int4Linear: shape, bias, and the compute dtype."""

    def __init__(self, in_features: int, out_features: int, bias: bool, dtype: torch.dtype):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.compute_dtype = dtype
        self.bias = nn.Parameter(torch.zeros(out_features, dtype=dtype), requires_grad=False) if bias else None

    @property
    def weight(self) -> torch.Tensor:
        # A 0-element stand-in: code that reads `.weight.dtype` / `.weight.device` (Uni1Model.dtype
        # and .device read lm_head's) sees the compute dtype and the device; any use of it as a
        # matrix fails on its shape instead of computing something wrong.
        return torch.empty(0, dtype=self.compute_dtype, device=self.bias_or_buffer_device())

    def bias_or_buffer_device(self) -> torch.device:
        return next(iter(self.buffers())).device

    def _apply(self, fn, recurse=True):
        # .to(dtype) / .half() change the compute dtype and the bias; the quantised weights,
        # scales and zeros keep their own dtypes and only follow the device.
        probe = fn(torch.empty(0, dtype=self.compute_dtype, device=self.bias_or_buffer_device()))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        if probe.device != self.bias_or_buffer_device():
            self._before_move()
        for name, b in self._buffers.items():
            if b is not None:
                self._buffers[name] = b.to(probe.device)
        if self.bias is not None:
            self.bias.data = self.bias.data.to(probe.device, self.compute_dtype)
        return self

    def _before_move(self) -> None:
        """Hook: a layout tied to one device's kernel goes back to the portable form first."""

    def _out(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        y = y.to(x.dtype)
        return y if self.bias is None else y + self.bias.to(x.dtype)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


class Int8Linear(QuantizedLinear):
    bits = 8

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=torch.float32,
                 device=None):
        super().__init__(in_features, out_features, bias, dtype)
        self.register_buffer("weight_int8", torch.zeros(out_features, in_features, dtype=torch.int8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, dtype=torch.float32, device=device))

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype=None) -> Int8Linear:
        N, K = weight.shape
        m = cls(K, N, bias is not None, dtype=dtype or weight.dtype, device="meta")
        q, scale = quantize_int8(weight)
        m.weight_int8, m.weight_scale = q, scale.to(weight.device)
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().to(m.compute_dtype), requires_grad=False)
        return m

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_int8(self.weight_int8, self.weight_scale, dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = int8_kernel(x)
        if kernel == "int8pack":
            if self.weight_int8.data_ptr() % 64:
                # the CPU kernel crashes on weights not 64-byte aligned, as tensors read straight
                # out of a safetensors file can be: one aligned copy, kept
                self.weight_int8 = self.weight_int8.clone()
            y = torch.ops.aten._weight_int8pack_mm(x.reshape(-1, self.in_features).contiguous(), self.weight_int8,
                                                   self.weight_scale.to(x.dtype))
            return self._out(y.view(*x.shape[:-1], self.out_features), x)
        if kernel == "cast":
            return self._out(F.linear(x, self.weight_int8.to(x.dtype)) * self.weight_scale.to(x.dtype), x)
        return self._out(F.linear(x, self.dequantize(x.dtype)), x)


class Int4Linear(QuantizedLinear):
    """int4 weights held in one of three layouts, one copy at a time:

    'portable'       weight_int4 (N, Kp/2) uint8 nibbles: the state-dict form, any device
    'cpu_tinygemm'   aten._convert_weight_to_int4pack_for_cpu's layout (N padded to PACK_ROWS)
    'cuda_tinygemm'  aten._convert_weight_to_int4pack's layout (N padded to PACK_ROWS)

    Packing (prepare(), or the first forward on a device with a kernel) drops the portable form.
    Unpacking is exact: the CPU layout is a fixed permutation of nibbles (cpu_unpack_int4); the
    CUDA one is read back by running the kernel on an identity matrix with scale 1 and zero 0,
    which gives q - 8, small integers that every float dtype holds exactly."""
    bits = 4

    def __init__(self, in_features: int, out_features: int, bias: bool = False, dtype=torch.float32,
                 group_size: int = DEFAULT_GROUP_SIZE, device=None):
        super().__init__(in_features, out_features, bias, dtype)
        check_group_size(group_size)
        self.group_size = group_size
        Kp = padded_in_features(in_features, group_size)
        self.register_buffer("weight_int4", torch.zeros(out_features, Kp // 2, dtype=torch.uint8, device=device))
        self.register_buffer("weight_scale", torch.ones(out_features, Kp // group_size, dtype=torch.bfloat16,
                                                        device=device))
        self.register_buffer("weight_zero", torch.zeros(out_features, Kp // group_size, dtype=torch.bfloat16,
                                                        device=device))
        self.layout = "portable"
        self._scales_and_zeros = None       # (dtype, (Kp/g, Np, 2)) for the tinygemm kernels

    @property
    def padded_in_features(self) -> int:
        return self.weight_scale.shape[1] * self.group_size

    @classmethod
    def from_float(cls, weight: torch.Tensor, bias: torch.Tensor | None = None, group_size: int = DEFAULT_GROUP_SIZE,
                   dtype=None) -> Int4Linear:
        N, K = weight.shape
        m = cls(K, N, bias is not None, dtype=dtype or weight.dtype, group_size=group_size, device="meta")
        q, scale, zero = quantize_int4(weight, group_size)
        m.weight_int4, m.weight_scale, m.weight_zero = pack_nibbles(q), scale, zero
        if bias is not None:
            m.bias = nn.Parameter(bias.detach().to(m.compute_dtype), requires_grad=False)
        return m

    def portable_int4(self) -> torch.Tensor:
        """(N, Kp) uint8 0..15, whatever the layout in memory."""
        if self.layout == "portable":
            return unpack_nibbles(self.weight_int4)
        if self.layout == "cpu_tinygemm":
            return cpu_unpack_int4(self.weight_int4)[: self.out_features]
        Kp, device = self.padded_in_features, self.weight_int4.device
        unit = torch.stack([torch.ones(Kp // self.group_size, self._padded_out, device=device),
                            torch.zeros(Kp // self.group_size, self._padded_out, device=device)], dim=-1)
        dtype = torch.bfloat16 if self.layout == "cuda_tinygemm" else torch.float32
        rows = []
        for start in range(0, Kp, 1024):        # identity blocks: bounded temporary memory
            eye = torch.eye(Kp, device=device, dtype=dtype)[start:start + 1024]
            rows.append(self._tinygemm(eye, unit.to(dtype)).t())
        q = torch.cat(rows, dim=1)[: self.out_features] + 8
        return q.round().to(torch.uint8)

    def dequantize(self, dtype=torch.float32) -> torch.Tensor:
        return dequantize_int4(self.portable_int4(), self.weight_scale, self.weight_zero, self.in_features, dtype)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        if self.layout != "portable":
            destination[prefix + "weight_int4"] = pack_nibbles(self.portable_int4()).cpu()

    def _before_move(self) -> None:
        if self.layout != "portable":
            self._repack("portable", self.weight_int4.device)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if prefix + "weight_int4" in state_dict:        # portable integers come in
            self.layout, self._scales_and_zeros = "portable", None
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _repack(self, kernel: str, device: torch.device) -> None:
        """Put the weight in `kernel`'s layout on `device` (from whatever layout it is in now)."""
        q = self.portable_int4().to(device)
        self.weight_scale, self.weight_zero = self.weight_scale.to(device), self.weight_zero.to(device)
        self._scales_and_zeros = None
        if kernel == "portable":
            self.weight_int4, self.layout = pack_nibbles(q), "portable"
            return
        pad_n = -self.out_features % PACK_ROWS
        self._padded_out = self.out_features + pad_n
        q = F.pad(q, (0, 0, 0, pad_n))
        if kernel == "cpu_tinygemm":
            # blocks of rows pack independently: int32 temporaries of ROW_CHUNK rows only
            packed = torch.cat([torch.ops.aten._convert_weight_to_int4pack_for_cpu(q[i:i + ROW_CHUNK].to(torch.int32), 1)
                                for i in range(0, q.shape[0], ROW_CHUNK)])
        elif _TORCH >= (2, 5):                            # pytorch #129940: [n][k/2] uint8 input
            packed = torch.ops.aten._convert_weight_to_int4pack(pack_nibbles(q), _inner_k_tiles(q.shape[1]))
        else:
            packed = torch.ops.aten._convert_weight_to_int4pack(q.to(torch.int32), _inner_k_tiles(q.shape[1]))
        self.weight_int4, self.layout = packed, kernel

    def prepare(self) -> Int4Linear:
        """Pack now for the kernel of the weight's device and the compute dtype (else at the first
        forward): loaders call it so that packing's temporaries come before the KV cache exists."""
        kernel = int4_kernel(self.weight_int4.device, self.compute_dtype)
        if kernel != "dequant" and self.layout != kernel:
            self._repack(kernel, self.weight_int4.device)
        return self

    def _tinygemm(self, x2d: torch.Tensor, scales_and_zeros: torch.Tensor) -> torch.Tensor:
        if self.layout == "cpu_tinygemm":
            return torch.ops.aten._weight_int4pack_mm_for_cpu(x2d, self.weight_int4, self.group_size, scales_and_zeros)
        return torch.ops.aten._weight_int4pack_mm(x2d, self.weight_int4, self.group_size, scales_and_zeros)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = int4_kernel(x.device, x.dtype)
        if kernel == "dequant":
            if self.layout != "portable" and self.weight_int4.device != x.device:
                self._repack("portable", x.device)
            return self._out(F.linear(x, self.dequantize(x.dtype)), x)
        if self.layout != kernel or self.weight_int4.device != x.device:
            self._repack(kernel, x.device)
        # tinygemm on CUDA takes bf16 only; on CPU the input, scales and zeros share one dtype
        dtype = torch.bfloat16 if kernel == "cuda_tinygemm" else x.dtype
        if self._scales_and_zeros is None or self._scales_and_zeros[0] != dtype:
            sz = torch.stack([self.weight_scale, self.weight_zero], dim=-1).to(dtype)     # (N, Kp/g, 2)
            sz = F.pad(sz, (0, 0, 0, 0, 0, self._padded_out - self.out_features))
            self._scales_and_zeros = (dtype, sz.transpose(0, 1).contiguous())
        x2d = x.reshape(-1, self.in_features).to(dtype).contiguous()
        if self.padded_in_features != self.in_features:
            x2d = F.pad(x2d, (0, self.padded_in_features - self.in_features))
        y = self._tinygemm(x2d, self._scales_and_zeros[1])[:, : self.out_features]
        return self._out(y.reshape(*x.shape[:-1], self.out_features), x)


def quantize_linear(linear: nn.Linear | torch.Tensor, mode: str, group_size: int = DEFAULT_GROUP_SIZE,
                    bias: torch.Tensor | None = None, dtype=None) -> QuantizedLinear:
    """An nn.Linear (or a weight and bias) -> its Int8Linear / Int4Linear."""
    weight = linear.weight.detach() if isinstance(linear, nn.Linear) else linear
    bias = linear.bias if isinstance(linear, nn.Linear) else bias
    if mode == "int8":
        return Int8Linear.from_float(weight, bias, dtype=dtype)
    if mode == "int4":
        return Int4Linear.from_float(weight, bias, group_size, dtype=dtype)
    raise QuantizationError(f"quantize={mode!r} is unknown; choose None, 'int8' or 'int4'.")


# ---------------------------------------------------------------------------------------------
# lm_head and embedding

class ImageHead(nn.Module):
    """An lm_head that keeps only the rows `row_ids` (the image codes and the structural ids the
    sampler reads). It returns full-vocabulary logits like nn.Linear; the other entries are the
    dtype minimum, which is what the model gives masked ids and what softmax gives no mass."""

    def __init__(self, proj: nn.Module, row_ids: torch.Tensor, vocab_size: int):
        super().__init__()
        self.proj, self.vocab_size = proj, vocab_size
        self.register_buffer("row_ids", row_ids.to(torch.long).clone())

    @property
    def weight(self) -> torch.Tensor:           # see QuantizedLinear.weight
        return self.proj.weight[:0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept = self.proj(x)
        out = torch.full((*x.shape[:-1], self.vocab_size), torch.finfo(kept.dtype).min, dtype=kept.dtype,
                         device=kept.device)
        return out.index_copy_(-1, self.row_ids.to(kept.device), kept)


class HostEmbedding(nn.Module):
    """An embedding table that stays in host memory, or on disk: `rows` is a CPU tensor or a
    quantized_fill.FileRows, which reads the rows looked up from the checkpoint file. The rows go
    to the ids' device in the compute dtype. The table is not a parameter, so model.to("cuda")
    leaves it where it is."""

    def __init__(self, rows, dtype: torch.dtype):
        super().__init__()
        self.rows, self.compute_dtype = rows, dtype
        self.num_embeddings, self.embedding_dim = rows.shape

    @property
    def table(self) -> torch.Tensor:
        """The whole table as a tensor (read from the file if it lives there: for saving)."""
        return self.rows if isinstance(self.rows, torch.Tensor) else self.rows.full()

    @property
    def nbytes(self) -> int:
        return self.num_embeddings * self.embedding_dim * self.rows.dtype.itemsize

    def _apply(self, fn, recurse=True):
        probe = fn(torch.empty(0, dtype=self.compute_dtype))
        if probe.is_floating_point():
            self.compute_dtype = probe.dtype
        return super()._apply(fn, recurse)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.rows[ids.cpu()].to(ids.device, self.compute_dtype, non_blocking=True)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        destination[prefix + "weight"] = self.table

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        if prefix + "weight" in state_dict:
            self.rows = state_dict[prefix + "weight"].cpu()
        elif strict:
            missing_keys.append(prefix + "weight")


# ---------------------------------------------------------------------------------------------
# Whole models

@dataclass
class QuantSpec:
    """What was quantised and how: the "quantization" entry of a pre-quantised config.json."""
    mode: str                                  # "int8" | "int4"
    group_size: int = DEFAULT_GROUP_SIZE       # int4 only
    lm_head: str = "image"
    embedding: str = "host"
    format_version: int = FORMAT_VERSION

    def __post_init__(self):
        if self.mode not in MODES:
            raise QuantizationError(f"quantize={self.mode!r} is unknown; choose 'int8' or 'int4' (or none).")
        if self.mode == "int4":
            check_group_size(self.group_size)
        if self.lm_head not in LM_HEAD_CHOICES:
            raise QuantizationError(f"lm_head={self.lm_head!r}: choose one of {LM_HEAD_CHOICES}.")
        if self.embedding not in EMBEDDING_CHOICES:
            raise QuantizationError(f"embedding={self.embedding!r}: choose one of {EMBEDDING_CHOICES}.")

    def to_dict(self) -> dict:
        out = {"method": "uni1_weight_only", "bits": 8 if self.mode == "int8" else 4, **asdict(self)}
        if self.mode == "int8":
            out.pop("group_size")
        return out

    @classmethod
    def from_dict(cls, d: dict) -> QuantSpec:
        if d.get("method") != "uni1_weight_only" or int(d.get("format_version", 0)) > FORMAT_VERSION:
            raise QuantizationError(f"config.json's quantization entry {d} is not one this version reads "
                                    f"(method 'uni1_weight_only', format_version <= {FORMAT_VERSION}). Fix: "
                                    "quantise the bf16 checkpoint again with `python -m uni1_core quantize`.")
        mode = {8: "int8", 4: "int4"}.get(int(d.get("bits", 0)))
        if mode is None:
            raise QuantizationError(f"quantization entry has bits={d.get('bits')!r}; only 8 and 4 exist.")
        return cls(mode, int(d.get("group_size", DEFAULT_GROUP_SIZE)), d.get("lm_head", "full"),
                   d.get("embedding", "keep"))


def decoder_linears(model: nn.Module) -> list[str]:
    """Names of the nn.Linear modules of the decoder layers (whatever their fusion)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.Linear) and name.startswith("model.layers.")]


def _set_module(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, module)


def quantize_model_(model: nn.Module, mode: str, group_size: int = DEFAULT_GROUP_SIZE, *, lm_head: str = "image",
                    keep_ids=None, embedding: str = "keep") -> nn.Module:
    """Swap the decoder's linear layers for quantised ones, in place; returns the model.

    lm_head: "image" (only `keep_ids` rows, quantised; needs keep_ids, e.g. policy.sub_vocab_ids),
    "full" (every row, quantised) or "keep" (as it is). embedding: "host" (moved to host memory,
    rows sent to the device per call) or "keep". The result is exact-sampling compatible: it is
    just another model to the sampler."""
    spec = QuantSpec(mode, group_size, lm_head, embedding)
    if spec.lm_head == "image" and keep_ids is None:
        raise QuantizationError("lm_head='image' needs keep_ids: the vocabulary ids the sampler reads "
                                "(policy.sub_vocab_ids(vocab)). Fix: pass them, or lm_head='full'.")
    dtype = _float_dtype(model)
    with torch.no_grad():
        for name in decoder_linears(model):
            _set_module(model, name, _prepared(quantize_linear(model.get_submodule(name), mode, group_size,
                                                               dtype=dtype)))
        head = model.lm_head
        if spec.lm_head != "keep" and isinstance(head, nn.Linear):
            model.lm_head = _quantized_head(head.weight.detach(), spec, keep_ids, dtype)
        if spec.embedding == "host":
            emb = model.model.embed_tokens
            model.model.embed_tokens = HostEmbedding(emb.weight.detach().cpu(), dtype)
    model.quantization = spec
    return model


def _prepared(module: nn.Module) -> nn.Module:
    return module.prepare() if isinstance(module, Int4Linear) else module


def _quantized_head(weight: torch.Tensor, spec: QuantSpec, keep_ids, dtype) -> nn.Module:
    if spec.lm_head == "full":
        return _prepared(quantize_linear(weight, spec.mode, spec.group_size, dtype=dtype))
    ids = torch.as_tensor(keep_ids, dtype=torch.long).flatten().unique()
    if ids.numel() == 0 or int(ids.min()) < 0 or int(ids.max()) >= weight.shape[0]:
        raise QuantizationError(f"keep_ids must be vocabulary ids in 0..{weight.shape[0] - 1}.")
    proj = _prepared(quantize_linear(weight[ids.to(weight.device)], spec.mode, spec.group_size, dtype=dtype))
    return ImageHead(proj, ids, weight.shape[0])


def _float_dtype(model: nn.Module) -> torch.dtype:
    return next(p.dtype for p in model.parameters() if p.is_floating_point())


def image_row_ids(config, tokenizer=None) -> torch.Tensor:
    """The vocabulary ids the sampler reads (image codes, row end, end of image) for a model config;
    the tokenizer names the structural ids (default: the checkpoint folder's)."""
    from .policy import sub_vocab_ids
    from .sequence import ImageVocab

    vocab = ImageVocab.from_tokenizer(tokenizer, config.vocab_size, config.raw.get("uni1", {}))
    return sub_vocab_ids(vocab)


def quantized_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers (as held now; a host embedding counts once)."""
    seen, total = set(), 0
    tensors = list(model.parameters()) + list(model.buffers())
    total = sum(m.nbytes for m in model.modules() if isinstance(m, HostEmbedding))
    for t in tensors:
        if t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total += t.numel() * t.element_size()
    return total


__all__ = ["MODES", "GROUP_SIZES", "QuantSpec", "QuantizationError", "Int8Linear", "Int4Linear", "ImageHead",
           "HostEmbedding", "quantize_model_", "quantize_linear", "quantize_int8", "quantize_int4",
           "dequantize_int8", "dequantize_int4", "pack_nibbles", "unpack_nibbles", "int8_kernel", "int4_kernel",
           "image_row_ids", "quantized_bytes"]
