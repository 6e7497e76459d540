"""The text tokenizer: a pure-Python reader of Hugging Face `tokenizer.json` files.

Lumina-mGPT 2.0 ships a Qwen2-family byte-level BPE with Chameleon-named special tokens
appended (see docs/format.md, section 4). This module implements the
`tokenizer.json` format for the components such files use, and gives the same ids and strings
as the `tokenizers` library (`encode(text, add_special_tokens=False)` / `decode(ids)`):

    text -> split out added tokens (longest match) -> NFC -> pre-tokenizer (regex split,
    byte-level alphabet) -> BPE merges per word -> ids

Anything else (another normalizer, model or decoder type, a split regex we have not verified)
is refused with an error that names it, rather than tokenized slightly differently.

`tokenizers` matches `\\p{L}`, `\\p{N}` and `\\s` with Oniguruma's Unicode 16 tables and
normalises with Unicode 9 tables, while Python's `unicodedata` has the tables of its own
release (14.0 for Python 3.11). The small tables below bridge that gap; the tests check every
code point against `tokenizers`. Known limit: on a Python whose tables are newer than 14.0
(3.12+), combining marks and compositions first assigned in Unicode 15+ (rare scripts) may
normalise differently from `tokenizers`.

Differences from `tokenizers` by design: `vocab_size` is the largest id + 1 (the range of ids
the model's embedding must cover), and `decode` rejects an id the file does not define
(`tokenizers` silently skips it) so that image-code ids never vanish from decoded text.
"""
from __future__ import annotations

import functools
import heapq
import json
import re
import unicodedata
from collections import deque
from dataclasses import dataclass
from pathlib import Path


class TokenizerError(ValueError):
    """A tokenizer file we cannot read, or one that uses a component we do not implement."""


MAX_JSON_BYTES = 256 << 20   # refuse bigger tokenizer files before reading them
MAX_ID = 1 << 31             # token ids are int32 in `tokenizers` and in embedding tables


# ----------------------------------------------------------------------------- unicode classes

# Letters and numbers assigned in Unicode 15.0 - 16.0. Oniguruma (inside `tokenizers` 0.23)
# counts them in \p{L} / \p{N}; older `unicodedata` tables call them unassigned.
_LETTERS_SINCE_15 = (
    (0x1C89, 0x1C8A), (0xA7CB, 0xA7CD), (0xA7DA, 0xA7DC), (0x105C0, 0x105F3), (0x10D4A, 0x10D65),
    (0x10D6F, 0x10D85), (0x10EC2, 0x10EC4), (0x1123F, 0x11240), (0x11380, 0x11389),
    (0x1138B, 0x1138B), (0x1138E, 0x1138E), (0x11390, 0x113B5), (0x113B7, 0x113B7),
    (0x113D1, 0x113D1), (0x113D3, 0x113D3), (0x11BC0, 0x11BE0), (0x11F02, 0x11F02),
    (0x11F04, 0x11F10), (0x11F12, 0x11F33), (0x1342F, 0x1342F), (0x13441, 0x13446),
    (0x13460, 0x143FA), (0x16100, 0x1611D), (0x16D40, 0x16D6C), (0x18CFF, 0x18CFF),
    (0x1B132, 0x1B132), (0x1B155, 0x1B155), (0x1DF25, 0x1DF2A), (0x1E030, 0x1E06D),
    (0x1E4D0, 0x1E4EB), (0x1E5D0, 0x1E5ED), (0x1E5F0, 0x1E5F0), (0x2B739, 0x2B739),
    (0x2EBF0, 0x2EE5D), (0x31350, 0x323AF),
)
_NUMBERS_SINCE_15 = (
    (0x10D40, 0x10D49), (0x116D0, 0x116E3), (0x11BF0, 0x11BF9), (0x11F50, 0x11F59),
    (0x16130, 0x16139), (0x16D70, 0x16D79), (0x1CCF0, 0x1CCF9), (0x1D2C0, 0x1D2D3),
    (0x1E4F0, 0x1E4F9), (0x1E5F1, 0x1E5FA),
)
# Unicode White_Space: what both Oniguruma's and Rust regex's \s match. (str.isspace differs:
# it also takes U+001C..U+001F.)
_WHITE_SPACE = ((0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680),
                (0x2000, 0x200A), (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F),
                (0x3000, 0x3000))


def _ranges(code_points) -> list[tuple[int, int]]:
    out = []
    for c in sorted(code_points):
        if out and out[-1][1] == c - 1:
            out[-1] = (out[-1][0], c)
        else:
            out.append((c, c))
    return out


def _class_body(ranges) -> str:
    """The inside of a Python regex character class for these code point ranges."""
    def esc(c):
        return f"\\U{c:08X}"
    return "".join(esc(a) if a == b else f"{esc(a)}-{esc(b)}" for a, b in ranges)


