"""Train the demo text-to-image transformer and write the demo model folder.

    python -m training.train_transformer --movq uni1_core/demo_model/movq.safetensors --out uni1_core/demo_model

The model goes through exactly the code path of Lumina-mGPT 2.0:
- text: a byte-level BPE (training/bpe.py) in the real `tokenizer.json` format with the
  Chameleon-named special tokens, trained on the captions below;
- sequence: `[BOS] "Generate an image of 64x64 according to the following prompt:\\n{caption}<reserved08706>"
  <racm3:break> <grid 2> <grid 2>`, then 8 rows of 8 codes each closed by a row end, then the
  end of image (uni1_core.sequence builds it, as at inference);
- network: uni1_core.model.Uni1Model with a Chameleon config.json (qk-norm, SwiGLU, RoPE), small;
- image codes: the demo MoVQ's 512 codes at `image_token_offset` (config.json "uni1").

Captions are the planner's canonical form: each procedural scene (training/world.py) is turned
into a `Plan` (subjects with count, colour and sometimes a size word; the relation between the
two groups; the scene's own boxes as its layout) and rendered with
`plan.conditioning_text(grounding=8, symbols=SYMBOLS)`: the sentence, then a map of the layout
with one symbol per object kind (three captions in four), so that at inference the planner's output is in the training
distribution. Colours are left out of a caption now and then (the
model then picks one), and a medium ("Photo.") is sometimes appended, as the planner writes for
"a photo of ...". One batch in ten is unconditional: the header and the image only, exactly the
row classifier-free guidance runs at inference.

Loss: cross-entropy over the image codes of the stream (row ends and the end of image are
forced at inference, so they are not learned). Batches hold sequences of one length (the
caption lengths are bucketed), so no padding or attention mask is needed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import random
import shutil
import time
from pathlib import Path

# Idle OpenMP threads must sleep, not spin: on a shared 2-core machine a spinning thread steals
# the core its partner needs (measured here: 2 spinning threads ran 10x slower than 1 thread,
# 2 passive threads 2x faster). Must be set before torch loads its OpenMP runtime.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F

from training.bpe import LUMINA_ADDED, build_bpe_tokenizer_json
from training.world import CELLS, COLOURS, SHAPES, SIZES, random_scene, render_batch
from uni1_core.model import ModelConfig, Uni1Model
from uni1_core.movq import MoVQ
from uni1_core.plan import Box, Plan, Relation, Style, Subject
from uni1_core.sequence import T2I_TEMPLATE, TURN_END, ImageGrid, ImageVocab, t2i_prompt_ids
from uni1_core.tokenizer import TextTokenizer

SIZE = 64
SIZE_WORDS = {"small": ("small", "tiny"), "large": ("large", "big")}
MEDIUMS = ("photo", "drawing", "illustration", "painting", "digital art", "cartoon")
EOS = "<|endoftext|>"
# The grounding the model learns, declared in config.json: objects are squares of 2 to 4 of the
# 8 x 8 code cells (training/world.py), so the pipeline snaps the plan's layout to those.
# Each kind of object has its own map symbol, an upper-case letter (the BPE is trained without
# maps, so it has no merges between capitals and keeps every letter a token of its own):
# "red circle" A, "red square" B, ..., and the shape alone (no colour asked) after those.
SYMBOLS = {key: chr(ord("A") + i) for i, key in enumerate(
    [f"{colour} {shape}" for colour in COLOURS for shape in SHAPES] + list(SHAPES))}
GROUNDING = {"grid": CELLS, "min_cells": min(SIZES.values()), "max_cells": max(SIZES.values()), "symbols": SYMBOLS}
GROUNDED = 0.75   # share of captions with the grounding


# ---------------------------------------------------------------------------------------------
# captions


# The planner keeps words it does not understand, verbatim, as a last sentence ("... Please.").
# A few captions end with such a sentence of common English words, so that the model learns that
# the last sentence may be noise.
FILLER_WORDS = ("please", "draw", "show", "me", "make", "just", "exactly", "simple", "nice", "clean", "here",
                "now", "i", "want", "would", "like", "to", "see", "some", "nothing", "else", "only", "very",
                "good", "the", "it", "as", "well", "with", "along", "together", "group", "side", "by", "its",
                "own", "view", "scene", "single", "one", "really", "quick", "thanks", "kind", "of")
# In a flat picture "on" and "under" are "above" and "below"; the planner keeps the words.
RELATION_SYNONYMS = {"above": ("above", "above", "on"), "below": ("below", "below", "under")}


def scene_plan(scene, rng: random.Random, colour_drop: float = 0.3, size_word: float = 0.25, medium: float = 0.1,
               filler: float = 0.1) -> Plan:
    """The Plan a planner would have made for this scene, with the scene's own boxes as its
    layout; some details left unsaid at random."""
    subjects = []
    for g in scene.groups:
        attributes = []
        if g.size in SIZE_WORDS and rng.random() < size_word:
            attributes.append(rng.choice(SIZE_WORDS[g.size]))
        colour = None if rng.random() < colour_drop else g.colour
        subjects.append(Subject(g.shape, g.count, colour, attributes))
    relations = []
    if scene.relation is not None:
        rel, subject, reference = scene.relation
        relations.append(Relation(subject, reference, rng.choice(RELATION_SYNONYMS.get(rel, (rel,)))))
    style = Style(medium=rng.choice(MEDIUMS)) if rng.random() < medium else Style()
    unparsed = [" ".join(rng.choice(FILLER_WORDS) for _ in range(rng.randint(1, 3)))] if rng.random() < filler else []
    instances = [sum(1 for g in scene.group_of[:i] if g == gi) for i, gi in enumerate(scene.group_of)]
    layout = [Box(gi, k, *obj.box) for obj, gi, k in zip(scene.objects, scene.group_of, instances)]
    return Plan(subjects=subjects, relations=relations, layout=layout, style=style, unparsed=unparsed)


def caption(scene, rng: random.Random, grounded: float = GROUNDED) -> str:
    """The planner's sentence, followed most of the time by the grounding (a map of the scene's
    cells, `Plan.grounding_text`), as the pipeline writes it for a model that
    declares `GROUNDING`. Without it now and then, so that a sentence alone (no layout) still
    draws the objects somewhere."""
    plan = scene_plan(scene, rng)
    return plan.conditioning_text(grounding=CELLS if rng.random() < grounded else None, symbols=SYMBOLS)


# ---------------------------------------------------------------------------------------------
# tokenizer and config


def train_tokenizer(seed: int, vocab_size: int, n_captions: int = 4000) -> dict:
    """BPE on full prompt texts, so the template's words and the captions' words become tokens."""
    rng = random.Random(seed)
    # without the maps: merges of map symbols ("AA", "00") would break the map's token alignment
    corpus = [T2I_TEMPLATE.format(w=SIZE, h=SIZE, prompt=caption(random_scene(rng), rng, grounded=0.0)) + TURN_END
              for _ in range(n_captions)]
    return build_bpe_tokenizer_json(corpus, vocab_size, LUMINA_ADDED)


def model_config(tokenizer: TextTokenizer, hidden: int, layers: int, heads: int, num_codes: int) -> ModelConfig:
    offset = tokenizer.vocab_size
    eos = tokenizer.token_to_id(EOS)
    raw = {
        "architectures": ["ChameleonForConditionalGeneration"],
        "model_type": "chameleon",
        "vocab_size": offset + num_codes,
        "hidden_size": hidden,
        "intermediate_size": 256 * math.ceil(hidden * 8 / 3 / 256),
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": heads,
        "max_position_embeddings": 256,
        "rope_theta": 10000.0,
        "rms_norm_eps": 1e-5,
        "hidden_act": "silu",
        "model_parallel_size": 1,
        "swin_norm": False,
        "mask_image_logits": True,
        "attention_bias": False,
        "mlp_bias": False,
        "tie_word_embeddings": False,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "pad_token_id": None,
        "vocabulary_map": {tokenizer.id_to_token(i): i for i in range(tokenizer.vocab_size)},
        "uni1": {
            "image_token_offset": offset,
            "num_image_codes": num_codes,
            "sizes": [[SIZE, SIZE]],
            "default_size": [SIZE, SIZE],
            "grounding": GROUNDING,
        },
    }
    return ModelConfig.from_dict(raw)


TOKENIZER_CONFIG = {
    # Qwen2-family tokenizers have no BOS: the xllmx wrapper then prepends EOS (spec section 3).
    "tokenizer_class": "Qwen2Tokenizer",
    "bos_token": None,
    "eos_token": EOS,
    "pad_token": EOS,
    "model_max_length": 256,
    "add_prefix_space": False,
    "clean_up_tokenization_spaces": False,
}


# ---------------------------------------------------------------------------------------------
# data


@torch.no_grad()
def encode_scenes(movq: MoVQ, scenes: list, chunk: int = 256) -> torch.Tensor:
    """The scenes' (n, 8, 8) MoVQ codes."""
    codes = []
    for i in range(0, len(scenes), chunk):
        images = torch.from_numpy(render_batch(scenes[i : i + chunk], SIZE))
        codes.append(movq.encode(images).to(torch.int16))
    return torch.cat(codes)


