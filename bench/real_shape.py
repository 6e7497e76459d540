"""Real-shape memory proof on a CPU: a 7B-shaped checkpoint loaded with int8 and int4 weights, the
768x768 CFG cache in int8, the prefill and three sjd_coupled-size forwards; measured peak RSS
beside the estimator's figure (uni1_core/memory.py) and the time per forward.

    .venv/bin/python bench/real_shape.py                    # 7B shape: ~16 GB on disk, ~12 GB RAM
    .venv/bin/python bench/real_shape.py --shape small      # seconds: a smoke run (tests use it)
    .venv/bin/python bench/real_shape.py --shape medium     # ~1 GB checkpoint, ~1.5 GB RAM
    .venv/bin/python bench/real_shape.py --dir /big/disk --settings int8,int4 --kv-cache int8 --json out.json

Shape: Lumina-mGPT 2.0's repository ships no config with the 7B's dimensions, so this is the
Chameleon-7B shape (memory.CHAMELEON_7B: hidden 4096, 32 layers, 32 heads, MHA, intermediate
11008, vocabulary 172032, which holds the image ids 155000 .. 155000 + 16384).

Steps:
  1. write random bf16 weights (std 0.02) with the Hugging Face key names as sharded safetensors
     (shards of --shard-gb) plus config.json; deleted at the end unless --keep;
  2. per setting, a fresh process (clean peak): load_quantized streams the checkpoint (int8 or
     int4 decoder, image-only lm_head, the embedding read row by row from its file); new_cache for the CFG pair of
     rows and the sampler's slot count; the prefill of --prompt-tokens tokens (as the sampler
     runs it: full logits); the cache lengths moved to the end of the image (the worst case:
     every forward attends to ~9.4k keys); three forwards of the sjd_coupled shape (a window of 32
     and 4 branches off its first token, a tree), each rolled back;
  3. a table: the estimator's sampling-phase figure (weights + KV cache + activations; the MoVQ
     decode is not run here) beside the measured peak RSS growth over the resident size after the
     imports (VmHWM, reset before loading), their ratio, the absolute peak, load time and the time
     per forward.
The runtime (Python + torch, ~0.3 GB) is in the absolute peak but not in the growth or the
estimate. glibc keeps some freed temporaries; `--pin-malloc` sets MALLOC_MMAP_THRESHOLD_ so that
it returns them at once (what tests/test_quantize.py does).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

SHAPES = {
    "7b": None,   # memory.CHAMELEON_7B, 768x768
    "small": {"model_type": "chameleon", "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704,
              "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 4,
              "torch_dtype": "bfloat16", "uni1": {"image_token_offset": 2048, "num_image_codes": 2048}},
    # a 1/4-width, 1/4-depth 7B: the estimator's accuracy with a few GB, where tensors dominate
    "medium": {"model_type": "chameleon", "vocab_size": 65536, "hidden_size": 2048, "intermediate_size": 5504,
               "num_hidden_layers": 8, "num_attention_heads": 16, "num_key_value_heads": 16,
               "torch_dtype": "bfloat16", "uni1": {"image_token_offset": 40000, "num_image_codes": 16384}},
}
DEFAULT_SIZE = {"7b": (768, 768), "small": (128, 128), "medium": (512, 512)}
WINDOW, BRANCHES = 32, 4


def shape_config(shape: str) -> dict:
    from uni1_core.memory import CHAMELEON_7B
    return dict(SHAPES[shape] or {**CHAMELEON_7B, "uni1": {"image_token_offset": 155000, "num_image_codes": 16384}})


# ---------------------------------------------------------------------------------------------
# 1. the checkpoint

def write_checkpoint(folder: Path, raw: dict, shard_bytes: int, seed: int = 0) -> int:
    """Random bf16 weights under the real key names, sharded; returns the bytes written."""
    import torch
    from safetensors.torch import save_file

    from uni1_core.model import ModelConfig, Uni1Model
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(raw, indent=2))
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in Uni1Model(ModelConfig.from_dict(raw)).state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    weight_map, shard, size, total, n = {}, {}, 0, 0, 0

    def flush():
        nonlocal shard, size, n
        n += 1
        name = f"model-{n:05d}.safetensors"
        save_file(shard, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in shard})
        shard, size = {}, 0

    for key, shape in shapes.items():
        t = torch.empty(shape, dtype=torch.bfloat16)
        for i in range(0, shape[0], 4096):          # float32 randoms a block of rows at a time
            block = t[i:i + 4096]
            block.copy_(torch.randn(block.shape, generator=g) * 0.02 + (1.0 if key.endswith("norm.weight") else 0.0))
        nbytes = t.numel() * 2
        if shard and size + nbytes > shard_bytes:
            flush()
        shard[key], size, total = t, size + nbytes, total + nbytes
    flush()
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}, indent=1))
    return total


# ---------------------------------------------------------------------------------------------
# 2. one setting, in its own process

def _status(field: str) -> int:
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field))


def run_setting(folder: Path, quantize: str, kv_cache: str, width: int, height: int, prompt_tokens: int) -> dict:
    import torch

    from uni1_core import memory
    from uni1_core.model import ModelConfig
    from uni1_core.quantized_load import load_quantized

    cfg = ModelConfig.from_file(folder / "config.json")
    uni1 = cfg.raw["uni1"]
    keep_ids = list(range(uni1["image_token_offset"], uni1["image_token_offset"] + uni1["num_image_codes"]))
    # stand-ins for the row-end and end-of-image ids (this checkpoint has no tokenizer; which two
    # ids they are changes no figure)
    keep_ids += [uni1["image_token_offset"] - 2, uni1["image_token_offset"] - 1]
    torch.ones(1) @ torch.ones(1)
    open("/proc/self/clear_refs", "w").write("5")          # peak (VmHWM) := resident size now
    baseline = _status("VmRSS:")
    t0 = time.perf_counter()
    model = load_quantized(folder, quantize, dtype=torch.bfloat16, keep_ids=keep_ids)
    load_s = time.perf_counter() - t0
    after_load = _status("VmHWM:")

    est = memory.estimate(cfg, width, height, quantize, kv_cache, 1, True, dtype="bfloat16",
                          prompt_tokens=prompt_tokens, window=WINDOW, branches=BRANCHES)
    slots, rows = est.setting["cache_slots"], 2
    cache = model.new_cache(rows, slots, dtype="int8" if kv_cache == "int8" else None)
    g = torch.Generator().manual_seed(1)
    with torch.inference_mode():
        prompt = torch.randint(0, cfg.vocab_size, (rows, prompt_tokens), generator=g)
        t0 = time.perf_counter()
        model(prompt, cache=cache)
        prefill_s = time.perf_counter() - t0
        # the end of the image: every later forward attends to (almost) the whole cache
        end = slots - WINDOW - BRANCHES
        cache.lengths = torch.full((rows,), end)
        tree = [-1, *range(WINDOW - 1)] + [0] * BRANCHES
        window = torch.randint(keep_ids[0], keep_ids[0] + 1024, (rows, WINDOW + BRANCHES), generator=g)
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            model(window, cache=cache, tree=tree)
            times.append(time.perf_counter() - t0)
            cache.lengths = torch.full((rows,), end)          # roll back
    peak = _status("VmHWM:")
    sampling_estimate = est.weights_bytes + est.kv_cache_bytes + est.activations_bytes
    return {"quantize": quantize, "kv_cache": kv_cache, "size": f"{width}x{height}", "cache_slots": slots,
            "baseline_rss": baseline, "peak_rss": peak, "peak_growth": peak - baseline,
            "load_peak_growth": after_load - baseline, "estimate_sampling": sampling_estimate,
            "estimate": est.as_dict(), "ratio": (peak - baseline) / sampling_estimate,
            "load_s": load_s, "prefill_s": prefill_s, "forward_s": times}


# ---------------------------------------------------------------------------------------------
# 3. the driver

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="7b")
    ap.add_argument("--dir", default=None, help="where the checkpoint is written (default: a temporary folder)")
    ap.add_argument("--settings", default="int8,int4", help="comma-separated: int8, int4")
    ap.add_argument("--kv-cache", choices=("int8", "bf16"), default="int8")
    ap.add_argument("--size", default=None, help="WxH (default 768x768 for 7b)")
    ap.add_argument("--prompt-tokens", type=int, default=128)
    ap.add_argument("--shard-gb", type=float, default=2.0)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--pin-malloc", action="store_true", help="MALLOC_MMAP_THRESHOLD_=131072 in the children")
    ap.add_argument("--keep", action="store_true", help="keep the checkpoint")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    width, height = (int(v) for v in (args.size or "x".join(map(str, DEFAULT_SIZE[args.shape]))).split("x"))

    if args.child:                       # one setting; prints its JSON line
        import torch
        if args.threads:
            torch.set_num_threads(args.threads)
        print(json.dumps(run_setting(Path(args.child), args.settings, args.kv_cache, width, height,
                                     args.prompt_tokens)))
        return 0

    if not sys.platform.startswith("linux"):
        print("bench/real_shape.py reads /proc/self/status (peak RSS): Linux only", file=sys.stderr)
        return 2
    base = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="uni1_real_shape_"))
    folder = base / f"random_{args.shape}_bf16"
    results = []
    try:
        if not (folder / "model.safetensors.index.json").is_file():
            t0 = time.perf_counter()
            total = write_checkpoint(folder, shape_config(args.shape), int(args.shard_gb * 1e9))
            print(f"wrote {folder}: {total / 1e9:.2f} GB of bf16 weights in {time.perf_counter() - t0:.0f} s",
                  flush=True)
        env = dict(os.environ)
        if args.pin_malloc:
            env["MALLOC_MMAP_THRESHOLD_"] = "131072"
        for setting in args.settings.split(","):
            cmd = [sys.executable, __file__, "--child", str(folder), "--settings", setting, "--kv-cache", args.kv_cache,
                   "--size", f"{width}x{height}", "--prompt-tokens", str(args.prompt_tokens)]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if out.returncode != 0:
                print(out.stderr, file=sys.stderr)
                return out.returncode
            results.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print_row(results[-1], header=len(results) == 1)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
            if not args.dir:
                shutil.rmtree(base, ignore_errors=True)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


def print_row(r: dict, header: bool) -> None:
    gb = 1e9
    if header:
        print(f"{'setting':14s} {'estimate':>9s} {'measured':>9s} {'ratio':>6s} {'abs peak':>9s} {'load':>7s} "
              f"{'prefill':>8s} {'s/forward':>10s}   (GB = 1e9 bytes; measured = peak RSS growth)")
    name = f"{r['quantize']}+kv {r['kv_cache']}"
    print(f"{name:14s} {r['estimate_sampling'] / gb:8.2f}G {r['peak_growth'] / gb:8.2f}G {r['ratio']:6.3f} "
          f"{r['peak_rss'] / gb:8.2f}G {r['load_s']:6.1f}s {r['prefill_s']:7.2f}s "
          f"{sum(r['forward_s']) / len(r['forward_s']):9.2f}s", flush=True)


if __name__ == "__main__":
    sys.exit(main())