@functools.lru_cache(maxsize=None)
def _unicode_classes() -> dict[str, str]:
    """Regex class bodies for \\p{L}, \\p{N} and \\s, built once per process (~50 ms).

    Planes 4..16 hold no letters or numbers (only unassigned, tag, variation-selector and
    private-use code points), so the scan stops at the end of plane 3.
    """
    letters, numbers = set(), set()
    category = unicodedata.category
    for c in range(0x40000):
        major = category(chr(c))[0]
        if major == "L":
            letters.add(c)
        elif major == "N":
            numbers.add(c)
    for a, b in _LETTERS_SINCE_15:
        letters.update(range(a, b + 1))
    for a, b in _NUMBERS_SINCE_15:
        numbers.update(range(a, b + 1))
    return {"L": _class_body(_ranges(letters)), "N": _class_body(_ranges(numbers)),
            "s": _class_body(_WHITE_SPACE)}


# The split regexes we translate and have verified against `tokenizers` (tests/test_tokenizer.py).
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
                 r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
                  r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
# The fixed regex of the ByteLevel pre-tokenizer when `use_regex` is true (GPT-2's).
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
KNOWN_PATTERNS = {QWEN2_PATTERN: "Qwen2", LLAMA3_PATTERN: "Llama-3", GPT2_PATTERN: "GPT-2"}

# Case-insensitive letters as Oniguruma folds them: 's' also matches U+017F LONG S (checked
# over all letters against `tokenizers`).
_FOLDS = {"s": "sS\u017f"}


@functools.lru_cache(maxsize=None)
def compile_split_pattern(pattern: str) -> re.Pattern:
    """Translate one of KNOWN_PATTERNS from Oniguruma syntax to Python `re`.

    Handles exactly the constructs those patterns use: \\p{L}, \\p{N}, \\s, \\S inside and
    outside brackets, and an ASCII-letter `(?i:...)` group. Both engines are backtracking with
    leftmost-first alternation, so the translated regex matches the same spans.
    """
    if pattern not in KNOWN_PATTERNS:
        raise TokenizerError(
            f"unsupported Split regex {pattern!r}: this tokenizer implements only the "
            f"{', '.join(KNOWN_PATTERNS.values())} split patterns (python's `re` has no \\p{{..}} "
            "classes, so each pattern is translated and verified by hand)")
    classes = _unicode_classes()
    out, i, in_class, fold_depth, depth = [], 0, False, None, 0
    while i < len(pattern):
        c = pattern[i]
        if c == "\\":
            if pattern.startswith(("\\p{L}", "\\p{N}"), i):
                body = classes[pattern[i + 3]]
                out.append(body if in_class else f"[{body}]")
                i += 5
                continue
            nxt = pattern[i + 1]
            if nxt == "s":
                out.append(classes["s"] if in_class else f"[{classes['s']}]")
            elif nxt == "S" and not in_class:
                out.append(f"[^{classes['s']}]")
            elif nxt in "rn":
                out.append("\\" + nxt)
            else:
                raise TokenizerError(f"split regex escape \\{nxt} is not translated")
            i += 2
            continue
        if pattern.startswith("(?i:", i):
            fold_depth, depth = depth, depth + 1
            out.append("(?:")
            i += 4
            continue
        if c == "[" and not in_class:
            in_class = True
        elif c == "]" and in_class:
            in_class = False
        elif c == "(" and not in_class:
            depth += 1
        elif c == ")" and not in_class:
            depth -= 1
            if depth == fold_depth:
                fold_depth = None
        if fold_depth is not None and c.isascii() and c.isalpha() and not in_class:
            out.append("[" + _FOLDS.get(c.lower(), c.lower() + c.upper()) + "]")
        else:
            out.append(c)
        i += 1
    return re.compile("".join(out))


# ----------------------------------------------------------------------------- file structure

