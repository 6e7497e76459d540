"""Train a small byte-level BPE and write it as a `tokenizer.json` of the real Lumina-mGPT 2.0
format (Qwen2 split regex, NFC, byte-level alphabet, ByteLevel decoder, special tokens appended
after the vocabulary), in pure Python, so the demo model's tokenizer is reproducible without
the `tokenizers` library.

Training is the textbook algorithm: count the words of the corpus (after the same NFC and
pre-tokenization the tokenizer applies), then repeatedly merge the most frequent adjacent pair,
ties broken by the pair's text, so the result depends only on the corpus.
"""
from __future__ import annotations

import heapq
import json
import re
from collections import Counter, defaultdict
from pathlib import Path

from uni1_core.tokenizer import BYTE_TO_CHAR, QWEN2_PATTERN, compile_split_pattern, nfc, to_byte_chars

_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


def _word_counts(corpus_texts, special_contents) -> Counter:
    """Byte-level words of the corpus; special tokens are cut out, never learned."""
    split = compile_split_pattern(QWEN2_PATTERN)
    cut = (re.compile("|".join(re.escape(s) for s in sorted(special_contents, key=len, reverse=True)))
           if special_contents else None)
    counts = Counter()
    for text in corpus_texts:
        for part in (cut.split(text) if cut else [text]):
            for word in split.findall(nfc(part)):
                counts[to_byte_chars(word)] += 1
    return counts


def train_merges(corpus_texts, num_new_tokens: int, special_contents=(), min_frequency: int = 1):
    """Merges in rank order until they have made `num_new_tokens` distinct new tokens (fewer
    only once no pair occurs `min_frequency` times). Two merges may make the same string
    (("ab", "c") and ("a", "bc")); that is valid BPE and counts once.

    Cost grows with (distinct words) x (merges): seconds for the demo corpus, about 20 s for
    4,000 merges over 100,000 distinct words."""
    counts = _word_counts(corpus_texts, special_contents)
    words = [list(w) for w in counts]
    freqs = list(counts.values())
    pair_counts: Counter = Counter()
    where: dict[tuple[str, str], set[int]] = defaultdict(set)   # pair -> indices of words holding it
    for wi, (syms, f) in enumerate(zip(words, freqs)):
        for pair in zip(syms, syms[1:]):
            pair_counts[pair] += f
            where[pair].add(wi)

    # Max-heap of (-count, pair), ties to the smallest pair text, so the result is deterministic.
    # Entries go stale when a count changes; a fresh entry is pushed then, and stale ones are
    # skipped when they surface.
    heap = [(-c, pair) for pair, c in pair_counts.items()]
    heapq.heapify(heap)
    merges, made, done = [], set(), set()
    while len(made) < num_new_tokens and heap:
        neg, (a, b) = heapq.heappop(heap)
        if pair_counts.get((a, b)) != -neg or (a, b) in done:
            continue          # a stale entry, or a pair merged before (it keeps its first rank)
        if -neg < min_frequency:
            break
        merges.append((a, b))
        done.add((a, b))
        merged = a + b
        made.add(merged)
        touched = set()
        for wi in sorted(where.pop((a, b), ())):
            syms, f = words[wi], freqs[wi]
            if (a, b) not in zip(syms, syms[1:]):       # an index left from an earlier merge
                continue
            for pair in zip(syms, syms[1:]):            # take the old pairs out ...
                pair_counts[pair] -= f
                touched.add(pair)
            out, i = [], 0
            while i < len(syms):                        # merge left to right ...
                if i + 1 < len(syms) and syms[i] == a and syms[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(syms[i])
                    i += 1
            words[wi] = out
            for pair in zip(out, out[1:]):              # ... and the new ones in
                pair_counts[pair] += f
                where[pair].add(wi)
                touched.add(pair)
        for pair in touched:
            c = pair_counts[pair]
            if c > 0:
                heapq.heappush(heap, (-c, pair))
            else:
                del pair_counts[pair]
    return merges


def build_bpe_tokenizer_json(corpus_texts, vocab_size: int, special_tokens) -> dict:
    """A `tokenizer.json` dict: 256 byte tokens, learned merges, then `special_tokens`.

    `vocab_size` counts everything (bytes + merges + special tokens); the result has exactly that
    many ids unless every word of the corpus is already one token (then fewer). `special_tokens` is a list
    of strings (special tokens, skipped by `decode(skip_special_tokens=True)`) or of dicts
    `{"content": ..., "special": bool}` for added tokens that are not special, like Qwen2.5's
    `<tool_call>`. They get the ids after the vocabulary, in the order given.
    """
    entries = [{"content": s, "special": True} if isinstance(s, str) else dict(s) for s in special_tokens]
    contents = [e["content"] for e in entries]
    if len(set(contents)) != len(contents) or not all(contents):
        raise ValueError("special tokens must be distinct, non-empty strings")
    num_new = vocab_size - 256 - len(entries)
    if num_new < 0:
        raise ValueError(f"vocab_size {vocab_size} is smaller than 256 byte tokens + "
                         f"{len(entries)} special tokens")
    merges = train_merges(corpus_texts, num_new, contents)
    vocab = {c: i for i, c in enumerate(BYTE_TO_CHAR)}
    for a, b in merges:
        vocab.setdefault(a + b, len(vocab))
    for c in contents:
        if c in vocab:
            raise ValueError(f"special token {c!r} is also a learned token")
    added = [{"id": len(vocab) + k, "content": e["content"], "single_word": False, "lstrip": False,
              "rstrip": False, "normalized": False, "special": bool(e.get("special", True))}
             for k, e in enumerate(entries)]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": False},
            dict(_BYTE_LEVEL),
        ]},
        "post_processor": dict(_BYTE_LEVEL),
        "decoder": dict(_BYTE_LEVEL),
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }


def write_tokenizer_folder(folder, spec: dict, eos_token: str = "<|endoftext|>") -> Path:
    """Write `tokenizer.json` and a Qwen2-style `tokenizer_config.json` (no BOS, so the prompt
    starts with EOS, as for the release) into `folder`; both `TextTokenizer.from_dir` and
    `transformers.AutoTokenizer` read the result."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if eos_token not in {t["content"] for t in spec["added_tokens"]}:
        raise ValueError(f"eos_token {eos_token!r} is not one of the added tokens")
    (folder / "tokenizer.json").write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    config = {"tokenizer_class": "Qwen2Tokenizer", "bos_token": None, "eos_token": eos_token,
              "pad_token": eos_token, "model_max_length": 131072, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


# The added tokens of a Lumina-mGPT 2.0 tokenizer: Qwen2.5's 22 (ids 151643..151664 in the
# release), then the Chameleon-named ones the image format uses (spec section 2).
QWEN25_ADDED = (
    [{"content": c, "special": True} for c in (
        "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
        "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
        "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")]
    + [{"content": c, "special": False} for c in (
        "<tool_call>", "</tool_call>", "<|fim_prefix|>", "<|fim_middle|>", "<|fim_suffix|>",
        "<|fim_pad|>", "<|repo_name|>", "<|file_sep|>")]
)
CHAMELEON_ADDED = (["<racm3:break>", "<eoss>"] + [f"<reserved{n:05d}>" for n in range(8796, 8800)]
                   + [f"<reserved{n:05d}>" for n in range(8800, 8901)] + ["<reserved08706>"])
LUMINA_ADDED = QWEN25_ADDED + CHAMELEON_ADDED
