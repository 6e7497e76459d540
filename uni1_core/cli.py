"""Command line: `python -m uni1_core generate | plan | convert-movq | memory | quantize` (no ComfyUI needed)."""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from .conditioning import CONDITIONINGS
from .limits import (MAX_BATCH, RequestError, batch_seeds, check_branches, check_window,
                     is_out_of_memory, resolve_device)


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
    if w <= 0 or h <= 0:
        raise argparse.ArgumentTypeError(f"size {text!r} has a side of 0 or less; give WxH in pixels, "
                                         "e.g. 768x768 (leave --size out for the model's default)")
    return w, h


# ----------------------------------------------------------------------------- argument checks

def _check_args(args) -> None:
    """Refuse a bad command line before anything is loaded or sampled: every check is instant,
    so a typo never costs a model load, and a bad output path never costs a finished image."""
    if args.command in ("generate", "plan") and not args.prompt.strip():
        raise RequestError("the prompt is empty: say what to draw, e.g. --prompt \"a red circle\"")
    if args.command == "convert-movq":
        if not Path(args.src).is_file():
            raise RequestError(f"convert-movq: {args.src} is not a file (give the MoVQGAN .ckpt)")
        _check_output(args.dst, "convert-movq destination")
    if args.command != "generate":
        return
    from .policy import PRESETS
    batch_seeds(args.seed, args.batch)                  # the batch's and the seed's range
    check_window(args.window)                          # >= 1; clamped to the image's stream later
    check_branches(args.branches)
    if args.regional and args.no_plan:
        raise RequestError("--regional guides each planned object's box, so it needs the plan: drop --no-plan")
    if args.preset is not None and args.preset not in PRESETS:
        raise RequestError(f"unknown preset {args.preset!r}: choose one of {', '.join(PRESETS)}")
    _policy(args, PRESETS[args.preset or "uni1"])     # cfg, temperature, top-k, top-p in range
    args.device = resolve_device(args.device)
    _check_output(args.out, "--out", image=True)
    if args.stats_json:
        _check_output(args.stats_json, "--stats-json")
    if args.movq is not None:
        _check_movq(args.movq)


def _policy(args, base):
    """The sampling policy: the preset (or the model's default) with the flags' changes."""
    changes = {k: v for k, v in (("cfg_scale", args.cfg), ("temperature", args.temperature),
                                 ("top_k", args.top_k), ("top_p", args.top_p)) if v is not None}
    return base.replace(**changes)


def _check_output(name: str, flag: str, image: bool = False) -> None:
    """A file we will be able to write: not a folder, in a folder we can create and write to,
    and (for images) with an extension PIL can save."""
    path = Path(name)
    if path.is_dir() or name.endswith(("/", os.sep)):
        raise RequestError(f"{flag} {name} is a folder; give a file name, e.g. {path / 'image.png'}")
    if image:
        from PIL import Image
        Image.init()
        formats = Image.registered_extensions()
        if formats.get(path.suffix.lower()) not in Image.SAVE:
            raise RequestError(f"{flag} {name}: cannot save a {path.suffix or 'extension-less'} image; "
                               "end the name in .png (or .jpg, .webp)")
    folder = path.parent if str(path.parent) else Path(".")
    existing = next(p for p in [folder, *folder.parents, Path(".")] if p.exists() or p == Path("."))
    if not existing.is_dir():
        raise RequestError(f"{flag} {name}: {existing} is a file, so no folder can be made there")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise RequestError(f"{flag} {name}: the folder {existing} is not writable")


