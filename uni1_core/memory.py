"""How much memory a generation needs, before loading anything: weights, KV cache, activations,
MoVQ decode and the peak.

    est = estimate(config, 768, 768, quantize="int8", kv_cache="int8", batch=1, cfg=True)
    est.peak_bytes, est.as_dict()
    python -m uni1_core memory --model FOLDER|demo --size 768x768 --quantize int8 --kv-cache int8

Every figure is arithmetic on the config (tensor shapes x element sizes) except the activations
and the MoVQ decode, which count the large tensors alive at their worst moment:
  weights      the decoder's linear layers as quantised (quantize.py's exact formats, int4 rows
               padded to PACK_ROWS for the kernels), norms, lm_head (quantised: the image rows only),
               embedding (quantised loads leave it in the checkpoint file and read the rows looked up: 0)
  KV cache     2 (K, V) x layers x rows x kv_heads x slots x head_dim, rows = batch x (2 with
               CFG); slots as the sampler allocates them (prompt + header + image + window +
               branches); int8 adds one fp32 scale per token and head (model.KVCache)
  activations  the larger of the prefill (its full-vocabulary logits in the model dtype and in
               float32) and one window forward (logits, the attention scores of a layer, and with
               an int8 cache one layer's K in the compute dtype plus V's two fp32 temporaries,
               as model.KVCache.read dequantises)
  vq decode    the MoVQ weights (float32) plus one image decoded (its decoder keeps about
               VQ_LIVE_MAPS full-resolution feature maps of the top level alive) and the pixels
  peak         weights + max(KV cache + activations, vq decode): the sampler frees its cache
               before the MoVQ decode, the model weights stay loaded
Not counted: the runtime itself (Python and torch on a CPU, the CUDA context on a GPU), which
the bench measures separately (bench/real_shape.py).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from .model import ModelConfig
from .quantize import DEFAULT_GROUP_SIZE, GROUP_SIZES, PACK_ROWS, padded_in_features

QUANTIZE_CHOICES = ("none", "int8", "int4")
KV_CHOICES = ("bf16", "int8")
VQ_LIVE_MAPS = 4               # x, norm+swish output, conv output, residual sum (movq.ResnetBlock)
SJD_WINDOW, SJD_BRANCHES = 32, 4
DEFAULT_PROMPT_TOKENS = 128
GIB = 1 << 30


@dataclass
class MemoryEstimate:
    weights_bytes: int
    kv_cache_bytes: int
    activations_bytes: int
    vq_decode_bytes: int
    peak_bytes: int
    host_bytes: int            # off the device: the embedding, read from its file row by row
    setting: dict

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        s = self.setting
        lines = [f"{s['width']}x{s['height']}, batch {s['batch']}{' with CFG' if s['cfg'] else ''}, "
                 f"weights {s['quantize']}, KV cache {s['kv_cache']}:"]
        for name in ("weights", "kv_cache", "activations", "vq_decode", "peak"):
            lines.append(f"  {name.replace('_', ' '):12s} {getattr(self, name + '_bytes') / GIB:7.2f} GiB")
        if self.host_bytes:
            lines.append(f"  (host only  {self.host_bytes / GIB:7.2f} GiB: embedding, read row by row from the file)")
        return "\n".join(lines)


def _dtype_bytes(dtype: str) -> int:
    return {"float32": 4, "float": 4, "fp32": 4}.get(str(dtype).removeprefix("torch."), 2)


def linear_bytes(n: int, k: int, quantize: str, group_size: int, dtype_bytes: int) -> int:
    """Bytes of one (n, k) linear weight held as quantize.py holds it (kernel layout included)."""
    if quantize == "int8":
        return n * k + 4 * n                                   # int8 values + float32 scale per row
    if quantize == "int4":
        # the int4 kernels serve half-precision inputs and pad rows to PACK_ROWS; an fp32 model
        # keeps the portable nibbles (quantize.int4_kernel)
        kp = padded_in_features(k, group_size)
        n_packed = -(-n // PACK_ROWS) * PACK_ROWS if dtype_bytes == 2 else n
        return n_packed * kp // 2 + 2 * 2 * n * (kp // group_size)    # nibbles + bf16 scale and zero per group
    return n * k * dtype_bytes


def weights_bytes(cfg: ModelConfig, quantize: str, group_size: int, dtype_bytes: int,
                  image_rows: int) -> tuple[int, int]:
    """(device bytes, host bytes) of the model's parameters and buffers."""
    h, inter, d = cfg.hidden_size, cfg.intermediate_size, cfg.head_dim
    q_out, kv_out = cfg.num_attention_heads * d, cfg.num_key_value_heads * d
    shapes = [(q_out, h), (kv_out, h), (kv_out, h), (h, q_out), (inter, h), (inter, h), (h, inter)]
    per_layer = sum(linear_bytes(n, k, quantize, group_size, dtype_bytes) for n, k in shapes)
    biases = (q_out + 2 * kv_out + h) * cfg.attention_bias + (2 * inter + h) * cfg.mlp_bias
    norms = 2 * h + 2 * (cfg.num_attention_heads + cfg.num_key_value_heads) * d     # rms x2, qk-norm affines
    layers = cfg.num_hidden_layers * (per_layer + (norms + biases) * dtype_bytes)
    embedding = cfg.vocab_size * h * dtype_bytes
    if quantize == "none":
        head = 0 if cfg.tie_word_embeddings else cfg.vocab_size * h * dtype_bytes
        return layers + h * dtype_bytes + embedding + head, 0
    head = linear_bytes(image_rows, h, quantize, group_size, dtype_bytes) + 8 * image_rows   # + row ids
    return layers + h * dtype_bytes + head, embedding


