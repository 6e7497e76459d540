"""Eager against compiled decode step (uni1_core/decode.py), side by side, on the demo model.

    .venv/bin/python bench/compile.py                      # CPU, 1 thread, batch 1 and 4
    .venv/bin/python bench/compile.py --device cuda --modes ar sjd_coupled

Per mode and batch: seconds per image (best of --repeats after a warm-up call that also pays the
compilation), forwards, and compiled / eager. The first compiled call's time (compilation
included) is printed apart. Same seeds in both columns; the table says whether the code grids
agreed (compiled kernels round differently, so a rare token may differ; the tests check equality
on a float64 model and the distribution with compile on).
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uni1_core.pipeline import Uni1Pipeline                # noqa: E402
from uni1_core.sampler import sample_codes                 # noqa: E402
from uni1_core.sequence import ImageGrid, t2i_prompt_ids   # noqa: E402


def timed(fn, repeats):
    best, out = float("inf"), None
    for _ in range(repeats):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--modes", nargs="+", default=["sjd_coupled", "ar"])
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 4])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--prompt", default="two red circles to the left of a blue square")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    pipe = Uni1Pipeline.from_pretrained("demo", dtype=torch.float32, device=args.device)
    w, h = pipe.default_size
    grid = ImageGrid(w, h)
    ids = t2i_prompt_ids(pipe.tokenizer, pipe.conditioning(pipe.plan(args.prompt))[1], w, h)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# Eager vs compiled decode step: demo model {w}x{h} ({grid.stream_len} tokens), {args.device}, "
          f"{args.threads} thread(s), torch {torch.__version__}, best of {args.repeats}, load average {load:.1f}\n")
    print("| mode | batch | forwards | eager s/image | compiled s/image | compiled / eager | first compiled call s | same codes |")
    print("|---|---|---|---|---|---|---|---|")
    for mode in args.modes:
        for batch in args.batches:
            seeds = list(range(batch))

            def run(compile):
                return sample_codes(pipe.model, pipe.vocab, grid, [ids] * batch, mode=mode,
                                    policy=pipe.default_policy, seeds=seeds, compile=compile)
            run(False)                                                     # warm-up
            t = time.perf_counter()
            run(True)                                                      # compiles this bucket
            first = time.perf_counter() - t
            eager_s, eager = timed(lambda: run(False), args.repeats)
            compiled_s, compiled = timed(lambda: run(True), args.repeats)
            same = torch.equal(eager.codes, compiled.codes)
            print(f"| {mode} | {batch} | {eager.stats.forwards} / {compiled.stats.forwards} | {eager_s / batch:.3f} "
                  f"| {compiled_s / batch:.3f} | {compiled_s / eager_s:.2f}x | {first:.1f} | {same} |")


if __name__ == "__main__":
    main()
