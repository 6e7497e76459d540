"""mini-GenEval: prompt faithfulness of a model, per GenEval category, under several settings.

    python bench/geneval_mini.py                      # the demo model, every setting, seeds 0 1
    python bench/geneval_mini.py --settings plan,raw --seeds 0 --limit 24
    python bench/geneval_mini.py --settings plan --quantize int8     # (or int4 [--group-size 32])

Each prompt of bench/prompts_geneval_mini.json (free-form phrasings in the GenEval categories:
single object, two objects, counting, colours, position, colour attribution) is generated once
per seed and judged by the deterministic evaluator in bench/geneval.py. Settings:

    raw            the prompt as typed (no plan), sjd_coupled
    plan           the planner's canonical text, sjd_coupled; for a model that declares grounding
                   (the demo model) followed by the layout map
    plan_text      the planner's sentence without the layout map, sjd_coupled
    plan_regional  the plan plus regional guidance from its layout, sjd_coupled
    plan_ar        the plan, plain autoregressive sampling
    plan_sjd       the plan, speculative Jacobi decoding

ar, sjd and sjd_coupled draw from the same distribution (the samplers are exact), so their
scores may differ only by sampling noise; the table prints that noise (one standard error) so
the comparison can be read. Speed columns: model forwards per image token and seconds per image
(sampling only; decoding is the same for every setting).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.geneval import evaluate, score  # noqa: E402
from uni1_core.movq import tensor_to_pil  # noqa: E402
from uni1_core.pipeline import Uni1Pipeline  # noqa: E402

SETTINGS = {
    "raw": dict(use_plan=False, regional=False, mode="sjd_coupled"),
    "plan": dict(use_plan=True, regional=False, mode="sjd_coupled"),
    "plan_text": dict(use_plan=True, grounded=False, regional=False, mode="sjd_coupled"),
    "plan_regional": dict(use_plan=True, regional=True, mode="sjd_coupled"),
    "plan_ar": dict(use_plan=True, regional=False, mode="ar"),
    "plan_sjd": dict(use_plan=True, regional=False, mode="sjd"),
}
TAGS = ("single_object", "two_object", "counting", "colors", "position", "color_attr")


def run_setting(pipe, movq, prompts, seeds, setting, policy, save_dir=None):
    """Score every prompt under one setting; returns (per-tag scores, forwards/token, s/image, records)."""
    kw = SETTINGS[setting]
    results, records = [], []
    forwards = tokens = seconds = images = 0.0
    for i, item in enumerate(prompts):
        gen = pipe.sample(item["prompt"], seeds=seeds, policy=policy, **kw)
        stats = gen.stats
        forwards += stats.forwards
        tokens += stats.image_tokens
        seconds += stats.seconds
        images += len(seeds)
        pics = tensor_to_pil(movq.decode(gen.codes, max_batch=len(seeds)).clamp(-1, 1))
        for seed, pic in zip(seeds, pics):
            verdict = evaluate(pic, item)
            results.append((item["tag"], verdict.correct))
            records.append({"setting": setting, "tag": item["tag"], "prompt": item["prompt"], "seed": seed,
                            "conditioning": gen.conditioning, "correct": verdict.correct,
                            "reasons": list(verdict.reasons),
                            "found": [f"{d.colour} {d.shape}" for d in verdict.detections]})
            if save_dir is not None:
                pic.save(save_dir / f"{setting}_{i:03d}_{seed}.png")
    return score(results), forwards / max(tokens, 1), seconds / max(images, 1), records


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--prompts", type=Path, default=Path(__file__).resolve().parent / "prompts_geneval_mini.json")
    p.add_argument("--settings", default=",".join(SETTINGS), help=f"comma list of {', '.join(SETTINGS)}")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--limit", type=int, default=None, help="only the first N prompts of each category")
    p.add_argument("--cfg", type=float, default=None,
                   help="guidance scale (default: the folder's uni1.default_policy, else the preset)")
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-n-sigma", type=float, default=None)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="folder for results.json (and images with --save-images)")
    p.add_argument("--save-images", action="store_true")
    p.add_argument("--quantize", choices=("none", "int8", "int4"), default="none",
                   help="weight-only quantisation of the model (uni1_core/quantize.py)")
    p.add_argument("--group-size", type=int, default=128, help="int4 group size (32, 64, 128, 256)")
    p.add_argument("--kv-cache", choices=("auto", "bf16", "int8"), default="auto")
    args = p.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = [s.strip() for s in args.settings.split(",") if s.strip()]
    unknown = [s for s in settings if s not in SETTINGS]
    if unknown:
        p.error(f"unknown setting(s) {unknown}; choose from {', '.join(SETTINGS)}")
    prompts = json.loads(args.prompts.read_text())
    if args.limit:
        kept, per_tag = [], {}
        for item in prompts:
            per_tag[item["tag"]] = per_tag.get(item["tag"], 0) + 1
            if per_tag[item["tag"]] <= args.limit:
                kept.append(item)
        prompts = kept

    pipe = Uni1Pipeline.from_pretrained(args.model, quantize=None if args.quantize == "none" else args.quantize,
                                        group_size=args.group_size, kv_cache=args.kv_cache)
    movq = pipe.load_movq()
    changes = {k: v for k, v in (("cfg_scale", args.cfg), ("temperature", args.temperature), ("top_k", args.top_k),
                                 ("top_n_sigma", args.top_n_sigma)) if v is not None}
    # the folder's recommended settings (pipe.default_policy, from "uni1.default_policy"), then the flags
    policy = pipe.with_policy(**changes)
    save_dir = None
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        if args.save_images:
            save_dir = args.out
    n = len(prompts) * len(args.seeds)
    quant = "" if args.quantize == "none" else f" ({args.quantize}" + (
        f" group {args.group_size}" if args.quantize == "int4" else "") + f", KV cache {pipe.kv_cache})"
    print(f"model {pipe.model_dir}{quant}, {len(prompts)} prompts x {len(args.seeds)} seeds = {n} images per setting, "
          f"policy {policy}\n")

    rows, all_records = {}, []
    for setting in settings:
        t0 = time.time()
        scores, fpt, spi, records = run_setting(pipe, movq, prompts, args.seeds, setting, policy, save_dir)
        rows[setting] = (scores, fpt, spi)
        all_records += records
        print(f"  {setting}: overall {scores['overall']:.3f}, {fpt:.3f} forwards/token, {spi:.2f} s/image "
              f"({time.time() - t0:.0f}s)", flush=True)

    header = "| setting | " + " | ".join(TAGS) + " | overall | fwd/token | s/image |"
    print("\n" + header + "\n|" + "---|" * (len(TAGS) + 4))
    for setting, (scores, fpt, spi) in rows.items():
        cells = " | ".join(f"{scores.get(t, float('nan')):.2f}" for t in TAGS)
        print(f"| {setting} | {cells} | **{scores['overall']:.3f}** | {fpt:.3f} | {spi:.2f} |")
    # one standard error of a mean over tags of per-tag binomial accuracies
    per_tag_n = n / len(TAGS)
    if rows:
        acc = sum(r[0]["overall"] for r in rows.values()) / len(rows)
        se = math.sqrt(max(acc * (1 - acc), 1e-9) / per_tag_n / len(TAGS))
        print(f"\nsampling noise: one standard error of 'overall' is about {se:.3f} "
              f"({per_tag_n:.0f} images per category)")
    if "raw" in rows and "plan" in rows:
        print(f"plan - raw: {rows['plan'][0]['overall'] - rows['raw'][0]['overall']:+.3f}")
    if args.out is not None:
        (args.out / "results.json").write_text(json.dumps(
            {"settings": {s: {"scores": r[0], "forwards_per_token": r[1], "seconds_per_image": r[2]}
                          for s, r in rows.items()}, "records": all_records}, indent=1))
        print(f"wrote {args.out / 'results.json'}")


if __name__ == "__main__":
    main()