def cache_slots(cfg: ModelConfig, width: int, height: int, prompt_tokens: int, window: int, branches: int) -> int:
    """KV slots per row as sample_codes allocates them (prompt, header, image stream, window, branches)."""
    from .sequence import sequence_length
    return prompt_tokens + sequence_length(width, height) + window + branches


def estimate(cfg: ModelConfig, width: int, height: int, quantize: str = "none", kv_cache: str = "bf16",
             batch: int = 1, cfg_guidance: bool = True, group_size: int = DEFAULT_GROUP_SIZE,
             dtype: str = "bfloat16", prompt_tokens: int = DEFAULT_PROMPT_TOKENS, window: int = SJD_WINDOW,
             branches: int = SJD_BRANCHES, movq_config=None) -> MemoryEstimate:
    """The memory of one generation (see the module docstring for what each figure counts)."""
    if quantize not in QUANTIZE_CHOICES:
        raise ValueError(f"quantize={quantize!r}: choose one of {QUANTIZE_CHOICES}.")
    if kv_cache not in KV_CHOICES:
        raise ValueError(f"kv_cache={kv_cache!r}: choose one of {KV_CHOICES}.")
    if quantize == "int4" and group_size not in GROUP_SIZES:
        raise ValueError(f"group size {group_size}: choose one of {GROUP_SIZES}.")
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}.")
    num_codes = int(cfg.raw.get("uni1", {}).get("num_image_codes", 16384))
    db = _dtype_bytes(dtype)
    weights, host = weights_bytes(cfg, quantize, group_size, db, num_codes + 2)

    rows = batch * (2 if cfg_guidance else 1)
    slots = cache_slots(cfg, width, height, prompt_tokens, window, branches)
    kv_elems = 2 * cfg.num_hidden_layers * rows * cfg.num_key_value_heads * slots * cfg.head_dim
    if kv_cache == "int8":
        kv = kv_elems + 4 * (kv_elems // cfg.head_dim)           # int8 values + an fp32 scale per token and head
    else:
        kv = kv_elems * db

    t = window + branches
    logits = lambda tokens: rows * tokens * cfg.vocab_size * (db + 4)          # noqa: E731  model dtype + fp32
    scores = rows * cfg.num_attention_heads * t * slots * 4
    # model.KVCache.read dequantises one layer's keys and values into the compute dtype (in place:
    # no fp32 copies), both alive while the layer attends
    one_layer_kv = rows * cfg.num_key_value_heads * slots * cfg.head_dim * 2 * db if kv_cache == "int8" else 0
    window_act = logits(t) + scores + one_layer_kv + rows * t * cfg.intermediate_size * db * 3
    prefill_act = logits(prompt_tokens + 2) + rows * cfg.num_attention_heads * (prompt_tokens + 2) ** 2 * 4
    activations = max(window_act, prefill_act)

    vq = vq_decode_bytes(width, height, batch, movq_config)
    peak = weights + max(kv + activations, vq)
    setting = {"width": width, "height": height, "batch": batch, "cfg": cfg_guidance, "quantize": quantize,
               "group_size": group_size if quantize == "int4" else None, "kv_cache": kv_cache, "dtype": dtype,
               "prompt_tokens": prompt_tokens, "cache_slots": slots}
    return MemoryEstimate(weights, kv, activations, vq, peak, host, setting)


def vq_decode_bytes(width: int, height: int, batch: int, movq_config=None) -> int:
    """MoVQ weights (float32) + one image's live top-level feature maps + the batch's pixels.
    movq_config: a movq.MoVQConfig (default: the 270M release's)."""
    import torch

    from .movq import MoVQ, MoVQConfig
    movq_config = movq_config or MoVQConfig()
    with torch.device("meta"):
        params = sum(p.numel() for p in MoVQ(movq_config).parameters())
    top = movq_config.ch * movq_config.ch_mult[0]
    return 4 * (params + VQ_LIVE_MAPS * top * width * height + batch * 3 * width * height)


def movq_config_in(folder) -> object | None:
    """The MoVQConfig of the MoVQ weights a model folder ships (the demo does), read from the file's
    header only; None when it ships none (then ai-forever/MoVQGAN, the 270M release, is used)."""
    from pathlib import Path

    from .checkpoint import _read_header
    from .movq import FOLDER_CANDIDATES, config_for
    for name in FOLDER_CANDIDATES:
        path = Path(folder) / name
        if path.is_file() and path.suffix == ".safetensors":
            return config_for({k: tuple(e.shape) for k, e in _read_header(path).items()}, path)
    return None


def suggest(cfg: ModelConfig, width: int, height: int, free_bytes: int, batch: int = 1, cfg_guidance: bool = True,
            dtype: str = "bfloat16", **kw) -> dict | None:
    """The first setting, from the largest to the smallest, whose peak fits free_bytes (None: none does)."""
    for quantize in QUANTIZE_CHOICES:
        for kv in KV_CHOICES:
            est = estimate(cfg, width, height, quantize, kv, batch, cfg_guidance, dtype=dtype, **kw)
            if est.peak_bytes <= free_bytes:
                return {"quantize": quantize, "kv_cache": kv, "peak_bytes": est.peak_bytes}
    return None


def fit_message(cfg: ModelConfig, width: int, height: int, quantize: str, kv_cache: str, batch: int,
                cfg_guidance: bool, free_bytes: int, dtype: str = "bfloat16", **kw) -> str | None:
    """None when the setting fits free_bytes; else an error naming what it needs and what would fit."""
    est = estimate(cfg, width, height, quantize, kv_cache, batch, cfg_guidance, dtype=dtype, **kw)
    if est.peak_bytes <= free_bytes:
        return None
    need = (f"{width}x{height}, batch {batch}, weights {quantize}, KV cache {kv_cache} needs about "
            f"{est.peak_bytes / GIB:.1f} GiB but {free_bytes / GIB:.1f} GiB is free")
    fix = suggest(cfg, width, height, free_bytes, batch, cfg_guidance, dtype=dtype, **kw)
    if fix is not None:
        return (f"{need}. Fix: load the model with quantize={fix['quantize']} and kv_cache={fix['kv_cache']} "
                f"(about {fix['peak_bytes'] / GIB:.1f} GiB).")
    if batch > 1 and suggest(cfg, width, height, free_bytes, 1, cfg_guidance, dtype=dtype, **kw):
        return f"{need}. Fix: generate one image at a time (batch 1), with quantize=int4 and kv_cache=int8."
    return f"{need}, and no quantisation setting fits. Fix: choose a smaller size or free memory on the device."


# ---------------------------------------------------------------------------------------------
# Command line: python -m uni1_core memory

def add_parser(sub, size_type) -> None:
    p = sub.add_parser("memory", help="estimate the memory of a generation (weights, KV cache, peak)")
    p.add_argument("--model", default="demo", help="model folder or 'demo' (only config.json is read)")
    p.add_argument("--config", default=None,
                   help="a config.json to estimate instead of the model's (with the 270M MoVQGAN decoder)")
    p.add_argument("--size", type=size_type, default=None, help="WxH (default: the model's)")
    p.add_argument("--quantize", choices=QUANTIZE_CHOICES, default="none")
    p.add_argument("--group-size", type=int, default=DEFAULT_GROUP_SIZE, choices=GROUP_SIZES)
    p.add_argument("--kv-cache", choices=KV_CHOICES, default="bf16")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--no-cfg", action="store_true", help="no classifier-free guidance (one row per image)")
    p.add_argument("--dtype", default=None, help="activation/weight dtype (default: the config's, else bfloat16)")
    p.add_argument("--prompt-tokens", type=int, default=DEFAULT_PROMPT_TOKENS)
    p.add_argument("--json", action="store_true", help="print the figures as JSON")


def run(args) -> int:
    from pathlib import Path

    from .checkpoint import resolve_model_dir
    folder = resolve_model_dir(args.model)
    cfg = ModelConfig.from_file(Path(args.config) if args.config else folder / "config.json")
    size = args.size or tuple(cfg.raw.get("uni1", {}).get("default_size", (768, 768)))
    dtype = args.dtype or cfg.torch_dtype or "bfloat16"
    est = estimate(cfg, size[0], size[1], args.quantize, args.kv_cache, args.batch, not args.no_cfg,
                   group_size=args.group_size, dtype=dtype, prompt_tokens=args.prompt_tokens,
                   movq_config=None if args.config else movq_config_in(folder))
    print(json.dumps(est.as_dict(), indent=2) if args.json else est.summary())
    return 0


# ---------------------------------------------------------------------------------------------
# The Model Loader node's tooltips

# Lumina-mGPT 2.0's repository ships no config with the 7B's dimensions; its Chameleon config
# defaults are these (hidden 4096, 32 layers, 32 heads, MHA, intermediate 11008), with a
# vocabulary that holds the image ids 155000 .. 155000 + 16384.
CHAMELEON_7B = {"model_type": "chameleon", "vocab_size": 172032, "hidden_size": 4096, "intermediate_size": 11008,
                "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 32,
                "torch_dtype": "bfloat16"}


def widget_tooltip(widget: str) -> str:
    """Tooltip text of the loader's `quantize` / `kv_cache` widget with the estimator's figures."""
    cfg = ModelConfig.from_dict(CHAMELEON_7B)
    gib = lambda b: f"{b / GIB:.1f} GiB"                           # noqa: E731
    if widget == "quantize":
        w = {q: estimate(cfg, 768, 768, q, "int8").weights_bytes for q in QUANTIZE_CHOICES}
        return ("Weight-only quantisation of the decoder, done while loading (or read from a folder written by "
                "`python -m uni1_core quantize`). Weights of Lumina-mGPT 2.0: "
                f"none (bf16) {gib(w['none'])}, int8 {gib(w['int8'])}, int4 {gib(w['int4'])}. Sampling stays exact "
                "for the quantised model; int8 is close to bf16, int4 a little further. With int8/int4 the "
                "embedding stays in system RAM and the output layer keeps only the image rows.")
    kv = {k: estimate(cfg, 768, 768, "int8", k).kv_cache_bytes for k in KV_CHOICES}
    peaks = {(q, k): estimate(cfg, 768, 768, q, k).peak_bytes for q in QUANTIZE_CHOICES for k in KV_CHOICES}
    table = ", ".join(f"{q}+{k} {gib(p)}" for (q, k), p in peaks.items())
    return ("KV cache precision while sampling. auto: int8 when the weights are quantised, else the model dtype. "
            f"At 768x768 with CFG the cache holds bf16 {gib(kv['bf16'])}, int8 {gib(kv['int8'])}. "
            f"Peak per setting (weights+cache, Lumina-mGPT 2.0): {table}.")
