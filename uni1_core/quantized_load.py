"""Loading with quantisation, streamed; writing and reading pre-quantised folders.

    model = load_quantized("Alpha-VLLM/Lumina-mGPT-2.0", quantize="int4", device="cuda")
    quantize_folder("bf16_folder", "int8_folder", "int8")      # python -m uni1_core quantize
    model = load_quantized("int8_folder")                      # its config.json says how

Streaming: the network is built on the meta device, then filled one linear layer at a time: its
bf16 weight (q, k and v together where the model fuses them) is read from its file, quantised on
`device` and dropped. Host memory while loading is the quantised model plus one layer's weight
in float, never the bf16 model; each tensor is read through its own short-lived file mapping,
so no shard stays mapped either.

The lm_head with lm_head="image" is read row range by row range (only the rows kept); the
embedding with embedding="host" stays in its file (FileRows: the rows looked up are read per call). See quantize.py for the formats and docs/quantization.md for the choices.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from .checkpoint import INDEX_FILE, SINGLE_FILE, CheckpointError, TensorEntry, list_safetensors_dir, resolve_model_dir
from .model import IGNORED_KEY_PREFIXES, ModelConfig, Uni1Model, _expand_qk_norm, _is_qk_norm, parse_dtype

try:                                   # the fused layout (attention.wqkv, feed_forward.w13, ...)
    from .model import hf_layout
except ImportError:                    # a model with Hugging Face's module names
    hf_layout = None
from .quantize import (DEFAULT_GROUP_SIZE, HostEmbedding, ImageHead, Int4Linear, Int8Linear, QuantizationError,
                       QuantSpec, _disable_weight_fusion, _prepared, _set_module, decoder_linears, image_row_ids,
                       quantize_linear)

# A fused module of the network -> the Hugging Face weights whose rows it stacks, in order.
FUSED_SOURCES = {"wqkv": ("q_proj", "k_proj", "v_proj"), "w13": ("gate_proj", "up_proj")}
_ST_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32, "F64": torch.float64}


def read_spec(folder: Path, config: ModelConfig, quantize: str | None, group_size: int, lm_head: str,
              embedding: str) -> tuple[QuantSpec | None, bool]:
    """(spec, prequantised): what to load. A pre-quantised folder's own entry wins; asking for
    another setting than it holds is an error, not a silent conversion."""
    entry = config.raw.get("quantization")
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


def load_quantized(path_or_repo_id, quantize: str | None = None, group_size: int = DEFAULT_GROUP_SIZE, *,
                   dtype="auto", device="cpu", lm_head: str = "image", embedding: str = "host",
                   keep_ids=None, cache_dir=None) -> Uni1Model:
    """A Uni1Model with int8/int4 decoder layers, from a bf16 checkpoint (streamed) or a
    pre-quantised folder. quantize=None on a plain folder: the ordinary from_pretrained."""
    folder = resolve_model_dir(path_or_repo_id, cache_dir=cache_dir)
    config = ModelConfig.from_file(folder / "config.json")
    spec, prequantised = read_spec(folder, config, quantize, group_size, lm_head, embedding)
    if spec is None:
        return Uni1Model.from_pretrained(folder, dtype=dtype, device=device)
    dtype = parse_dtype(dtype, config)
    device = torch.device(device)
    with torch.device("meta"):
        model = Uni1Model(config)
    entries = list_safetensors_dir(folder)
    if not prequantised and spec.lm_head == "image" and keep_ids is None:
        from .tokenizer import TextTokenizer
        keep_ids = image_row_ids(config, TextTokenizer.from_dir(folder))
    loader = _Loader(model, entries, folder, config, dtype, device)
    with torch.no_grad():
        if prequantised:
            loader.load_prequantised(spec)
        else:
            loader.quantise_streaming(spec, keep_ids)
        loader.load_rest(spec)
    loader.check_done()
    _disable_weight_fusion(model)
    model.quantization = spec
    model.requires_grad_(False)
    return model.eval()


class _Loader:
    """Fills a meta-device Uni1Model from checkpoint entries, tensor by tensor."""

    def __init__(self, model, entries: dict[str, TensorEntry], folder: Path, config: ModelConfig, dtype, device):
        self.model, self.entries, self.folder, self.config = model, entries, folder, config
        self.dtype, self.device = dtype, device
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
            layout = hf_layout(self.config) if hf_layout is not None else {}
            if internal in layout:
                return [f"{prefix}.{hf}" for hf in layout[internal][0]]
        parent, _, leaf = name.rpartition(".")
        return [f"{parent}.{part}" for part in FUSED_SOURCES.get(leaf, (leaf,))]

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
            t = self.read(key, dtype=self.dtype)
            if _is_qk_norm(key):
                t = _expand_qk_norm(key, t, shape)
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
        unexpected = [k for k in self.entries if k not in self.used and not k.startswith(IGNORED_KEY_PREFIXES)
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
    model.quantization.embedding = "host"
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
