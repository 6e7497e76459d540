"""Sampler benchmark: forwards per image token and tokens/s of ar, sjd and sjd_coupled, and our
plain AR against transformers' Chameleon `generate` on the same tiny weights.

    .venv/bin/python bench/sampling.py                 # tiny random model (+ demo model if present)
    .venv/bin/python bench/sampling.py --threads 2 --seeds 4 --json out/bench_sampling.json

Three tables, printed side by side in one run:
  1. a random tiny Chameleon (written by transformers, loaded by uni1_core): every mode;
  2. the demo model (uni1_core/demo_model), when it exists: every mode, the speed-up targets
     being sjd >= 2x and sjd_coupled >= 4x fewer forwards than ar;
  3. our ar against `ChameleonForConditionalGeneration.generate` on the tiny weights, with CFG
     (transformers: its unbatched CFG processor, as the reference's plain path; ours: one
     batched forward) and without; target >= 2x tokens/s on CPU.
A random model's laws hardly depend on the earlier image tokens, so its speculative rows say
little about a trained model (its drafts converge easily); the demo model's rows are the ones
that count.
Timings: with --threads above 1, do not set OMP_WAIT_POLICY=PASSIVE (the CLI and the tests do):
a decode loop of small ops then waits for sleeping threads at every op. Measured at 2 threads on
the random tiny model: our ar over transformers 1.6-1.7x with PASSIVE, 2.3-3.1x without; at 1
thread (the default) 2.1-3.0x either way.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from uni1_core.model import Uni1Model                      # noqa: E402
from uni1_core.policy import SamplingPolicy                # noqa: E402
from uni1_core.sampler import sample_codes                 # noqa: E402
from uni1_core.sequence import ImageGrid, ImageVocab       # noqa: E402

# (mode, window, coupling, branches): None = the sampler's default (4 branches for sjd_coupled)
RUNS = [("ar", None, "maximal", None), ("sjd", None, "maximal", None), ("sjd_coupled", None, "maximal", 0),
        ("sjd_coupled", None, "maximal", None), ("sjd_coupled", None, "gumbel", None),
        ("sjd_coupled", 64, "maximal", None)]

# the tiny model's vocabulary: text 0..63, structure, grid tokens, then the codes
TINY_CODES, TINY_OFFSET = 512, 64
TINY_VOCAB = ImageVocab(code_offset=TINY_OFFSET, num_codes=TINY_CODES, image_start=1, image_end=2, row_end=3,
                        turn_end=4, grid_ids={n: 40 + n for n in range(1, 17)})


def tiny_checkpoint(folder: Path, hidden: int, layers: int):
    """A random ChameleonForConditionalGeneration saved by transformers (fp32, eval)."""
    from transformers import ChameleonConfig, ChameleonForConditionalGeneration

    vocab_size = TINY_OFFSET + TINY_CODES + 8
    names = {f"<tok{i}>": i for i in range(vocab_size)}
    names["<image>"] = 5
    config = ChameleonConfig(
        vocab_size=vocab_size, hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048, vocabulary_map=names,
        vq_config=dict(embed_dim=4, num_embeddings=16, latent_channels=4, resolution=16, in_channels=3,
                       base_channels=32, channel_multiplier=[1], num_res_blocks=1),
        bos_token_id=0, eos_token_id=2, pad_token_id=0, tie_word_embeddings=False)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    model = ChameleonForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if not name.startswith("model.vqmodel"):
                p.copy_(torch.randn_like(p) * 0.05 + (1.0 if name.endswith("norm.weight") else 0.0))
    model.save_pretrained(folder, safe_serialization=True)
    return model


def time_best(fn, repeats):
    fn()                                                     # warm-up
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def mode_table(model, vocab, grid, prompt_ids, policy, seeds, repeats):
    rows = []
    for mode, window, coupling, branches in RUNS:
        def go():
            return sample_codes(model, vocab, grid, [prompt_ids] * len(seeds), mode=mode, policy=policy,
                                seeds=seeds, window=window, coupling=coupling, branches=branches)
        seconds, out = time_best(go, repeats)
        s = out.stats
        label = mode if mode != "sjd_coupled" else f"sjd_coupled/{coupling}" + ("" if s.branches else " no branches")
        per_image = s.per_image_forwards_per_token
        rows.append(dict(mode=label, window=s.window, branches=s.branches, branch_hits=s.branch_hits,
                         batch_forwards=s.forwards,
                         forwards_per_token=sum(per_image) / len(per_image),
                         tokens_per_s=len(seeds) * s.image_tokens / seconds, seconds=seconds,
                         residual_fallbacks=s.residual_fallbacks))
    ar = rows[0]["forwards_per_token"]
    for r in rows:
        r["fewer_forwards_than_ar"] = ar / r["forwards_per_token"]
    return rows


def print_table(title, rows, cols):
    print(f"\n### {title}\n")
    print("| " + " | ".join(c for c, _ in cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")
    for r in rows:
        print("| " + " | ".join(fmt.format(r[c]) for c, fmt in cols) + " |")


MODE_COLS = [("mode", "{}"), ("window", "{}"), ("branches", "{}"), ("branch_hits", "{}"), ("batch_forwards", "{}"),
             ("forwards_per_token", "{:.3f}"),  # per image
             ("fewer_forwards_than_ar", "{:.2f}x"), ("tokens_per_s", "{:.1f}"), ("seconds", "{:.2f}")]


def versus_transformers(ref, ours, grid, prompt_ids, cfg, top_k, repeats):
    """Our ar and transformers' generate, same weights, same prompt, one image, stream_len tokens."""
    header = grid.header_ids(TINY_VOCAB)
    ids = torch.tensor([prompt_ids + header])
    S = grid.stream_len
    kwargs = dict(do_sample=True, top_k=top_k, max_new_tokens=S, min_new_tokens=S, pad_token_id=0)
    if cfg != 1.0:
        kwargs.update(guidance_scale=cfg, negative_prompt_ids=torch.tensor([header]))

    def hf():
        with torch.no_grad():
            return ref.generate(ids, **kwargs)

    def ours_ar():
        return sample_codes(ours, TINY_VOCAB, grid, [prompt_ids], mode="ar",
                            policy=SamplingPolicy(cfg_scale=cfg, top_k=top_k), seeds=[0])

    out = hf()                                               # warm-up both
    assert out.shape[1] == ids.shape[1] + S, "transformers stopped early"
    ours_ar()
    t_hf = t_ours = float("inf")
    for _ in range(repeats):                                 # interleaved: load changes hit both
        t = time.perf_counter()
        hf()
        t_hf = min(t_hf, time.perf_counter() - t)
        t = time.perf_counter()
        ours_ar()
        t_ours = min(t_ours, time.perf_counter() - t)
    return dict(cfg=cfg, tokens=S, transformers_tokens_per_s=S / t_hf, ours_tokens_per_s=S / t_ours,
                speedup=t_hf / t_ours)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1: stable timings)")
    ap.add_argument("--seeds", type=int, default=4, help="images per call (batch size); forwards per token "
                    "are averaged over the images")
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per row; the best is reported")
    ap.add_argument("--size", type=int, default=128, help="tiny model: image side in pixels (codes = size / 8)")
    ap.add_argument("--hidden", type=int, default=128)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--model", default=None, help="model folder for table 2 (default: the demo model)")
    ap.add_argument("--demo-size", type=int, default=None, help="demo model image side (default: its default size)")
    ap.add_argument("--demo-prompt", default="two red circles to the left of a blue square")
    ap.add_argument("--json", type=Path, default=None, help="also write every table as JSON here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seeds = list(range(args.seeds))
    report = {"threads": args.threads, "device": "cpu", "torch": torch.__version__}
    import os
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# Sampler benchmark (CPU, {args.threads} thread(s), batch {args.seeds}, best of {args.repeats}; "
          f"load average {load:.1f} on {os.cpu_count()} cores: timings on a busy machine are noisy)")

    # 1. random tiny model
    with tempfile.TemporaryDirectory() as tmp:
        ref = tiny_checkpoint(Path(tmp), args.hidden, args.layers)
        ours = Uni1Model.from_pretrained(tmp, dtype=torch.float32)
    grid = ImageGrid(args.size, args.size)
    prompt = list(range(6, 30))
    policy = SamplingPolicy(cfg_scale=3.0, top_k=64)
    rows = mode_table(ours, TINY_VOCAB, grid, prompt, policy, seeds, args.repeats)
    report["tiny"] = rows
    print_table(f"Random tiny model (hidden {args.hidden}, {args.layers} layers, {grid.rows}x{grid.cols} codes, "
                f"{grid.stream_len} tokens, CFG 3, top-k 64)", rows, MODE_COLS)

    # 2. demo model
    demo_dir = Path(args.model) if args.model else ROOT / "uni1_core" / "demo_model"
    if (demo_dir / "config.json").is_file():
        from uni1_core.pipeline import Uni1Pipeline
        from uni1_core.sequence import t2i_prompt_ids
        pipe = Uni1Pipeline.from_pretrained(str(demo_dir) if args.model else "demo", dtype=torch.float32)
        w, h = (args.demo_size, args.demo_size) if args.demo_size else pipe.default_size
        dgrid = ImageGrid(w, h)
        text = pipe.conditioning(pipe.plan(args.demo_prompt))[1]      # with the layout map
        ids = t2i_prompt_ids(pipe.tokenizer, text, w, h)
        rows = mode_table(pipe.model, pipe.vocab, dgrid, ids, pipe.default_policy, seeds, args.repeats)
        report["demo"] = rows
        print_table(f"{'Demo model' if not args.model else demo_dir} ({w}x{h}, {dgrid.stream_len} tokens, default policy, prompt "
                    f"{args.demo_prompt!r})", rows, MODE_COLS)
        by = {r["mode"]: r for r in rows}
        print(f"\ntargets: sjd {by['sjd']['fewer_forwards_than_ar']:.2f}x fewer forwards (>= 2x), "
              f"sjd_coupled {max(r['fewer_forwards_than_ar'] for r in rows if 'coupled' in r['mode']):.2f}x (>= 4x)")
    else:
        report["demo"] = None
        print(f"\n### Demo model\n\nskipped: {demo_dir} has no config.json yet (the demo model is trained "
              "separately; rerun this script once it exists)")

    # 3. against transformers
    vs = [versus_transformers(ref, ours, grid, prompt, cfg, 64, max(args.repeats, 5)) for cfg in (3.0, 1.0)]
    report["vs_transformers"] = vs
    print_table("Our ar vs transformers ChameleonForConditionalGeneration.generate (same tiny weights, "
                "one image)", vs, [("cfg", "{}"), ("tokens", "{}"), ("transformers_tokens_per_s", "{:.1f}"),
                                   ("ours_tokens_per_s", "{:.1f}"), ("speedup", "{:.2f}x")])
    print("\ntarget: our ar >= 2x transformers' tokens/s on CPU")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