def _show(value, limit: int = 60) -> str:
    """A short repr for an error message (a hostile file may hold megabytes in one value)."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


def _kind(spec, what: str) -> str | None:
    """The `type` of one component entry, which must be a JSON object."""
    if not isinstance(spec, dict):
        raise TokenizerError(f"{what} must be a JSON object with a 'type' (as `tokenizers` writes it), "
                             f"got {type(spec).__name__} {_show(spec)}")
    return spec.get("type")


def _list(value, what: str) -> list:
    if not isinstance(value, list):
        raise TokenizerError(f"{what} must be a JSON list, got {type(value).__name__} {_show(value)}")
    return value


# ----------------------------------------------------------------------------- normalisation

# Combining marks (non-zero canonical combining class) assigned in Unicode 10.0 - 14.0.
# `tokenizers` normalises with Unicode 9 tables, where these are unassigned: class 0, so they
# act as starters that nothing reorders across.
_MARKS_SINCE_10 = (
    (0x7FD, 0x7FD), (0x898, 0x89F), (0x8CA, 0x8D3), (0x9FE, 0x9FE), (0xC3C, 0xC3C),
    (0xD3B, 0xD3C), (0xEBA, 0xEBA), (0x1715, 0x1715), (0x1ABF, 0x1ACE), (0x1DF6, 0x1DFA),
    (0xA82C, 0xA82C), (0x10D24, 0x10D27), (0x10EAB, 0x10EAC), (0x10F46, 0x10F50),
    (0x10F82, 0x10F85), (0x11070, 0x11070), (0x1133B, 0x1133B), (0x1145E, 0x1145E),
    (0x11839, 0x1183A), (0x1193D, 0x1193E), (0x11943, 0x11943), (0x119E0, 0x119E0),
    (0x11A34, 0x11A34), (0x11A47, 0x11A47), (0x11A99, 0x11A99), (0x11D42, 0x11D42),
    (0x11D44, 0x11D45), (0x11D97, 0x11D97), (0x16FF0, 0x16FF1), (0x1E130, 0x1E136),
    (0x1E2AE, 0x1E2AE), (0x1E2EC, 0x1E2EF),
)
# ...and the one canonical composition added since (U+11935 + U+11930 -> U+11938, Unicode 13):
# its second half never composes for `tokenizers`.
_NFC_BARRIER = re.compile("[" + _class_body(_MARKS_SINCE_10 + ((0x11930, 0x11930),)) + "]")


def nfc(text: str) -> str:
    """NFC exactly as `tokenizers` computes it (see _MARKS_SINCE_10)."""
    if text.isascii() or unicodedata.is_normalized("NFC", text):
        return text
    if not _NFC_BARRIER.search(text):
        return unicodedata.normalize("NFC", text)
    # Normalise the stretches between barrier characters separately, the barriers unchanged.
    out, pos = [], 0
    for m in _NFC_BARRIER.finditer(text):
        out += [unicodedata.normalize("NFC", text[pos:m.start()]), m.group()]
        pos = m.end()
    out.append(unicodedata.normalize("NFC", text[pos:]))
    return "".join(out)


def _build_normalizer(spec):
    """A str -> str function for the file's `normalizer` entry."""
    if spec is None:
        return None
    kind = _kind(spec, "normalizer")
    if kind == "NFC":
        return nfc
    if kind == "Sequence":
        steps = [_build_normalizer(s) for s in _list(spec.get("normalizers", []), "normalizer 'normalizers'")]
        steps = [s for s in steps if s is not None]
        if not steps:
            return None
        if len(steps) == 1:
            return steps[0]
        return lambda text: functools.reduce(lambda acc, f: f(acc), steps, text)
    raise TokenizerError(f"unsupported normalizer type {kind!r}: this tokenizer implements "
                         "null, NFC and Sequence of those")


# ----------------------------------------------------------------------------- byte level

def bytes_to_unicode() -> list[str]:
    """GPT-2's byte-level alphabet: byte b -> a printable character.

    Printable Latin-1 bytes stand for themselves; the other 68 (controls, space, 0x7F-0xA0,
    0xAD) are moved to U+0100 onwards, in byte order, so that no token contains whitespace.
    """
    printable = set(range(ord("!"), ord("~") + 1)) | set(range(0xA1, 0xAD)) | set(range(0xAE, 0x100))
    table, moved = [], 0
    for b in range(256):
        if b in printable:
            table.append(chr(b))
        else:
            table.append(chr(256 + moved))
            moved += 1
    return table


BYTE_TO_CHAR = bytes_to_unicode()
CHAR_TO_BYTE = {c: b for b, c in enumerate(BYTE_TO_CHAR)}
_LATIN1_TO_BYTE_CHARS = {b: c for b, c in enumerate(BYTE_TO_CHAR)}  # str.translate table


def to_byte_chars(text: str) -> str:
    """The UTF-8 bytes of `text`, each written as its byte-level character."""
    return text.encode("utf-8").decode("latin-1").translate(_LATIN1_TO_BYTE_CHARS)


# ----------------------------------------------------------------------------- pre-tokenizer

