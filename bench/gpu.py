"""GPU benchmark at the 7B's real shape: one decode forward against the memory-bandwidth bound.

    .venv/bin/python bench/gpu.py                     # on a CUDA machine: the 7B shape, bf16
    .venv/bin/python bench/gpu.py --quantize int8 int4 --e2e
    .venv/bin/python bench/gpu.py --tiny              # the same code on the CPU in seconds

The network is Lumina-mGPT 2.0's: a Chameleon-7B decoder (hidden 4096, 32 layers, 32 heads, no
GQA, intermediate 11008) with a vocabulary that holds the image codes (155000 + 16384 ids). The
release ships no config with its dimensions in the reference code, so this is the Chameleon-7B
shape. Random weights are made on the device: no checkpoint, no disk.

What one decode forward costs, per window:
    ar            1 token, 2 rows (CFG: the conditional and the unconditional row)
    sjd           16 tokens, 2 rows
    sjd_coupled   32 tokens plus 4 branch tokens (a tree window), 2 rows
at a context of 1k, 5k and 9.4k cached tokens (9.4k is a whole 768x768 image), eager and compiled.
Beside each time: the bandwidth bound, i.e. the bytes one forward must read (every weight once,
plus the keys and values it attends to) over the card's bandwidth, and the ratio to it.

Then each mode's 768x768 time is projected from its forwards per image token, measured here on the
demo model (the only trained model the pack ships), and the step times; `--e2e` also runs one
real-length 768x768 image of `ar` and `sjd_coupled` end to end (random weights draw random tokens,
but the time per forward is real). Peak memory is torch.cuda.max_memory_allocated.
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uni1_core.model import ModelConfig, Uni1Model          # noqa: E402
from uni1_core.sampler import sample_codes                   # noqa: E402
from uni1_core.sequence import ImageGrid, ImageVocab          # noqa: E402

# Nominal memory bandwidth in bytes/s, by a substring of torch.cuda.get_device_name(). A card not
# listed uses the copy bandwidth measured at start-up (printed either way).
NOMINAL_BANDWIDTH = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12, "A100-SXM4-80GB": 2.04e12,
                     "A100": 1.555e12, "L40S": 0.864e12, "RTX 4090": 1.008e12, "RTX 3090": 0.936e12}

CODE_OFFSET, NUM_CODES = 155000, 16384


def seven_b_shape() -> tuple[ModelConfig, ImageVocab]:
    vocab = ImageVocab(code_offset=CODE_OFFSET, num_codes=NUM_CODES, image_start=8197, image_end=8196,
                       row_end=8803, turn_end=8710, grid_ids={n: 8804 + n for n in range(1, 200)})
    return ModelConfig(vocab_size=CODE_OFFSET + NUM_CODES + 648, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32,
                       max_position_embeddings=10240, rope_theta=10000.0, mask_image_logits=False), vocab


def tiny_shape() -> tuple[ModelConfig, ImageVocab]:
    vocab = ImageVocab(code_offset=64, num_codes=512, image_start=1, image_end=2, row_end=3, turn_end=4,
                       grid_ids={n: 40 + n for n in range(1, 17)})
    return ModelConfig(vocab_size=600, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=4096,
                       mask_image_logits=False), vocab


@dataclass
class Window:
    mode: str
    tokens: int          # chain tokens
    branches: int        # extra tokens hung off the first one (a tree window)

    @property
    def width(self) -> int:
        return self.tokens + self.branches

    @property
    def tree(self) -> list[int] | None:
        if not self.branches:
            return None
        return [-1] + list(range(self.tokens - 1)) + [0] * self.branches


WINDOWS = [Window("ar", 1, 0), Window("sjd", 16, 0), Window("sjd_coupled", 32, 4)]
ROWS = 2                                  # CFG: conditional + unconditional


def build_model(cfg: ModelConfig, device: torch.device, dtype: torch.dtype, quantize: str | None) -> Uni1Model:
    """Random weights made on the device (std 0.02, as a trained model's scale roughly is)."""
    with torch.device("meta"):
        model = Uni1Model(cfg)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            elif name.endswith("bias"):
                p.zero_()
            else:
                p.normal_(0.0, 0.02)
    model.requires_grad_(False).eval()
    if quantize:
        from uni1_core.quantize import quantize_model_      # the quantisation issue's module
        quantize_model_(model, quantize)
    return model


def compiled_forward(model: Uni1Model):
    """The pack's compiled decode step (uni1_core/decode.py): static shapes, CUDA graphs on CUDA."""
    from uni1_core.decode import static_forward
    return static_forward(model)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_forward(forward, model: Uni1Model, cache, window: Window, context: int, repeats: int) -> float:
    """Median seconds of one cached forward of `window` over `context` cached tokens per row."""
    ids = torch.randint(0, model.config.vocab_size, (ROWS, window.width), device=model.device)
    n_valid = torch.full((ROWS,), window.width, dtype=torch.long, device=model.device)
    times = []
    for i in range(repeats + 2):                 # two warm-up calls (and compilation)
        cache.lengths = torch.full((ROWS,), context, dtype=torch.long)
        sync(model.device)
        t0 = time.perf_counter()
        forward(ids, cache=cache, n_valid=n_valid, tree=window.tree)
        sync(model.device)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def bytes_per_forward(model: Uni1Model, context: int, window: Window) -> int:
    """What a forward must read: every weight once (the embedding only its gathered rows) and
    the keys and values of `context + window` slots of each row."""
    weights = sum(t.numel() * t.element_size() for name, t in model.state_dict().items()
                  if "embed_tokens" not in name)
    cfg = model.config
    kv = ROWS * cfg.num_hidden_layers * 2 * (context + window.width) * cfg.num_key_value_heads * cfg.head_dim
    return weights + kv * model.dtype.itemsize


def copy_bandwidth(device: torch.device) -> float:
    """Bytes/s of a large device copy (read + write), a measured stand-in for the nominal figure."""
    n = (1 << 28) if device.type == "cuda" else (1 << 24)
    a = torch.empty(n, dtype=torch.float32, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(5):
        b.copy_(a)
    sync(device)
    return 5 * 2 * a.numel() * 4 / (time.perf_counter() - t0)


def card_bandwidth(device: torch.device) -> tuple[str, float, str]:
    measured = copy_bandwidth(device)
    if device.type != "cuda":
        return "cpu", measured, "measured copy"
    name = torch.cuda.get_device_name(device)
    for key, value in NOMINAL_BANDWIDTH.items():
        if key in name:
            return name, value, f"nominal (copy measured {measured / 1e12:.2f} TB/s)"
    return name, measured, "measured copy"


def demo_forwards_per_token(device: torch.device, seeds: int) -> dict[str, float]:
    """Forwards per image token of each mode on the demo model, at its default policy."""
    from uni1_core.pipeline import Uni1Pipeline

    pipe = Uni1Pipeline.from_pretrained("demo", device=device)
    out = {}
    for window in WINDOWS:
        result = pipe.sample("two red circles to the left of a blue square", mode=window.mode,
                             seeds=list(range(seeds)))
        stats = result.stats if isinstance(result.stats, dict) else result.stats.to_dict()
        out[window.mode] = stats["forwards"] / stats["image_tokens"]
    return out


def project_image_seconds(step_seconds: dict[int, float], forwards_per_token: float, stream_len: int) -> float:
    """A whole image's decode time: forwards spread evenly over the stream, each costing the step
    time at its context (linear between the measured contexts)."""
    contexts = sorted(step_seconds)
    n_forwards = max(1, round(forwards_per_token * stream_len))
    total = 0.0
    for i in range(n_forwards):
        ctx = stream_len * (i + 0.5) / n_forwards
        lo = max([c for c in contexts if c <= ctx], default=contexts[0])
        hi = min([c for c in contexts if c >= ctx], default=contexts[-1])
        w = 0.0 if hi == lo else (ctx - lo) / (hi - lo)
        total += (1 - w) * step_seconds[lo] + w * step_seconds[hi]
    return total


def end_to_end(model: Uni1Model, vocab: ImageVocab, mode: str, width: int, compiled: bool) -> dict:
    """One real-length image of random weights: time per forward and peak memory."""
    grid = ImageGrid(width, width)
    kwargs = {"compile": compiled} if "compile" in inspect.signature(sample_codes).parameters else {}
    if model.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = sample_codes(model, vocab, grid, [list(range(1, 40))], mode=mode, policy="uni1", seeds=[0], **kwargs)
    sync(model.device)
    seconds = time.perf_counter() - t0
    stats = result.stats if isinstance(result.stats, dict) else result.stats.to_dict()
    peak = torch.cuda.max_memory_allocated() if model.device.type == "cuda" else None
    return {"mode": mode, "seconds": seconds, "forwards": stats["forwards"],
            "ms_per_forward": 1000 * seconds / max(1, stats["forwards"]), "peak_bytes": peak}


def run(args) -> dict:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.tiny:
        (cfg, vocab), contexts, image_px, repeats = tiny_shape(), [64, 256, 1000], 64, 3
    else:
        (cfg, vocab), contexts, image_px, repeats = seven_b_shape(), [1024, 5120, 9400], 768, args.repeats
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    name, bandwidth, source = card_bandwidth(device)
    print(f"device: {name}; bandwidth {bandwidth / 1e12:.3f} TB/s ({source}); dtype {dtype}; "
          f"shape hidden {cfg.hidden_size} x {cfg.num_hidden_layers} layers, vocab {cfg.vocab_size}")
    stream_len = ImageGrid(image_px, image_px).stream_len
    fpt = demo_forwards_per_token(device, seeds=args.seeds)
    print("demo model forwards per image token: " + ", ".join(f"{m} {v:.3f}" for m, v in fpt.items()))
    report = {"device": name, "bandwidth": bandwidth, "bandwidth_source": source, "rows": [], "projections": [],
              "end_to_end": [], "forwards_per_token": fpt}
    header = f"{'weights':7} {'mode':12} {'window':>6} {'context':>7} {'path':8} {'ms':>9} {'bound ms':>9} {'ratio':>6}"
    print(header)
    for quant in [None] + [q for q in args.quantize if q != "none"]:
        label = quant or str(dtype).removeprefix("torch.")
        model = build_model(cfg, device, dtype, quant)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
        paths = [("eager", model)]
        compiled = None if args.no_compile else compiled_forward(model)
        if compiled is not None:                 # None: a model the static step cannot serve
            paths.append(("compiled", compiled))
        # the compiled step's cache: CUDA graphs write into it in place, at addresses that stay
        cache = (paths[-1][1] if len(paths) > 1 else model).new_cache(ROWS, max(contexts) + 128)
        steps = {}
        for path, forward in paths:
            for window in WINDOWS:
                for ctx in contexts:
                    try:
                        sec = time_forward(forward, model, cache, window, ctx, repeats)
                    except Exception as err:           # a compiler that does not work here: say so
                        print(f"{label:7} {window.mode:12} {path}: failed ({type(err).__name__}: {err})"[:200])
                        break
                    bound = bytes_per_forward(model, ctx, window) / bandwidth
                    steps[(path, window.mode, ctx)] = sec
                    row = {"weights": label, "mode": window.mode,
                           "window": window.width, "context": ctx, "path": path, "ms": 1000 * sec,
                           "bound_ms": 1000 * bound, "ratio": sec / bound}
                    report["rows"].append(row)
                    print(f"{row['weights']:7} {window.mode:12} {window.width:6d} {ctx:7d} {path:8} "
                          f"{row['ms']:9.3f} {row['bound_ms']:9.3f} {row['ratio']:6.2f}")
        for path, _ in paths:
            for window in WINDOWS:
                per_ctx = {ctx: steps[(path, window.mode, ctx)] for ctx in contexts if (path, window.mode, ctx) in steps}
                if len(per_ctx) == len(contexts):
                    sec = project_image_seconds(per_ctx, fpt[window.mode], stream_len)
                    report["projections"].append({"weights": label, "path": path, "mode": window.mode,
                                                  "image_seconds": sec})
                    print(f"projected {image_px}x{image_px} {window.mode:12} {label:7} {path:8}: {sec:8.2f} s")
        if device.type == "cuda":
            print(f"peak memory {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
        if args.e2e or args.tiny:
            del cache
            for mode in ("ar", "sjd_coupled"):
                e2e = end_to_end(model, vocab, mode, image_px, compiled=not args.no_compile)
                e2e["weights"] = label
                report["end_to_end"].append(e2e)
                peak = "" if e2e["peak_bytes"] is None else f", peak {e2e['peak_bytes'] / 2**30:.2f} GiB"
                print(f"end to end {image_px}x{image_px} {mode:12}: {e2e['seconds']:.2f} s, "
                      f"{e2e['forwards']} forwards, {e2e['ms_per_forward']:.2f} ms/forward{peak}")
        del model
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model on the CPU (seconds): keeps the code alive")
    parser.add_argument("--device", default=None)
    parser.add_argument("--quantize", nargs="*", default=[], choices=["none", "int8", "int4"])
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--e2e", action="store_true", help="also one real-length image of ar and sjd_coupled")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--seeds", type=int, default=2, help="demo-model images per mode for forwards per token")
    parser.add_argument("--json", default=None, help="write the report here")
    args = parser.parse_args(argv)
    report = run(args)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
