"""Command line: `python -m uni1_core generate | plan | convert-movq | memory | quantize` (no ComfyUI needed)."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


class ProgressBar:
    """A one-line text progress bar on stderr (redrawn at most ten times a second)."""

    def __init__(self, label: str, stream=sys.stderr, width: int = 30):
        self.label, self.stream, self.width = label, stream, width
        self.start = self.last = time.perf_counter()

    def __call__(self, done: int, total: int):
        now = time.perf_counter()
        if done < total and now - self.last < 0.1:
            return
        self.last = now
        filled = int(self.width * done / max(total, 1))
        rate = done / max(now - self.start, 1e-9)
        self.stream.write(f"\r{self.label} [{'#' * filled}{'.' * (self.width - filled)}] "
                          f"{done}/{total} tokens {rate:6.1f} tok/s")
        if done >= total:
            self.stream.write("\n")
        self.stream.flush()


def _size(text: str):
    try:
        w, h = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like 768x768, got {text!r}") from None
    return w, h


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uni1_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="prompt -> plan -> image tokens -> PNG")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", required=True, help="PNG path (batch > 1 appends _0, _1, ...)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--batch", type=int, default=1, help="images per call, seeds seed, seed+1, ...")
    gen.add_argument("--mode", choices=("ar", "sjd", "sjd_coupled"), default="sjd_coupled")
    gen.add_argument("--window", type=int, default=None, help="draft window (default per mode)")
    gen.add_argument("--coupling", choices=("maximal", "gumbel"), default="maximal")
    gen.add_argument("--branches", type=int, default=None,
                     help="alternatives scored for the first draft of each window (default: 4 for sjd_coupled)")
    gen.add_argument("--preset", default=None, help="sampling preset: uni1, lumina_ar, lumina_sjd")
    gen.add_argument("--cfg", type=float, default=None)
    gen.add_argument("--temperature", type=float, default=None)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--size", type=_size, default=None, help="WxH, e.g. 768x768 (default: the model's)")
    gen.add_argument("--no-plan", action="store_true", help="condition on the raw prompt")
    gen.add_argument("--regional", action="store_true", help="plan-guided regional guidance")
    gen.add_argument("--model", default="demo", help="model folder, Hugging Face repo id, or 'demo'")
    gen.add_argument("--movq", default=None, help="MoVQGAN weights (default: beside the model)")
    gen.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    gen.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    gen.add_argument("--stats-json", default=None, help="write sampling statistics here")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    plan = sub.add_parser("plan", help="print the reasoning plan of a prompt as JSON")
    plan.add_argument("--prompt", required=True)

    conv = sub.add_parser("convert-movq", help="MoVQGAN .ckpt -> .safetensors (read without unpickling code)")
    conv.add_argument("src")
    conv.add_argument("dst")

    # memory and quantisation (uni1_core.memory, uni1_core.quantized_load)
    from .memory import add_parser as add_memory_parser
    from .quantized_load import add_parser as add_quantize_parser
    add_memory_parser(sub, _size)
    add_quantize_parser(sub)
    gen.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                     help="weight-only quantisation of the decoder (int8: half the memory, int4: a quarter)")
    gen.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64, 128, 256)")
    gen.add_argument("--kv-cache", choices=("auto", "bf16", "int8"), default="auto",
                     help="int8: half the KV cache memory (auto: int8 when the weights are quantised)")
    return parser


def _generate(args) -> int:
    import dataclasses

    import torch

    from .movq import tensor_to_pil
    from .pipeline import Uni1Pipeline
    from .policy import PRESETS

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    pipe = Uni1Pipeline.from_pretrained(args.model, dtype=dtype, device=device,
                                        quantize=None if args.quantize == "none" else args.quantize,
                                        group_size=args.group_size, kv_cache=args.kv_cache)
    policy = PRESETS[args.preset] if args.preset else pipe.default_policy
    changes = {k: v for k, v in (("cfg_scale", args.cfg), ("temperature", args.temperature),
                                 ("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
    policy = dataclasses.replace(policy, **changes)
    width, height = args.size or pipe.default_size

    if not args.no_plan:
        plan = pipe.plan(args.prompt)
        print(f"plan: {plan.summary()}")
        prompt = plan
    else:
        prompt = args.prompt
    seeds = [args.seed + i for i in range(args.batch)]
    result = pipe.sample(prompt, width, height, mode=args.mode, policy=policy, seeds=seeds,
                         window=args.window, coupling=args.coupling, branches=args.branches,
                         regional=args.regional,
                         use_plan=not args.no_plan,
                         on_progress=None if args.quiet else ProgressBar(f"{args.mode} {width}x{height}"))
    if result.plan is not None:
        print(f"conditioning: {result.conditioning}")
    movq = pipe.load_movq(args.movq)
    with torch.no_grad():
        pixels = movq.decode(result.codes.to(pipe.device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(seeds) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(seeds))]
    for path, image in zip(paths, pixels):
        tensor_to_pil(image).save(path)
    stats = result.stats
    print(f"{stats['image_tokens']} image tokens, {stats['forwards']} forwards "
          f"({stats['forwards_per_token']:.3f} per token), {stats['seconds']:.2f} s")
    if args.stats_json:
        Path(args.stats_json).write_text(json.dumps(stats, indent=2))
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.command == "generate":
            return _generate(args)
        if args.command == "plan":
            from .plan import make_plan
            print(make_plan(args.prompt).to_json())
            return 0
        if args.command == "memory":
            from .memory import run
            return run(args)
        if args.command == "quantize":
            from .quantized_load import run
            return run(args)
        if args.command == "convert-movq":
            from .movq import convert_ckpt_to_safetensors
            convert_ckpt_to_safetensors(args.src, args.dst)
            print(f"wrote {args.dst}")
            return 0
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 1