def _split_spans(text: str, regex: re.Pattern, behavior: str, invert: bool) -> list[str]:
    """`tokenizers`' NormalizedString.split: cut `text` at the regex matches."""
    pieces, prev = [], 0          # (start, end, is_match)
    for m in regex.finditer(text):
        if m.start() != prev:
            pieces.append((prev, m.start(), False))
        pieces.append((m.start(), m.end(), True))
        prev = m.end()
    if prev != len(text):
        pieces.append((prev, len(text), False))
    if invert:
        pieces = [(a, b, not is_match) for a, b, is_match in pieces]
    if behavior == "Isolated":
        spans = [(a, b) for a, b, _ in pieces]
    elif behavior == "Removed":
        spans = [(a, b) for a, b, is_match in pieces if not is_match]
    elif behavior == "MergedWithPrevious":     # a delimiter joins the piece before it
        spans, previous_match = [], False
        for a, b, is_match in pieces:
            if is_match and not previous_match and spans:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
            previous_match = is_match
    elif behavior == "MergedWithNext":         # a delimiter joins the piece after it
        spans, previous_match = [], False
        for a, b, is_match in reversed(pieces):
            if is_match and not previous_match and spans:
                spans[-1] = (a, spans[-1][1])
            else:
                spans.append((a, b))
            previous_match = is_match
        spans.reverse()
    elif behavior == "Contiguous":             # runs of delimiters / non-delimiters stay together
        spans, previous_match = [], False
        for a, b, is_match in pieces:
            if is_match == previous_match and spans:
                spans[-1] = (spans[-1][0], b)
            else:
                spans.append((a, b))
            previous_match = is_match
    else:
        raise TokenizerError(f"unsupported Split behavior {behavior!r}")
    return [text[a:b] for a, b in spans if b > a]


def _build_pre_tokenizer(spec) -> list:
    """The file's `pre_tokenizer` as a list of steps, each `list[str] -> list[str]`."""
    if spec is None:
        return []
    kind = _kind(spec, "pre_tokenizer")
    if kind == "Sequence":
        return [step for s in _list(spec.get("pretokenizers", []), "pre_tokenizer 'pretokenizers'")
                for step in _build_pre_tokenizer(s)]
    if kind == "Split":
        pattern = spec.get("pattern", {})
        if not (isinstance(pattern, dict) and len(pattern) == 1
                and isinstance(next(iter(pattern.values())), str)):
            raise TokenizerError(f"unsupported Split pattern {_show(pattern)}: expected "
                                 '{"Regex": "..."} or {"String": "..."}')
        if "Regex" in pattern:
            regex = compile_split_pattern(pattern["Regex"])
        elif "String" in pattern and pattern["String"]:
            regex = re.compile(re.escape(pattern["String"]))
        else:
            raise TokenizerError(f"unsupported Split pattern {pattern!r}")
        behavior, invert = spec.get("behavior"), bool(spec.get("invert", False))
        _split_spans("", regex, behavior, invert)   # reject an unknown behaviour at load time
        return [lambda words: [p for w in words for p in _split_spans(w, regex, behavior, invert)]]
    if kind == "ByteLevel":
        add_prefix_space = bool(spec.get("add_prefix_space", True))
        regex = compile_split_pattern(GPT2_PATTERN) if spec.get("use_regex", True) else None

        def byte_level(words):
            out = []
            for w in words:
                if add_prefix_space and not w.startswith(" "):
                    w = " " + w
                out.extend(regex.findall(w) if regex is not None else [w])
            return [to_byte_chars(w) for w in out]
        return [byte_level]
    raise TokenizerError(f"unsupported pre_tokenizer type {kind!r}: this tokenizer implements "
                         "Sequence, Split and ByteLevel")


# ----------------------------------------------------------------------------- added tokens

@dataclass(frozen=True)
class AddedToken:
    id: int
    content: str
    special: bool = False
    normalized: bool = True
    lstrip: bool = False
    rstrip: bool = False
    single_word: bool = False


def _is_word_char(c: str) -> bool:
    """Rust regex's Unicode \\w (Alphabetic, marks, decimal digits, connector punctuation,
    joiners), as `tokenizers` uses it for `single_word`."""
    cat = unicodedata.category(c)
    return (cat[0] in "LM" or cat in ("Nd", "Nl", "Pc") or c in "\u200c\u200d"
            or "\u24b6" <= c <= "\u24e9" or "\U0001f130" <= c <= "\U0001f189")


def _is_space(c: str) -> bool:
    o = ord(c)
    return any(a <= o <= b for a, b in _WHITE_SPACE)