def _check_movq(name: str) -> None:
    """A MoVQ weights file that exists (a Hugging Face repo id is resolved when loaded, which
    also happens before sampling)."""
    path = Path(name)
    if path.exists():
        if not path.is_file():
            raise RequestError(f"--movq {name} is a folder; give the weights file "
                               "(movq.safetensors or movqgan_270M.ckpt)")
        return
    repo_id = (name.count("/") == 1 and not name.startswith((".", "/", "~"))
               and path.suffix not in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"))
    if not repo_id:
        raise RequestError(f"--movq file {name} does not exist (give a weights file, or a Hugging Face "
                           "repo id such as ai-forever/MoVQGAN)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m uni1_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="prompt -> plan -> image tokens -> PNG")
    gen.add_argument("--prompt", required=True)
    gen.add_argument("--out", required=True, help="PNG path (batch > 1 appends _0, _1, ...)")
    gen.add_argument("--seed", type=int, default=0, help="-2^63 .. 2^64-1; -1 and 2^64-1 are the same seed")
    gen.add_argument("--batch", type=int, default=1,
                     help=f"images per call (1 to {MAX_BATCH}), seeds seed, seed+1, ... (mod 2^64)")
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
    gen.add_argument("--conditioning", choices=CONDITIONINGS, default=None,
                     help="what the model reads: prompt+plan (the prompt, then what the plan is sure of), plan "
                          "(the plan's sentence), prompt (unplanned). Default: the model's (demo: plan, "
                          "Lumina-mGPT 2.0: prompt+plan)")
    gen.add_argument("--no-plan", action="store_true", help="same as --conditioning prompt")
    gen.add_argument("--regional", action="store_true", help="plan-guided regional guidance")
    gen.add_argument("--model", default="demo", help="model folder, Hugging Face repo id, or 'demo'")
    gen.add_argument("--movq", default=None, help="MoVQGAN weights (default: beside the model)")
    gen.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    gen.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    gen.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                     help="compile the decode step with torch.compile (default: on for CUDA, off on CPU)")
    gen.add_argument("--stats-json", default=None, help="write sampling statistics here")
    gen.add_argument("--quiet", action="store_true", help="no progress bar")

    plan = sub.add_parser("plan", help="print the reasoning plan of a prompt as JSON")
    plan.add_argument("--prompt", required=True)
    plan.add_argument("--conditioning", choices=CONDITIONINGS, default=None,
                      help="print the text a model without grounding reads for this choice instead of the JSON")
    plan.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"))
    plan.add_argument("--device", default=None, help="cpu, cuda, mps (default: cuda if available)")
    plan.add_argument("--quiet", action="store_true", help="no progress bar")
    add_reasoner_flags(gen)
    add_reasoner_flags(plan)

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


# -- the reasoner (issue 18): an instruct LLM plans the prompt ------------------------------------

def add_reasoner_flags(parser) -> None:
    parser.add_argument("--reasoner", default=None,
                        help="plan with this Qwen2.5-Instruct / Qwen3 folder (or repo id) instead of the rules")
    parser.add_argument("--no-think", action="store_true", help="reasoner: answer without thinking (Qwen3)")
    parser.add_argument("--reasoner-tokens", type=int, default=1024,
                        help="reasoner: token budget of the thinking, and of the answer")
    parser.add_argument("--reasoner-temperature", type=float, default=0.6, help="reasoner: 0 is greedy")
    parser.add_argument("--reasoner-seed", type=int, default=0)


def reason(args, device, dtype):
    """The reasoner's ReasonedPlan for args.prompt; thinking, detailed prompt and notes on stderr."""
    from .reasoner import Reasoner
    from .textgen import TextSettings
    reasoner = Reasoner.from_pretrained(args.reasoner, dtype=dtype, device=device)
    settings = TextSettings(max_new_tokens=args.reasoner_tokens,
                            max_thinking_tokens=0 if args.no_think else args.reasoner_tokens,
                            temperature=args.reasoner_temperature, seed=args.reasoner_seed)
    result = reasoner.plan(args.prompt, settings, on_progress=None if args.quiet else ProgressBar("reasoner"))
    if result.thinking:
        print(f"thinking:\n{result.thinking}\n", file=sys.stderr)
    print(f"detailed prompt: {result.detailed_prompt}\n{result.report()}", file=sys.stderr)
    return result


def reasoned_stats(result) -> dict:
    return {"source": result.source, "messages": result.messages, "disagreements": result.disagreements,
            "answer_tokens": [len(a.ids) for a in result.attempts], "detailed_prompt": result.detailed_prompt}


def _generate(args) -> int:
    import torch

    from .movq import tensor_to_pil
    from .pipeline import Uni1Pipeline
    from .policy import PRESETS

    dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
    reasoned = reason(args, args.device, dtype) if args.reasoner else None    # before the image model loads
    pipe = Uni1Pipeline.from_pretrained(args.model, dtype=dtype, device=args.device,
                                        quantize=None if args.quantize == "none" else args.quantize,
                                        group_size=args.group_size, kv_cache=args.kv_cache)
    policy = _policy(args, PRESETS[args.preset] if args.preset else pipe.default_policy)
    width, height = args.size or pipe.default_size

    conditioning = "prompt" if args.no_plan else (args.conditioning or pipe.default_conditioning)
    if reasoned is not None:      # its plan's prompt is the detailed description: what "prompt" reads
        plan = reasoned.plan
        print(f"plan: {plan.summary()}")
        prompt = plan
    elif conditioning != "prompt" or args.regional:
        plan = pipe.plan(args.prompt)
        print(f"plan: {plan.summary()}")
        prompt = plan
    else:
        prompt = args.prompt
    seeds = batch_seeds(args.seed, args.batch)
    movq = pipe.load_movq(args.movq)          # before sampling: a bad file costs no sampling
    result = pipe.sample(prompt, width, height, mode=args.mode, policy=policy, seeds=seeds,
                         window=args.window, coupling=args.coupling, branches=args.branches,
                         regional=args.regional, conditioning=conditioning, compile=args.compile,
                         use_plan=not args.no_plan,
                         on_progress=None if args.quiet else ProgressBar(f"{args.mode} {width}x{height}"))
    print(f"conditioning: {result.conditioning}")
    with torch.no_grad():
        pixels = movq.decode(result.codes.to(pipe.device))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    paths = [out] if len(seeds) == 1 else [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(len(seeds))]
    for path, image in zip(paths, pixels):
        tensor_to_pil(image).save(path)
    stats = result.stats
    print(f"{stats.image_tokens} image tokens, {stats.forwards} forwards "
          f"({stats.forwards_per_token:.3f} per token), {stats.seconds:.2f} s")
    if args.stats_json:
        data = dict(stats.to_dict(), **({"reasoner": reasoned_stats(reasoned)} if reasoned is not None else {}))
        Path(args.stats_json).write_text(json.dumps(data, indent=2))
    for path in paths:
        print(f"wrote {path}")
    return 0


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        _check_args(args)
        if args.command == "generate":
            return _generate(args)
        if args.command == "plan":
            from .conditioning import model_text
            from .plan import make_plan
            if args.reasoner:
                import torch
                dtype = args.dtype if args.dtype == "auto" else getattr(torch, args.dtype)
                plan = reason(args, resolve_device(args.device), dtype).plan
            else:
                plan = make_plan(args.prompt)
            print(model_text(plan, args.conditioning)[1] if args.conditioning else plan.to_json())
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
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        detail = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"error: out of memory ({detail}). Fix: a smaller --batch, size or --window, no "
              "--regional, or --dtype bfloat16", file=sys.stderr)
        return 2
    return 1
