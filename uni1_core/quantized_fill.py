"""Filling a network built on the meta device with int8/int4 weights, from a bf16 checkpoint
(streamed) or from a pre-quantised folder. `Uni1Model.from_pretrained(..., quantize=...)` calls
`fill_quantized`; this module does not import model.py (model.py imports it), so the caller hands
over what only the network knows: its Hugging Face layout, how a stored tensor is widened to the
network's shape, and the checkpoint keys that belong to nothing.

Streaming: the linear layers are filled one at a time: a layer's bf16 weight (q, k and v together
where the model fuses them) is read from its file, quantised on `device` and dropped. Host memory
while loading is the quantised model plus one layer's weight in float, never the bf16 model; each
tensor is read through its own short-lived file handle, so no shard stays mapped either.

The lm_head with lm_head="image" is read row range by row range (only the rows kept); the
embedding with embedding="host" stays in its file (FileRows: the rows looked up are read per
call). See quantize.py for the formats and docs/quantization.md for the choices.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import CheckpointError, TensorEntry
from .quantize import (HostEmbedding, ImageHead, Int4Linear, Int8Linear, QuantizationError, QuantSpec,
                       _prepared, _set_module, decoder_linears, image_row_ids,
                       quantize_linear)

_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def read_spec(folder: Path, raw_config: dict, quantize: str | None, group_size: int, lm_head: str,
              embedding: str) -> tuple[QuantSpec | None, bool]:
    """(spec, prequantised): what to load; (None, False) for plain float weights. A pre-quantised
    folder's own "quantization" entry wins; asking for another setting than it holds is an
    error, not a silent conversion."""
    quantize = None if quantize in (None, "", "none") else quantize
    entry = raw_config.get("quantization")
    if entry is None:
        return (QuantSpec(quantize, group_size, lm_head, embedding) if quantize else None), False
    spec = QuantSpec.from_dict(entry)
    if quantize not in (None, spec.mode) or (quantize == "int4" and group_size != spec.group_size):
        raise QuantizationError(f"{folder} is already quantised ({spec.mode}"
                                f"{', group ' + str(spec.group_size) if spec.mode == 'int4' else ''}); "
                                f"it cannot be loaded as {quantize}. Fix: pass quantize=None (or the same "
                                "setting), or quantise the bf16 checkpoint with the setting you want.")
    spec.embedding = embedding if embedding in ("host", "keep") else spec.embedding
    return spec, True


def fill_quantized(model: nn.Module, folder: Path, entries: dict[str, TensorEntry], spec: QuantSpec,
                   prequantised: bool, *, dtype: torch.dtype, device: torch.device, layout: dict,
                   expand: Callable, ignored_prefixes: tuple[str, ...] = (), keep_ids=None) -> nn.Module:
    """Put quantised linears and every other tensor into `model` (a Uni1Model on the meta device).

    layout: model.hf_layout(config), internal fused module -> its Hugging Face modules; expand:
    (key, tensor, shape) -> the tensor in the network's shape (Chameleon's per-shard qk-norm);
    ignored_prefixes: checkpoint keys that belong to no module. keep_ids: the lm_head rows kept
    with lm_head="image" (default: the image rows the sampler reads, from the folder's tokenizer)."""
    if not prequantised and spec.lm_head == "image" and keep_ids is None:
        from .tokenizer import TextTokenizer
        keep_ids = image_row_ids(model.config, TextTokenizer.from_dir(folder))
    loader = _Loader(model, entries, folder, dtype, device, layout, expand, ignored_prefixes)
    with torch.no_grad():
        if prequantised:
            loader.load_prequantised(spec)
        else:
            loader.quantise_streaming(spec, keep_ids)
        loader.load_rest(spec)
    loader.check_done()
    model.quantization = spec
    return model


class _Loader:
    """Fills a meta-device Uni1Model from checkpoint entries, tensor by tensor."""

    def __init__(self, model, entries: dict[str, TensorEntry], folder: Path, dtype, device, layout: dict,
                 expand: Callable, ignored_prefixes: tuple[str, ...]):
        self.model, self.entries, self.folder, self.config = model, entries, folder, model.config
        self.dtype, self.device = dtype, device
        self.layout, self.expand, self.ignored_prefixes = layout, expand, ignored_prefixes
        self.used: set[str] = set()

    def read(self, key: str, rows=None, device=None, dtype=None) -> torch.Tensor:
        """One tensor (optionally only some rows), through its own file handle."""
        entry = self.entries.get(key)
        if entry is None:
            raise CheckpointError(f"the weights in {self.folder} lack {key!r}. Fix: download every shard of the "
                                  "checkpoint again; config.json and the weights must belong together.")
        self.used.add(key)
        try:
            with safe_open(entry.file, framework="pt") as f:
                if rows is None:
                    t = f.get_tensor(key)
                else:
                    view = f.get_slice(key)
                    t = torch.cat([view[a:b] for a, b in _runs(rows)])
        except Exception as err:
            raise CheckpointError(f"reading {key!r} from {entry.file} failed ({type(err).__name__}: {err}). "
                                  "Fix: delete the file and download it again.") from err
        t = t.to(device or self.device)
        return t.to(dtype) if dtype is not None and t.is_floating_point() else t

    def source_keys(self, name: str) -> list[str]:
        """The checkpoint (Hugging Face) modules whose rows make up the network's module `name`."""
        parts = name.split(".")
        if len(parts) > 3 and parts[:2] == ["model", "layers"]:
            prefix, internal = ".".join(parts[:3]), ".".join(parts[3:])
            if internal in self.layout:
                return [f"{prefix}.{hf}" for hf in self.layout[internal][0]]
        return [name]

    def quantise_streaming(self, spec: QuantSpec, keep_ids) -> None:
        for name in decoder_linears(self.model):
            linear = self.model.get_submodule(name)
            keys = self.source_keys(name)
            weight = torch.cat([self.read(k + ".weight") for k in keys])
            bias = torch.cat([self.read(k + ".bias") for k in keys]) if linear.bias is not None else None
            self._check_shape(name, weight, linear)
            _set_module(self.model, name, _prepared(quantize_linear(weight, spec.mode, spec.group_size, bias=bias,
                                                                    dtype=self.dtype)))
            del weight
        if spec.lm_head != "keep":
            key = "model.embed_tokens.weight" if self.config.tie_word_embeddings else "lm_head.weight"
            ids = None if spec.lm_head == "full" else torch.as_tensor(keep_ids, dtype=torch.long).flatten().unique()
            if ids is not None and (ids.numel() == 0 or int(ids[0]) < 0 or int(ids[-1]) >= self.config.vocab_size):
                raise QuantizationError(f"keep_ids must be vocabulary ids in 0..{self.config.vocab_size - 1}.")
            weight = self.read(key, rows=None if ids is None else ids.tolist())
            proj = _prepared(quantize_linear(weight, spec.mode, spec.group_size, dtype=self.dtype))
            self.model.lm_head = proj if ids is None else ImageHead(proj, ids.to(self.device), self.config.vocab_size)

    def load_prequantised(self, spec: QuantSpec) -> None:
        for name in decoder_linears(self.model):
            linear = self.model.get_submodule(name)
            _set_module(self.model, name, _prepared(self._read_quantised(name, linear.in_features,
                                                                         linear.out_features, linear.bias is not None,
                                                                         spec)))
        if spec.lm_head == "full":
            self.model.lm_head = _prepared(self._read_quantised("lm_head", self.config.hidden_size,
                                                                self.config.vocab_size, False, spec))
        elif spec.lm_head == "image":
            ids = self.read("lm_head.row_ids", device=self.device)
            proj = _prepared(self._read_quantised("lm_head.proj", self.config.hidden_size, len(ids), False, spec))
            self.model.lm_head = ImageHead(proj, ids, self.config.vocab_size)

    def _read_quantised(self, name: str, k: int, n: int, bias: bool, spec: QuantSpec) -> nn.Module:
        if spec.mode == "int8":
            m = Int8Linear(k, n, bias, dtype=self.dtype, device="meta")
            m.weight_int8, m.weight_scale = self.read(f"{name}.weight_int8"), self.read(f"{name}.weight_scale")
        else:
            m = Int4Linear(k, n, bias, dtype=self.dtype, group_size=spec.group_size, device="meta")
            m.weight_int4 = self.read(f"{name}.weight_int4")
            m.weight_scale, m.weight_zero = self.read(f"{name}.weight_scale"), self.read(f"{name}.weight_zero")
        for buf, t in m._buffers.items():
            if t.is_meta:
                continue
            expected = {"weight_int8": (n, k), "weight_scale": (n,)} if spec.mode == "int8" else {
                "weight_int4": (n, m.padded_in_features // 2), "weight_scale": (n, m.padded_in_features // spec.group_size),
                "weight_zero": (n, m.padded_in_features // spec.group_size)}
            if tuple(t.shape) != expected[buf]:
                raise CheckpointError(f"{self.folder}: {name}.{buf} has shape {tuple(t.shape)}, expected "
                                      f"{expected[buf]} for {spec.mode}. Fix: quantise the checkpoint again.")
        if bias:
            m.bias = nn.Parameter(self.read(f"{name}.bias", dtype=self.dtype), requires_grad=False)
        return m

    def load_rest(self, spec: QuantSpec) -> None:
        """Everything that is not a quantised linear (norms, the embedding, an unquantised
        lm_head), read under its checkpoint name and put in place by the model's own
        load_state_dict (which maps Hugging Face names onto fused modules)."""
        emb_key = "model.embed_tokens.weight"
        todo = {k: tuple(v.shape) for k, v in self.model.state_dict().items() if v.is_meta}
        if spec.embedding == "host":
            todo.pop(emb_key, None)
            self.used.add(emb_key)
            self.model.model.embed_tokens = HostEmbedding(FileRows(self.entries[emb_key].file, emb_key), self.dtype)
        if self.config.tie_word_embeddings:
            todo.pop("lm_head.weight", None)
        state = {}
        for key, shape in todo.items():
            t = self.expand(key, self.read(key, dtype=self.dtype), shape)
            if tuple(t.shape) != shape:
                raise CheckpointError(f"{self.entries[key].file}: {key!r} has shape {tuple(t.shape)}, expected "
                                      f"{shape} from config.json. Fix: check that config.json belongs to these "
                                      "weights.")
            state[key] = t
        self.model.load_state_dict(state, strict=False, assign=True)
        if self.config.tie_word_embeddings and isinstance(self.model.lm_head, nn.Linear):
            self.model.lm_head.weight = self.model.model.embed_tokens.weight
        left = [k for k, p in self.model.named_parameters() if p.is_meta]
        if left:
            raise CheckpointError(f"the weights in {self.folder} lack {left[0]!r}. Fix: download every shard of "
                                  "the checkpoint again.")

    def check_done(self) -> None:
        unexpected = [k for k in self.entries if k not in self.used and not k.startswith(self.ignored_prefixes)
                      and not (k == "lm_head.weight" and self.config.tie_word_embeddings)
                      and not (k == "lm_head.weight" and isinstance(self.model.lm_head, ImageHead))]
        if unexpected:
            raise CheckpointError(f"{self.entries[unexpected[0]].file} holds {unexpected[0]!r}, which is not a "
                                  "parameter of the network described by config.json. Fix: check that "
                                  "config.json belongs to these weights.")

    def _check_shape(self, name: str, weight: torch.Tensor, linear: nn.Linear) -> None:
        if tuple(weight.shape) != (linear.out_features, linear.in_features):
            raise CheckpointError(f"{self.folder}: the weights of {name} have shape {tuple(weight.shape)}, expected "
                                  f"{(linear.out_features, linear.in_features)} from config.json. Fix: check "
                                  "that config.json belongs to these weights.")


def _runs(ids) -> list[tuple[int, int]]:
    """Sorted ids -> [(start, stop)) runs of consecutive ids (the image rows are one run)."""
    runs = []
    for i in sorted(int(x) for x in ids):
        if runs and runs[-1][1] == i:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1])
    return [tuple(r) for r in runs]


class FileRows:
    """Rows of a 2-D tensor in a safetensors file, read when looked up (`rows[ids]`).

    Not a memory map: on current kernels a mapped file faults in whole large folios, so touching
    256 random rows of a 268 MB table made 225 MB resident. Reading each row with a seek and a
    read costs microseconds per row for the few rows a decode step looks up, and keeps none."""

    def __init__(self, file: Path, key: str):
        with open(file, "rb") as fh:
            header_len = int.from_bytes(fh.read(8), "little")
            info = json.loads(fh.read(header_len))[key]
        self.dtype = _ST_DTYPES.get(info["dtype"])
        if self.dtype is None or len(info["shape"]) != 2:
            raise CheckpointError(f"{file}: {key} is a {info['dtype']} tensor of shape {info['shape']}; a host "
                                  "embedding needs a 2-D float table. Fix: load with embedding='keep'.")
        self.file, self.key, self.shape = Path(file), key, tuple(info["shape"])
        self.offset = 8 + header_len + info["data_offsets"][0]
        self.row_bytes = self.shape[1] * self.dtype.itemsize

    def __getitem__(self, ids: torch.Tensor) -> torch.Tensor:
        ids = torch.as_tensor(ids, dtype=torch.long)
        unique, inverse = ids.flatten().unique(return_inverse=True)
        if len(unique) and (int(unique[0]) < 0 or int(unique[-1]) >= self.shape[0]):
            raise IndexError(f"token id out of range 0..{self.shape[0] - 1} for the embedding of {self.file}")
        buf = bytearray(len(unique) * self.row_bytes)
        view = memoryview(buf)
        with open(self.file, "rb", buffering=0) as fh:
            for j, i in enumerate(unique.tolist()):
                fh.seek(self.offset + i * self.row_bytes)
                fh.readinto(view[j * self.row_bytes:(j + 1) * self.row_bytes])
        rows = torch.frombuffer(buf, dtype=self.dtype).view(len(unique), self.shape[1]) if buf else \
            torch.empty(0, self.shape[1], dtype=self.dtype)
        return rows[inverse].view(*ids.shape, self.shape[1])

    def full(self) -> torch.Tensor:
        with safe_open(self.file, framework="pt") as f:
            return f.get_tensor(self.key)