class _AddedTokenMatcher:
    """Leftmost-longest search for many literal tokens in one left-to-right pass (Aho-Corasick,
    as `tokenizers` does it): time linear in the text plus the matches, however long the tokens.

    (A trie walked afresh from every candidate start is quadratic: a 1,000-character token
    that almost matches at each of 20,000 positions costs 20 million steps.)"""

    def __init__(self, tokens: list[AddedToken], pattern_of):
        # The trie: state 0 is the root; goto[s] maps a character to the next state.
        self.goto: list[dict[str, int]] = [{}]
        self.depth = [0]                        # length of the text a state stands for
        self.token: list[AddedToken | None] = [None]   # the token that ends exactly there
        for t in tokens:
            s = 0
            for c in pattern_of(t):
                nxt = self.goto[s].get(c)
                if nxt is None:
                    nxt = len(self.goto)
                    self.goto[s][c] = nxt
                    self.goto.append({})
                    self.depth.append(self.depth[s] + 1)
                    self.token.append(None)
                s = nxt
            if s:
                self.token[s] = t               # the same text twice: the later entry wins
        # fail[s]: the state of the longest proper suffix of s's text that is in the trie;
        # out[s]: the nearest state on that suffix chain (s included) where a token ends.
        n = len(self.goto)
        self.fail, self.out = [0] * n, [0] * n
        queue = deque(self.goto[0].values())
        while queue:
            s = queue.popleft()
            self.out[s] = s if self.token[s] is not None else self.out[self.fail[s]]
            for c, u in self.goto[s].items():
                f = self.fail[s]
                while f and c not in self.goto[f]:
                    f = self.fail[f]
                self.fail[u] = self.goto[f].get(c, 0) if s else 0
                queue.append(u)
        firsts = sorted(ord(c) for c in self.goto[0])
        self.first_chars = re.compile("[" + _class_body(_ranges(firsts)) + "]") if firsts else None

    def find(self, text: str):
        """Non-overlapping (start, end, token), leftmost first, longest at each start."""
        if self.first_chars is None:
            return
        goto, fail, out, depth = self.goto, self.fail, self.out, self.depth
        longest: dict[int, tuple[int, AddedToken]] = {}   # start -> (end, token) of its longest match
        s, i, n = 0, 0, len(text)
        while i < n:
            if s == 0:                                     # skip, in C, to a possible token start
                m = self.first_chars.search(text, i)
                if m is None:
                    break
                i = m.start()
            c = text[i]
            while s and c not in goto[s]:
                s = fail[s]
            s = goto[s].get(c, 0)
            i += 1
            o = out[s]
            while o:                                       # every token that ends at i
                start = i - depth[o]
                if start not in longest or longest[start][0] < i:
                    longest[start] = (i, self.token[o])
                o = out[fail[o]]
        pos = 0
        for start in sorted(longest):
            if start >= pos:
                end, token = longest[start]
                yield start, end, token
                pos = end

    def split(self, text: str) -> list[tuple[str, AddedToken | None]]:
        """`tokenizers`' AddedVocabulary.find_matches: the text as (piece, token-or-None).

        A match that fails its `single_word` test is dropped without retrying a shorter one,
        and `lstrip` / `rstrip` widen a kept match over the white space beside it."""
        out, offset = [], 0
        for start, stop, token in self.find(text):
            if token.single_word:
                before_ok = start == 0 or not _is_word_char(text[start - 1])
                after_ok = stop == len(text) or not _is_word_char(text[stop])
                if not (before_ok and after_ok):
                    continue
            if token.lstrip:
                s = start
                while s > 0 and _is_space(text[s - 1]):
                    s -= 1
                start = max(s, offset)
            if token.rstrip:
                while stop < len(text) and _is_space(text[stop]):
                    stop += 1
            if offset < start:
                out.append((text[offset:start], None))
            out.append((text[start:stop], token))
            offset = stop
        if offset < len(text):
            out.append((text[offset:], None))
        return out


# ----------------------------------------------------------------------------- BPE model

class BPE:
    """Byte-pair encoding of one pre-tokenized word, merges applied lowest rank first.

    Like `tokenizers`, the pair to merge next is the adjacent pair with the smallest
    (rank, position): a heap over pair positions on a linked list of symbols, so long words
    stay O(n log n).
    """

    CACHE_SIZE = 100_000

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], ignore_merges=False):
        self.vocab = vocab
        self.ignore_merges = ignore_merges
        # A repeated pair keeps its last rank, as in tokenizers.
        self.ranks = {(a, b): (rank, a + b) for rank, (a, b) in enumerate(merges)}
        parts = {a for a, _ in self.ranks} | {b for _, b in self.ranks} | {m for _, m in self.ranks.values()}
        if not parts <= vocab.keys():
            rank, (a, b) = next((r, m) for r, m in enumerate(merges)
                                if not {m[0], m[1], m[0] + m[1]} <= vocab.keys())
            missing = next(p for p in (a, b, a + b) if p not in vocab)
            raise TokenizerError(f"merge #{rank} {a!r} + {b!r} uses {missing!r}, which is not in the "
                                 "vocabulary: the tokenizer file is inconsistent")
        self.cache: dict[str, list[int]] = {}

    def merge(self, word: str) -> list[str]:
        if self.ignore_merges and word in self.vocab:
            return [word]
        # A character missing from the vocabulary is dropped (no unk token), as in tokenizers.
        syms = [c for c in word if c in self.vocab]
        n, ranks = len(syms), self.ranks
        nxt = list(range(1, n)) + [-1]
        prv = list(range(-1, n - 1))
        heap = []
        for i in range(n - 1):
            r = ranks.get((syms[i], syms[i + 1]))
            if r is not None:
                heap.append((r[0], i, r[1]))
        heapq.heapify(heap)
        while heap:
            _, i, merged = heapq.heappop(heap)
            j = nxt[i] if syms[i] is not None else -1
            if j == -1:
                continue
            r = ranks.get((syms[i], syms[j]))
            if r is None or r[1] != merged:    # stale: a neighbour changed since this was queued
                continue
            syms[i], syms[j] = merged, None
            k = nxt[j]
            nxt[i] = k
            if k != -1:
                prv[k] = i
                r = ranks.get((merged, syms[k]))
                if r is not None:
                    heapq.heappush(heap, (r[0], i, r[1]))
            p = prv[i]
            if p != -1:
                r = ranks.get((syms[p], merged))
                if r is not None:
                    heapq.heappush(heap, (r[0], p, r[1]))
        return [s for s in syms if s is not None]

    def encode_word(self, word: str) -> list[int]:
        ids = self.cache.get(word)
        if ids is None:
            ids = [self.vocab[s] for s in self.merge(word)]
            if len(self.cache) >= self.CACHE_SIZE:
                self.cache.clear()
            self.cache[word] = ids
        return ids