def make_batches(prompts: list[list[int]], batch: int, rng: random.Random) -> list[list[int]]:
    """Indices grouped into batches whose prompts have one length (no padding needed)."""
    by_len: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_len.setdefault(len(p), []).append(i)
    batches = []
    for idx in by_len.values():
        rng.shuffle(idx)
        batches += [idx[k : k + batch] for k in range(0, len(idx), batch) if len(idx[k : k + batch]) >= max(2, batch // 4)]
    rng.shuffle(batches)
    return batches


def sequences(prompt_ids: list[list[int]], codes: torch.Tensor, grid: ImageGrid, vocab: ImageVocab) -> torch.Tensor:
    """(B, T) prompt + header + stream ids; prompts all of one length (possibly zero: unconditional)."""
    header = grid.header_ids(vocab)
    rows = [torch.tensor(p + header, dtype=torch.long) for p in prompt_ids]
    streams = [grid.stream_from_codes(c.long(), vocab) for c in codes]
    return torch.stack([torch.cat([r, s]) for r, s in zip(rows, streams)])


def corrupt_codes(ids: torch.Tensor, start: int, rate: float, vocab: ImageVocab, grid: ImageGrid) -> torch.Tensor:
    """A copy of ids whose image codes are, each with probability `rate`, replaced by a wrong but
    plausible code (half the time a horizontal neighbour's, half a random one): the inputs a
    speculative decoder's stale drafts give the model."""
    ids = ids.clone()
    pos = start + grid.code_positions()
    codes = ids[:, pos]
    hit = torch.rand(codes.shape) < rate
    shift = torch.where(torch.rand(codes.shape) < 0.5, -1, 1)
    neighbour = codes.gather(1, (torch.arange(len(pos))[None] + shift).clamp(0, len(pos) - 1))
    random_code = vocab.code_offset + torch.randint(0, vocab.num_codes, codes.shape)
    wrong = torch.where(torch.rand(codes.shape) < 0.5, neighbour, random_code)
    ids[:, pos] = torch.where(hit, wrong, codes)
    return ids


def code_loss(model: Uni1Model, ids: torch.Tensor, start: int, vocab: ImageVocab, grid: ImageGrid,
              inputs: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the image codes, over the code sub-vocabulary. `start`: index of stream position 0.
    inputs: what the model reads (default ids); the targets are always ids."""
    logits = model((ids if inputs is None else inputs)[:, :-1])
    pos = start + grid.code_positions()  # token positions of codes; predicted from position - 1
    pred = logits[:, pos - 1, vocab.code_offset : vocab.code_offset + vocab.num_codes]
    target = vocab.id_to_code(ids[:, pos])
    return F.cross_entropy(pred.reshape(-1, vocab.num_codes), target.reshape(-1))


# ---------------------------------------------------------------------------------------------
# writing the model folder


def write_folder(model: Uni1Model, tokenizer_json: dict, movq_file: Path, out: Path) -> None:
    """The demo model folder, laid out like a real one: config.json, model.safetensors, the
    tokenizer files and the MoVQ the codes belong to."""
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    (out / "model.safetensors").chmod(0o644)
    if movq_file.resolve() != (out / "movq.safetensors").resolve():
        shutil.copyfile(movq_file, out / "movq.safetensors")
    (out / "tokenizer.json").write_text(json.dumps(tokenizer_json, ensure_ascii=False))
    (out / "tokenizer_config.json").write_text(json.dumps(TOKENIZER_CONFIG, indent=2))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--movq", type=Path, default=Path("uni1_core/demo_model/movq.safetensors"))
    p.add_argument("--out", type=Path, default=Path("uni1_core/demo_model"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--scenes", type=int, default=40000)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=24)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--hidden", type=int, default=192)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--text-vocab", type=int, default=640)
    p.add_argument("--uncond-every", type=int, default=10, help="every n-th batch has no caption (for CFG)")
    p.add_argument("--save-every", type=int, default=250)
    p.add_argument("--data-cache", type=Path, default=None, help="reuse encoded scenes from this .pt file")
    p.add_argument("--data-seed", type=int, default=None,
                   help="seed of the scenes (default: --seed + 1); a continuation keeps its first run's scenes")
    p.add_argument("--stop-at", type=int, default=None, help="stop (and save) after this step, schedule unchanged")
    p.add_argument("--init", type=Path, default=None,
                   help="continue from this demo model folder (same tokenizer and size) with a new schedule")
    p.add_argument("--corrupt", type=float, default=0.0,
                   help="rate at which input image codes are replaced by wrong plausible ones (targets stay)")
    p.add_argument("--policy", default=None,
                   help='recommended sampling settings written to config.json "uni1.default_policy", as JSON '
                        '(e.g. \'{"cfg_scale": 2.0}\'); chosen with bench/geneval_mini.py')
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    t0 = time.time()

    if args.init is not None:  # keep the tokenizer the weights were trained with
        tokenizer_json = json.loads((args.init / "tokenizer.json").read_text())
    else:
        tokenizer_json = train_tokenizer(args.seed, args.text_vocab)
    tokenizer = TextTokenizer(tokenizer_json, bos_token=None, eos_token=EOS, source="demo tokenizer")
    movq = MoVQ.from_pretrained(args.movq)
    config = model_config(tokenizer, args.hidden, args.layers, args.heads, movq.num_codes)
    vocab = ImageVocab.from_tokenizer(tokenizer, config.vocab_size, config.raw["uni1"])
    grid = ImageGrid(SIZE, SIZE)
    print(f"tokenizer: {tokenizer.vocab_size} ids; model vocab {config.vocab_size} ({time.time() - t0:.0f}s)", flush=True)

    # The scenes are cheap to redraw from their seed; only the codes are cached (tensors only, so
    # the cache is read with weights_only=True like every other file here).
    data_seed = args.seed + 1 if args.data_seed is None else args.data_seed
    rng_scenes = random.Random(data_seed)
    scenes = [random_scene(rng_scenes) for _ in range(args.scenes)]
    cached = torch.load(args.data_cache, weights_only=True) if args.data_cache and args.data_cache.is_file() else None
    if cached is not None and cached["scene_seed"].item() == data_seed and len(cached["codes"]) == len(scenes):
        codes = cached["codes"]
    else:
        codes = encode_scenes(movq, scenes)
        if args.data_cache is not None:
            torch.save({"scene_seed": torch.tensor(data_seed), "codes": codes}, args.data_cache)
    print(f"{len(scenes)} scenes encoded ({time.time() - t0:.0f}s)", flush=True)

    if args.policy:
        config.raw["uni1"]["default_policy"] = json.loads(args.policy)
    model = Uni1Model(config)
    if args.init is not None:
        model.load_state_dict(Uni1Model.from_pretrained(args.init, dtype=torch.float32).state_dict())
        model.requires_grad_(True)
    else:
        with torch.no_grad():  # small init, as in GPT-2: keeps the first steps of a tiny model stable
            # drawn over the Hugging Face names (views of the fused tensors, in transformers'
            # order), so a seed gives the same start as before q/k/v and gate/up were fused
            for name, param in model.state_dict(keep_vars=True).items():
                if param.ndim == 2:
                    param.normal_(0.0, 0.02)
    print(f"transformer: {sum(p.numel() for p in model.parameters()) / 1e6:.2f}M parameters", flush=True)
    decay = [p for n, p in model.named_parameters() if p.ndim == 2]
    other = [p for n, p in model.named_parameters() if p.ndim != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.95))

    batches: list[list[int]] = []
    step, ema = 0, None
    warmup = max(1, min(100, args.steps // 10))
    last = args.steps if args.stop_at is None else min(args.steps, args.stop_at)
    while step < last:
        if not batches:  # a new epoch: new captions for every scene (different details left out)
            captions = [caption(s, rng) for s in scenes]
            prompts = [t2i_prompt_ids(tokenizer, c, SIZE, SIZE) for c in captions]
            batches = make_batches(prompts, args.batch, rng)
        idx = batches.pop()
        if step % args.uncond_every == args.uncond_every - 1:
            batch_prompts = [[] for _ in idx]  # the unconditional row: header and image only
        else:
            batch_prompts = [prompts[i] for i in idx]
        ids = sequences(batch_prompts, codes[idx], grid, vocab)
        start = len(batch_prompts[0]) + 3
        lr = args.lr * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / args.steps)))
        for group in opt.param_groups:
            group["lr"] = lr
        inputs = corrupt_codes(ids, start, args.corrupt, vocab, grid) if args.corrupt else None
        loss = code_loss(model, ids, start, vocab, grid, inputs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        ema = loss.item() if ema is None else 0.98 * ema + 0.02 * loss.item()
        if step % 25 == 0:
            print(f"step {step}/{args.steps} loss {ema:.3f} lr {lr:.2e} {time.time() - t0:.0f}s", flush=True)
        if step % args.save_every == 0 or step == last:
            model.eval()
            write_folder(model, tokenizer_json, args.movq, args.out)
            model.train()
            print(f"saved {args.out} at step {step}", flush=True)
    print(f"done in {time.time() - t0:.0f}s", flush=True)


if __name__ == "__main__":
    main()
