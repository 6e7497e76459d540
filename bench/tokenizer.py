"""Speed of the pure-Python TextTokenizer: loading a full-size tokenizer.json, encoding a
200-word prompt (cold and warm word cache), decoding. Prints a table; nothing is asserted.

    python bench/tokenizer.py                      # a synthetic 151,643-token Qwen2-format file
    python bench/tokenizer.py --file path/to/tokenizer.json

The synthetic file has the size and format of the release (151,643 BPE tokens, 151,387
merges, the 22 Qwen2.5 added tokens and the Chameleon-named ones): its first merges are
learned from English text by training/bpe.py, the rest join random earlier tokens. When
`tokenizers` is installed its numbers on the same file are printed alongside.
"""
import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from training.bpe import LUMINA_ADDED, build_bpe_tokenizer_json  # noqa: E402
from uni1_core.tokenizer import TextTokenizer  # noqa: E402

ENGLISH = """A quiet harbour town at dawn, fishing boats resting on still water that mirrors a pale
pink sky. Gulls circle above weathered wooden piers while an old lighthouse, painted red and white,
stands on the rocky point to the left of the harbour. Narrow cobblestone streets climb the hill
behind the water, lined with small houses in faded blue, yellow and green, their window boxes full
of geraniums. A baker in a flour-dusted apron opens the shutters of a corner shop, and the warm
light from inside spills onto the street. In the foreground two children in bright raincoats crouch
at the edge of the quay, pointing at a crab. Soft morning mist hangs over the distant hills; the
scene is rendered as a detailed watercolour painting with delicate washes, crisp ink lines and a
gentle, nostalgic mood. The composition follows the rule of thirds, with the lighthouse on the
left third and the rising sun just above the horizon on the right. Reflections ripple slightly
where a rowing boat has just left its mooring, leaving a thin silver wake behind it."""


def synthetic_spec(num_tokens=151_643, seed=0) -> dict:
    corpus = [line.strip() for line in ENGLISH.splitlines()] * 20
    spec = build_bpe_tokenizer_json(corpus, 256 + 600 + len(LUMINA_ADDED), LUMINA_ADDED)
    model = spec["model"]
    vocab, merges = model["vocab"], model["merges"]
    tokens = list(vocab)
    right = tokens[:]                     # second halves: the learned tokens, kept short
    rng = random.Random(seed)
    while len(vocab) < num_tokens:
        a, b = rng.choice(tokens), rng.choice(right)
        if a + b not in vocab and len(a + b) <= 16:
            vocab[a + b] = len(vocab)
            tokens.append(a + b)
            merges.append([a, b])
    for k, t in enumerate(spec["added_tokens"]):
        t["id"] = len(vocab) + k
    return spec


def timed(fn, repeat):
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--file", help="a tokenizer.json to measure (default: a synthetic full-size one)")
    args = parser.parse_args()
    if args.file:
        path = Path(args.file)
    else:
        path = Path(tempfile.mkdtemp()) / "tokenizer.json"
        t = time.perf_counter()
        path.write_text(json.dumps(synthetic_spec()), encoding="utf-8")
        print(f"built a synthetic tokenizer.json in {time.perf_counter() - t:.1f} s: {path}")

    words = ENGLISH.split()
    prompt_words = (words * 2)[:200]
    prompt = ("Generate an image of 768x768 according to the following prompt:\n"
              + " ".join(prompt_words) + "<reserved08706>")

    rows = []
    t = time.perf_counter()
    tok = TextTokenizer.from_file(path)
    rows.append(("load tokenizer.json (first in process)", (time.perf_counter() - t) * 1000))
    rows.append(("load tokenizer.json (again)", timed(lambda: TextTokenizer.from_file(path), 3)))

    def cold():
        tok.model.cache.clear()
        tok.encode(prompt)
    rows.append(("encode 200-word prompt, empty word cache", timed(cold, 20)))
    rows.append(("encode 200-word prompt, warm word cache", timed(lambda: tok.encode(prompt), 50)))
    ids = tok.encode(prompt)
    rows.append(("decode it", timed(lambda: tok.decode(ids), 50)))

    reference = []
    try:
        from tokenizers import Tokenizer
    except ImportError:
        Tokenizer = None
    if Tokenizer is not None:
        t = time.perf_counter()
        hf = Tokenizer.from_file(str(path))
        reference.append((time.perf_counter() - t) * 1000)
        reference.append(timed(lambda: Tokenizer.from_file(str(path)), 3))
        reference.append(timed(lambda: hf.encode(prompt, add_special_tokens=False), 20))
        reference.append(timed(lambda: hf.encode(prompt, add_special_tokens=False), 50))
        reference.append(timed(lambda: hf.decode(ids, skip_special_tokens=False), 50))
        same = hf.encode(prompt, add_special_tokens=False).ids == ids
    vocab = tok.vocab_size
    print(f"\nfile: {path} ({path.stat().st_size / 1e6:.1f} MB, {vocab} ids, "
          f"{len(tok.model.ranks)} merges, {len(tok.added)} added tokens)")
    print(f"prompt: {len(prompt_words)} words, {len(prompt)} characters, {len(ids)} tokens\n")
    header = f"{'step':44s} {'uni1_core ms':>13s}" + (f" {'tokenizers ms':>14s}" if reference else "")
    print(header)
    print("-" * len(header))
    for k, (name, ms) in enumerate(rows):
        line = f"{name:44s} {ms:13.2f}"
        if reference:
            line += f" {reference[k]:14.2f}"
        print(line)
    if reference:
        print(f"\nsame ids as tokenizers: {same}")


if __name__ == "__main__":
    main()