def _parse_merges(merges) -> list[tuple[str, str]]:
    """Merges as "a b" strings (older files) or [a, b] pairs (newer ones), in rank order."""
    if not isinstance(merges, list):
        raise TokenizerError("the BPE model's 'merges' is not a list")
    if all(isinstance(m, str) for m in merges):
        out = [m.split(" ") for m in merges if not m.startswith("#version")]
        bad = next((k for k, p in enumerate(out) if len(p) != 2), None)
        if bad is not None:
            raise TokenizerError(f"bad merge {' '.join(out[bad])!r} (merge #{bad}): expected 'a b'")
        return [(a, b) for a, b in out]
    bad = next((k for k, m in enumerate(merges)
                if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, str) for x in m))), None)
    if bad is not None:
        raise TokenizerError(f"bad merge {_show(merges[bad])} (merge #{bad}): expected 'a b' or [a, b], "
                             "two strings")
    return [(a, b) for a, b in merges]


def _build_model(spec) -> BPE:
    kind = _kind(spec, "model")
    if kind != "BPE":
        raise TokenizerError(f"unsupported model type {kind!r}: this tokenizer implements BPE only")
    for key, ok in (("dropout", (None, 0, 0.0)), ("unk_token", (None,)),
                    ("continuing_subword_prefix", (None, "")), ("end_of_word_suffix", (None, "")),
                    ("byte_fallback", (None, False))):
        if spec.get(key) not in ok:
            raise TokenizerError(f"unsupported BPE option {key}={spec.get(key)!r}: this tokenizer "
                                 "implements byte-level BPE without it")
    vocab = spec.get("vocab")
    if not isinstance(vocab, dict):
        raise TokenizerError("the BPE model has no 'vocab' object")
    bad = next(((t, i) for t, i in vocab.items() if type(i) is not int or not 0 <= i < MAX_ID), None)
    if bad is not None:
        raise TokenizerError(f"vocab entry {_show(bad[0])} has id {_show(bad[1])}: ids must be whole "
                             f"numbers in 0..{MAX_ID - 1}")
    return BPE(vocab, _parse_merges(spec.get("merges", [])), bool(spec.get("ignore_merges", False)))


# ----------------------------------------------------------------------------- the tokenizer

def read_json_file(path: Path):
    """One tokenizer-side JSON file, refused with a message when too large, not UTF-8 JSON, or
    nested too deeply for Python's parser (json raises RecursionError there)."""
    size = path.stat().st_size
    if size > MAX_JSON_BYTES:
        raise TokenizerError(f"{path} is {size / 2**20:.0f} MiB; tokenizer files are at most "
                             f"{MAX_JSON_BYTES >> 20} MiB (published ones are tens of MiB at most): "
                             "not a tokenizer file?")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path} is not valid JSON ({e}): a truncated download?") from None
    except RecursionError:
        raise TokenizerError(f"{path} is nested too deeply to be a tokenizer file (JSON lists or "
                             "objects inside each other thousands of levels deep)") from None



class TextTokenizer:
    """encode / decode with the ids and strings of Hugging Face `tokenizers` on the same file."""

    def __init__(self, spec: dict, bos_token: str | None = None, eos_token: str | None = None,
                 config_bos_id: int | None = None, config_eos_id: int | None = None, source="<dict>"):
        self.source = source
        if not isinstance(spec, dict):
            raise TokenizerError(f"{source}: not a tokenizer file: its top level is a "
                                 f"{type(spec).__name__}, not a JSON object")
        try:
            self._build_components(spec)
        except RecursionError:
            raise TokenizerError(f"{source}: a component is nested too deeply to be a real tokenizer "
                                 "file") from None
        except TokenizerError as e:
            if str(e).startswith(f"{source}:"):
                raise
            raise TokenizerError(f"{source}: {e}") from e
        for name, i in (("bos_token_id", config_bos_id), ("eos_token_id", config_eos_id)):
            if i is not None and type(i) is not int:
                raise TokenizerError(f"config.json's {name} is {_show(i)}: it must be an integer or null")

        plain = [t for t in self.added.values() if not t.normalized]
        normed = [t for t in self.added.values() if t.normalized]
        # Normalised added tokens match the normalised text, so they are normalised too.
        self._decode_form = {t.id: (self.normalize(t.content) if self.normalize and t.normalized
                                    else t.content) for t in self.added.values()}
        self._match_raw = _AddedTokenMatcher(plain, lambda t: t.content) if plain else None
        self._match_normalized = (_AddedTokenMatcher(normed, lambda t: self._decode_form[t.id])
                                  if normed else None)
        self.special_contents = {t.content for t in self.added.values() if t.special}

        self.bos_token_id = self.token_to_id(bos_token) if isinstance(bos_token, str) and bos_token else None
        self.eos_token_id = self.token_to_id(eos_token) if isinstance(eos_token, str) and eos_token else None
        if self.bos_token_id is None:
            self.bos_token_id = config_bos_id
        if self.eos_token_id is None:
            self.eos_token_id = config_eos_id
        self.vocab_size = 1 + max(list(self.id_to_model_token) + list(self.added), default=-1)

    def _build_components(self, spec: dict):
        for key in ("truncation", "padding"):
            if spec.get(key) is not None:
                raise TokenizerError(f"'{key}' is set; this tokenizer encodes whole texts "
                                     f"only (set it to null)")
        self.normalize = _build_normalizer(spec.get("normalizer"))
        self.pre_tokenize = _build_pre_tokenizer(spec.get("pre_tokenizer"))
        self.model = _build_model(spec.get("model") or {})
        decoder = spec.get("decoder")
        if decoder is None or _kind(decoder, "decoder") != "ByteLevel":
            raise TokenizerError(f"unsupported decoder {_show(decoder)}: this tokenizer "
                                 "implements the ByteLevel decoder only")
        post = spec.get("post_processor")
        # Post-processors only add special tokens (we encode without them) or trim offsets.
        if post is not None and _kind(post, "post_processor") not in ("ByteLevel", "TemplateProcessing"):
            raise TokenizerError(f"unsupported post_processor type {post.get('type')!r}")

        self.vocab: dict[str, int] = self.model.vocab
        self.id_to_model_token = {i: t for t, i in self.vocab.items()}
        self.added: dict[int, AddedToken] = {}
        self.added_by_content: dict[str, int] = {}
        self._add_tokens(_list(spec.get("added_tokens") or [], "'added_tokens'"))
        # characters in the longest token (byte-level model tokens: one character per byte)
        self.longest_token = max([len(t) for t in self.vocab] + [len(t.content) for t in self.added.values()]
                                 + [1])

    def _add_tokens(self, entries):
        """Give ids to the added tokens the way `tokenizers` does on load (it ignores the ids
        written in the file), and refuse a file whose ids disagree with that."""
        next_id = len(self.vocab)
        for k, e in enumerate(entries):
            if not (isinstance(e, dict) and type(e.get("id")) is int and isinstance(e.get("content"), str)):
                raise TokenizerError(f"added token #{k} {_show(e)} needs an integer 'id' and a string "
                                     "'content' (as `tokenizers` writes them)")
            t = AddedToken(e["id"], e["content"], bool(e.get("special", False)),
                           bool(e.get("normalized", True)), bool(e.get("lstrip", False)),
                           bool(e.get("rstrip", False)), bool(e.get("single_word", False)))
            if not t.content:
                continue
            known = self.added_by_content.get(t.content, self.vocab.get(t.content))
            if known is None:
                known, next_id = next_id, next_id + 1
            if known != t.id:
                raise TokenizerError(
                    f"{self.source}: added token {t.content!r} is written with id {t.id} but "
                    f"`tokenizers` gives it id {known} (the next free id after the vocabulary, or "
                    "the id of the same text in the vocabulary); fix the file's ids")
            self.added_by_content[t.content] = t.id
            self.added[t.id] = t

    # -- loading

    @classmethod
    def from_file(cls, path) -> "TextTokenizer":
        """Read a `tokenizer.json`. BOS/EOS come from `from_dir`; here they stay unset."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"tokenizer file {path} does not exist")
        return cls(read_json_file(path), source=str(path))

    @classmethod
    def from_dir(cls, folder) -> "TextTokenizer":
        """Read `tokenizer.json` plus the BOS / EOS names of `tokenizer_config.json` (and the
        ids of `config.json` where the tokenizer config names none)."""
        folder = Path(folder)
        path = folder / "tokenizer.json"
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no tokenizer.json: not a model folder?")

        def read(name):
            p = folder / name
            data = read_json_file(p) if p.is_file() else {}
            if not isinstance(data, dict):
                raise TokenizerError(f"{p}: expected a JSON object, got a {type(data).__name__}")
            return data

        def name_of(entry):   # "<s>" or {"content": "<s>", ...} or null
            return entry.get("content") if isinstance(entry, dict) else entry

        tok_config, config = read("tokenizer_config.json"), read("config.json")
        spec = read_json_file(path)
        return cls(spec, bos_token=name_of(tok_config.get("bos_token")),
                   eos_token=name_of(tok_config.get("eos_token")),
                   config_bos_id=config.get("bos_token_id"), config_eos_id=config.get("eos_token_id"),
                   source=str(path))

    # -- vocabulary

    def token_to_id(self, token: str) -> int | None:
        i = self.added_by_content.get(token)
        return i if i is not None else self.vocab.get(token)

    def id_to_token(self, i: int) -> str | None:
        t = self.added.get(i)
        return t.content if t is not None else self.id_to_model_token.get(i)

    @property
    def bos_id(self) -> int:
        """The id the xllmx wrapper puts before every prompt: BOS, or EOS when the tokenizer has
        no BOS (Qwen-family tokenizers have none)."""
        i = self.bos_token_id if self.bos_token_id is not None else self.eos_token_id
        if i is None:
            raise TokenizerError(f"{self.source}: neither a BOS nor an EOS token is configured; load "
                                 "the tokenizer with TextTokenizer.from_dir(model_folder)")
        return i

    # -- encode / decode

    def _pieces(self, text: str):
        """(text, added token or None) after both added-token passes and normalisation."""
        first = self._match_raw.split(text) if self._match_raw else [(text, None)]
        for piece, token in first:
            if token is not None:
                yield piece, token
                continue
            if self.normalize is not None:
                piece = self.normalize(piece)
            if self._match_normalized is not None:
                yield from self._match_normalized.split(piece)
            elif piece:
                yield piece, None

    def encode(self, text: str, max_tokens: int | None = None) -> list[int]:
        """Token ids of `text`, no BOS/EOS added (`encode(text, add_special_tokens=False)`).

        max_tokens: stop once more than this many ids are known; the result is then longer than
        max_tokens but not the whole encoding, only proof that the text is too long: how a
        length check refuses a huge text without paying for all of it."""
        if not isinstance(text, str):
            raise TypeError(f"encode takes a str, got {type(text).__name__}")
        try:
            text.encode("utf-8")
        except UnicodeEncodeError as e:
            raise ValueError(f"text has a lone surrogate {text[e.start]!r} at position {e.start}; "
                             "it cannot be encoded as UTF-8") from e
        if max_tokens is not None:
            # No token covers more than longest_token characters, and NFC shrinks a text at most
            # 3x (Hangul jamo), so a prefix this long already needs more than max_tokens ids.
            cut = 4 * (max_tokens + 1) * self.longest_token
            if len(text) > cut:
                ids = self.encode(text[:cut], max_tokens)
                if len(ids) > max_tokens:
                    return ids                       # (else characters were dropped: count all)
        ids = []
        for piece, token in self._pieces(text):
            if token is not None:
                ids.append(token.id)
                if max_tokens is not None and len(ids) > max_tokens:
                    return ids
                continue
            words = [piece]
            for step in self.pre_tokenize:
                words = step(words)
            for w in words:
                if w:
                    ids.extend(self.model.encode_word(w))
                    if max_tokens is not None and len(ids) > max_tokens:
                        return ids
        return ids

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """The text of `ids`: byte-level characters back to bytes, then UTF-8 (invalid bytes
        become U+FFFD). Added tokens appear as their text unless special and skipped."""
        data = bytearray()
        for i in ids:
            i = int(i)
            if i in self.added:
                token = self._decode_form[i]
                if skip_special_tokens and token in self.special_contents:
                    continue
            else:
                token = self.id_to_model_token.get(i)
                if token is None:
                    raise ValueError(f"id {i} is not in the tokenizer's vocabulary (size "
                                     f"{self.vocab_size}); image-code ids are not text")
            try:
                data += bytes(CHAR_TO_BYTE[c] for c in token)
            except KeyError:             # a token outside the byte-level alphabet: its own UTF-8
                data += token.encode("utf-8")
        return data.decode("utf-8", errors="replace")

    def __len__(self):
        return self.vocab_size

    def __repr__(self):
        return (f"TextTokenizer({self.source!r}, vocab_size={self.vocab_size}, "
                f"added_tokens={len(self.added)})")
