"""TextTokenizer against Hugging Face `tokenizers` on files of the real Lumina-mGPT 2.0 format.

The reference tokenizer is trained here with `tokenizers` (a byte-level BPE with the Qwen2
pre-tokenizer, NFC, the ByteLevel decoder, Qwen2.5's added tokens then the Chameleon-named
ones), so no fixture file is needed. Every comparison is exact: ids and strings.
"""
import json
import random
import re
import time
import unicodedata

import pytest

tokenizers = pytest.importorskip("tokenizers")
from tokenizers import AddedToken as HFAddedToken  # noqa: E402
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

from training.bpe import (  # noqa: E402
    CHAMELEON_ADDED, LUMINA_ADDED, QWEN25_ADDED, build_bpe_tokenizer_json, write_tokenizer_folder)
from uni1_core.tokenizer import (  # noqa: E402
    GPT2_PATTERN, LLAMA3_PATTERN, QWEN2_PATTERN, TextTokenizer, TokenizerError, _unicode_classes, compile_split_pattern, nfc)

PROMPT_TEMPLATE = "Generate an image of {w}x{h} according to the following prompt:\n{p}<reserved08706>"

WORDS = ("the a red blue green yellow circle square triangle left right of above below two three "
         "image generate according following prompt photo cat dog's it's they're we've I'm you'll "
         "he'd THE Don'T WE'RE SHE'LL hello world tokenizer Lumina mGPT transformer").split()
UNICODE_WORDS = ("café naïve façade Ünïcödé straße ΑΒΓ αβγδ привет мир שלום مرحبا नमस्ते สวัสดี "
                 "日本語 中文字符 漢字 한국어 カタカナ ひらがな 😀 👍🏽 👨‍👩‍👧 🇫🇷 ❤️ ∑∫√ ½ ² ٣ ① Ⅻ "
                 "e\u0301 a\u0308\u0323 ǅ ﬁ ſ K Å ‼ ⁉").split()
SPACES = [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r", " \n ", "\x0b", "\x0c",
          "\u00a0", "\u3000", "\u2028", "\u2009", "\x1c", "\x85", " \t\n"]
PUNCT = list(".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`'\"") + ["...", "!!", "?!", "--", "->", "''", "'s", "'S",
                                                     "'ll", "'LL", "'Re", "'ve", "'m", "'d", "'t", "'ſ"]


def _qwen_format_tokenizer(corpus, vocab_size, added) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(corpus, trainer)
    for e in added:
        entry = {"content": e, "special": True} if isinstance(e, str) else e
        tok.add_tokens([HFAddedToken(entry["content"], special=entry["special"], normalized=False)])
    return tok


def _corpus(seed=0, n=3000):
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        parts = [rng.choice(WORDS if rng.random() < 0.7 else UNICODE_WORDS) for _ in range(rng.randint(3, 12))]
        line = " ".join(parts)
        if rng.random() < 0.3:
            line += rng.choice(SPACES) + str(rng.randint(0, 10 ** rng.randint(1, 6)))
        if rng.random() < 0.3:
            line += rng.choice(PUNCT) + rng.choice(SPACES)
        lines.append(line)
    return lines


@pytest.fixture(scope="module")
def pair():
    """(ours, reference) on a Qwen2-format byte-level BPE with the Lumina added tokens."""
    hf = _qwen_format_tokenizer(_corpus(n=2000), 3000, LUMINA_ADDED)
    spec = json.loads(hf.to_str())
    return TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec)), spec


def _random_code_point(rng):
    while True:
        c = rng.randrange(0x110000) if rng.random() < 0.5 else rng.randrange(0x3000)
        if not 0xD800 <= c < 0xE000:
            return chr(c)


def _random_text(rng, specials):
    """A string built from fragments chosen to stress each stage of the pipeline."""
    frags = []
    for _ in range(rng.randint(1, 25)):
        r = rng.random()
        if r < 0.25:
            w = rng.choice(WORDS)
            frags.append(rng.choice([w, w.upper(), w.capitalize(), w.swapcase()]))
        elif r < 0.40:
            frags.append(rng.choice(UNICODE_WORDS))
        elif r < 0.52:
            frags.append(rng.choice(SPACES) * rng.randint(1, 3))
        elif r < 0.62:
            frags.append(rng.choice(PUNCT) * rng.randint(1, 3))
        elif r < 0.70:
            frags.append(str(rng.randint(0, 10 ** rng.randint(1, 12))))
        elif r < 0.78:
            frags.append("".join(_random_code_point(rng) for _ in range(rng.randint(1, 4))))
        elif r < 0.86:
            s = rng.choice(specials)
            frags.append(s if rng.random() < 0.7 else s[:rng.randint(1, len(s) - 1)])   # whole or cut
        elif r < 0.90:
            frags.append(PROMPT_TEMPLATE.format(w=rng.choice([512, 768, 1024]), h=rng.choice([512, 768]),
                                                p=" ".join(rng.choice(WORDS) for _ in range(8))))
        else:
            frags.append(rng.choice(WORDS + UNICODE_WORDS))
        if rng.random() < 0.5:
            frags.append(" ")
    return "".join(frags)


HARD_CASES = [
    "", " ", "  ", "\n", "\r\n", "\t", " \t ", "a", "A", "'", "'s", "'S", "'ſ", "''s", "x's", "X'S'LL",
    "don't DON'T Don't", "they're THEY'RE we've WE'VE i'm I'M you'll YOU'LL he'd HE'D",
    "hello   world", "hello \n world", "a\r\nb", "a\rb", "trailing   ", "   leading", "\n\n\nx",
    "x\n\n\n", "  \n  \n  ", "tab\t\there", "12345678901234567890", "3.14159", "1,000,000", "v2.0-rc1",
    "😀😀😀", "👨‍👩‍👧‍👦", "🇺🇸🇫🇷", "👍🏽", "日本語のテキスト", "中文，标点。", "한국어 텍스트",
    "e\u0301", "cafe\u0301", "\u1e0b\u0323", "a\u0334\u0301", "a\u1ac1\u0323", "\U00011935\U00011930",
    "<racm3:break>", "<eoss>", "<reserved08706>", "<reserved08799><reserved08824><reserved08824>",
    "<racm3:break", "racm3:break>", "<<racm3:break>>", "<reserved0870>", "<reserved087066>",
    "text<reserved08706>more", "  <|im_start|>  ", "<|endoftext|><|endoftext|>", "<tool_call>x</tool_call>",
    PROMPT_TEMPLATE.format(w=768, h=768, p="two red circles to the left of a blue square"),
    PROMPT_TEMPLATE.format(w=1024, h=512, p="Ein Café in Paris, 日本 🌸, 3 cats!\n\n  done"),
    "\x00\x01\x1f\x7f", "\u00a0\u3000\u2028\u2029\u205f", "\x1c\x1d\x1e\x1f", "\ufeffBOM", "\uffff\U0010ffff",
    "a" * 3000, "ab" * 1500, "aaaa bbbb" * 200, "!" * 500, " " * 400 + "x", "\U00031350\U00010D40",
]


def _check(ours, hf, text):
    ids = ours.encode(text)
    ref = hf.encode(text, add_special_tokens=False).ids
    assert ids == ref, f"encode differs on {text!r}"
    assert ours.decode(ids) == hf.decode(ref, skip_special_tokens=False), f"decode differs on {text!r}"
    assert ours.decode(ids, skip_special_tokens=True) == hf.decode(ref, skip_special_tokens=True)


def test_parity_on_hand_picked_cases(pair):
    ours, hf, _ = pair
    for text in HARD_CASES:
        _check(ours, hf, text)


def test_parity_on_2500_random_strings(pair):
    ours, hf, _ = pair
    specials = [e if isinstance(e, str) else e["content"] for e in LUMINA_ADDED]
    rng = random.Random(1234)
    texts = [_random_text(rng, specials) for _ in range(2500)]
    assert len(set(texts)) > 2400
    for text in texts:
        _check(ours, hf, text)


def test_round_trip_is_identity_on_nfc_text(pair):
    ours, _, _ = pair
    rng = random.Random(5)
    specials = [e if isinstance(e, str) else e["content"] for e in LUMINA_ADDED]
    for _ in range(300):
        text = nfc(_random_text(rng, specials))
        assert ours.decode(ours.encode(text)) == text


def test_decode_parity_on_random_ids(pair):
    """Arbitrary id sequences, including lone UTF-8 continuation and lead bytes."""
    ours, hf, _ = pair
    rng = random.Random(7)
    n = ours.vocab_size
    for _ in range(400):
        ids = [rng.randrange(n) if rng.random() < 0.7 else rng.randrange(256) for _ in range(rng.randint(1, 30))]
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), ids


def test_vocabulary_api(pair):
    ours, hf, spec = pair
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True) == len(hf.get_vocab(with_added_tokens=True))
    base = len(spec["model"]["vocab"])
    for k, e in enumerate(LUMINA_ADDED):
        name = e if isinstance(e, str) else e["content"]
        assert ours.token_to_id(name) == hf.token_to_id(name) == base + k
        assert ours.id_to_token(base + k) == name
    for i in range(0, ours.vocab_size, 97):
        assert ours.id_to_token(i) == hf.id_to_token(i)
    assert ours.token_to_id("<reserved09999>") is None and ours.id_to_token(ours.vocab_size) is None
    assert ours.token_to_id("<racm3:break>") == base + len(QWEN25_ADDED)
    assert len(CHAMELEON_ADDED) == 108


def _all_code_points():
    return [chr(c) for c in range(1, 0x110000) if not 0xD800 <= c < 0xE000]


def test_unicode_classes_on_every_code_point():
    """\\p{L}, \\p{N} and \\s hold the code points Oniguruma (Unicode 16) gives them: every code
    point of planes 0-3 and 14, and a sample of the unassigned / private-use planes."""
    rng = random.Random(0)
    cps = [c for c in _all_code_points() if ord(c) < 0x40000 or 0xE0000 <= ord(c) < 0xF0000]
    cps += rng.sample([chr(c) for c in range(0x40000, 0xE0000)], 2000) + [chr(0xF0000 + rng.randrange(0x20000)) for _ in range(500)]
    ours = {name: set(re.findall("[" + body + "]", "".join(cps))) for name, body in _unicode_classes().items()}
    runs = [[], [], [], []]
    for c in cps:
        runs[0 if c in ours["L"] else 1 if c in ours["N"] else 2 if c in ours["s"] else 3].append(c)
    # Laid out class by class: if our classes are right, the reference finds exactly these four
    # runs; a code point it classifies differently breaks a run.
    runs = ["".join(r) for r in runs]
    pieces = pre_tokenizers.Split(Regex(r"\p{L}+|\p{N}+|\s+"), behavior="isolated").pre_tokenize_str("".join(runs))
    assert [p for p, _ in pieces] == runs


@pytest.mark.parametrize("pattern", [QWEN2_PATTERN, LLAMA3_PATTERN, GPT2_PATTERN], ids=["qwen2", "llama3", "gpt2"])
def test_split_regex_on_sampled_code_points(pattern):
    ours = compile_split_pattern(pattern)
    ref = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    cps = random.Random(0).sample(_all_code_points(), 20000) + [" ", "\n", "\r", "\t", "'", "1", "a"]
    # " c1a": a letter joins the space and 'a'; a number stands alone; punctuation takes the
    # space; white space runs with the space. Each class gives a different split.
    for text in ("".join(" " + c + "1a" for c in cps), "".join(cps), "".join(c + "\n" for c in cps),
                 "".join(c + " " + d for c, d in zip(cps, reversed(cps)))):
        assert ours.findall(text) == [p for p, _ in ref.pre_tokenize_str(text)]


def test_contractions_fold_case_like_oniguruma():
    """(?i:'s|...) also takes U+017F LONG S, and no other non-ASCII letter (case folds live in the BMP)."""
    ours = compile_split_pattern(QWEN2_PATTERN)
    ref = pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated")
    letters = [chr(c) for c in range(0x10000) if unicodedata.category(chr(c))[0] == "L"]
    for make in (lambda c: "'" + c, lambda c: "'" + c + "e", lambda c: "'r" + c, lambda c: "'" + c + "l"):
        text = "\n".join(make(c) + "a" for c in letters)
        assert ours.findall(text) == [p for p, _ in ref.pre_tokenize_str(text)]


def test_nfc_on_every_code_point():
    """NFC as `tokenizers` computes it (Unicode 9 tables) for marks and compositions."""
    ref = normalizers.NFC()
    cps = _all_code_points()
    marks = [c for c in cps if unicodedata.combining(c)]
    cases = ([c for c in cps if c != "\x00"] + ["a" + m + "\u0334" for m in marks] + ["a\u0301" + m for m in marks]
             + [unicodedata.normalize("NFD", c) for c in cps if unicodedata.decomposition(c)]
             + ["\U00011935\U00011930", "x\u1ac1\u0323\u0301y"])
    joined = "\x00".join(cases)
    assert nfc(joined).split("\x00") == ref.normalize_str(joined).split("\x00")


def _variant(spec, **changes):
    spec = json.loads(json.dumps(spec))
    for key, value in changes.items():
        if key == "merges_as_strings":
            spec["model"]["merges"] = [" ".join(m) for m in spec["model"]["merges"]]
        elif key == "ignore_merges":
            spec["model"]["ignore_merges"] = value
        else:
            spec[key] = value
    return spec


def _parity_on(spec, n=250, seed=3):
    ours, hf = TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    specials = [t["content"] for t in spec["added_tokens"]] or ["<x>"]
    rng = random.Random(seed)
    for text in HARD_CASES + [_random_text(rng, specials) for _ in range(n)]:
        _check(ours, hf, text)


BL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}


@pytest.mark.parametrize("variant", [
    dict(merges_as_strings=True),
    dict(ignore_merges=True),
    dict(normalizer=None),
    dict(normalizer={"type": "Sequence", "normalizers": [{"type": "NFC"}]}),
    dict(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}),
    dict(pre_tokenizer={"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}),
    dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": LLAMA3_PATTERN}, "behavior": "Isolated", "invert": False}, BL]}),
    dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": QWEN2_PATTERN}, "behavior": "Isolated", "invert": True},
        dict(BL, add_prefix_space=True)]}),
    *[dict(pre_tokenizer={"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"String": pat}, "behavior": behavior, "invert": invert}, BL]})
      for pat in (" ", "ab") for invert in (False, True)
      for behavior in ("Isolated", "Removed", "MergedWithPrevious", "MergedWithNext", "Contiguous")],
], ids=lambda v: json.dumps(v)[:60])
def test_parity_on_other_configurations(pair, variant):
    _parity_on(_variant(pair[2], **variant), n=60)


def test_added_token_flags(pair):
    """lstrip / rstrip / single_word / normalized added tokens match where `tokenizers` does."""
    spec = json.loads(json.dumps(pair[2]))
    next_id = max(t["id"] for t in spec["added_tokens"]) + 1
    flags = [("<L>", dict(lstrip=True)), ("<R>", dict(rstrip=True)), ("<LR>", dict(lstrip=True, rstrip=True)),
             ("word", dict(single_word=True)), ("café", dict(normalized=True)), ("<N>", dict(normalized=True)),
             ("<L", dict()), ("ab", dict(single_word=True, lstrip=True))]
    for k, (content, f) in enumerate(flags):
        spec["added_tokens"].append(dict({"id": next_id + k, "content": content, "single_word": False,
                                          "lstrip": False, "rstrip": False, "normalized": False,
                                          "special": k % 2 == 0}, **f))
    ours, hf = TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    for text in ["a <L> b", "a  \t<L>b", "<L><L>", "x<R>  y", "x <R>\n\ny", " <LR> ", "<LR>  <LR>", "<R> <L>",
                 "word", "a word b", "swordfish", "word_x", "wordé", "(word)", "cafe\u0301", "café", "xcaféx",
                 "<N> <N>", "<L <LR", "ab", "xab", " ab ", "ab_", "<racm3:break> <L> <R>"]:
        _check(ours, hf, text)
    _parity_on(spec, n=200, seed=11)


@pytest.mark.parametrize("change,message", [
    (lambda s: s.update(normalizer={"type": "NFKC"}), "normalizer type 'NFKC'"),
    (lambda s: s.update(pre_tokenizer={"type": "Whitespace"}), "pre_tokenizer type 'Whitespace'"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(pattern={"Regex": r"\w+|\s+"}),
     "unsupported Split regex"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(behavior="Shuffled"), "Split behavior 'Shuffled'"),
    (lambda s: s["model"].update(type="WordPiece"), "model type 'WordPiece'"),
    (lambda s: s["model"].update(dropout=0.1), "dropout=0.1"),
    (lambda s: s["model"].update(byte_fallback=True), "byte_fallback=True"),
    (lambda s: s["model"].update(unk_token="<unk>"), "unk_token='<unk>'"),
    (lambda s: s.update(decoder={"type": "WordPiece"}), "decoder"),
    (lambda s: s.update(decoder=None), "decoder None"),
    (lambda s: s.update(post_processor={"type": "BertProcessing"}), "post_processor type 'BertProcessing'"),
    (lambda s: s.update(truncation={"max_length": 8}), "'truncation' is set"),
    (lambda s: s["added_tokens"][0].update(id=5), "is written with id 5"),
    (lambda s: s["model"]["merges"].append(["zzz", "qqq"]), "not in the vocabulary"),
    (lambda s: s["model"]["merges"].append("a b c"), "bad merge 'a b c'"),
    (lambda s: s["model"].update(merges=[" ".join(m) for m in s["model"]["merges"]] + ["x y z"]), "bad merge 'x y z'"),
])
def test_unsupported_components_are_refused_by_name(pair, change, message):
    spec = json.loads(json.dumps(pair[2]))
    change(spec)
    with pytest.raises(TokenizerError, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        TextTokenizer(spec)


def test_bad_input_errors(pair, tmp_path):
    ours = pair[0]
    with pytest.raises(ValueError, match="lone surrogate"):
        ours.encode("ab\ud800c")
    with pytest.raises(TypeError, match="takes a str"):
        ours.encode(b"bytes")
    with pytest.raises(ValueError, match="id 999999 is not in the tokenizer"):
        ours.decode([1, 999999])
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TextTokenizer.from_file(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text('{"version": "1.0", "model": {', encoding="utf-8")
    with pytest.raises(TokenizerError, match="not valid JSON"):
        TextTokenizer.from_file(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
        TextTokenizer.from_dir(tmp_path / "nowhere")


@pytest.mark.parametrize("tok_config,config,expected", [
    ({"bos_token": None, "eos_token": "<|endoftext|>"}, {}, "<|endoftext|>"),        # Qwen: BOS falls back to EOS
    ({"bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}, {}, "<|im_start|>"),
    ({"bos_token": {"content": "<racm3:break>", "special": True}}, {}, "<racm3:break>"),
    ({}, {"bos_token_id": 7, "eos_token_id": 9}, 7),
    ({}, {"eos_token_id": 9}, 9),
])
def test_bos_id_from_folder(pair, tmp_path, tok_config, config, expected):
    (tmp_path / "tokenizer.json").write_text(json.dumps(pair[2]), encoding="utf-8")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps(tok_config), encoding="utf-8")
    (tmp_path / "config.json").write_text(json.dumps(config), encoding="utf-8")
    tok = TextTokenizer.from_dir(tmp_path)
    assert tok.bos_id == (expected if isinstance(expected, int) else tok.token_to_id(expected))
    assert TextTokenizer.from_file(tmp_path / "tokenizer.json").encode("hi <eoss>") == tok.encode("hi <eoss>")


def test_missing_bos_and_eos_is_a_clear_error(pair):
    with pytest.raises(TokenizerError, match="neither a BOS nor an EOS"):
        TextTokenizer(pair[2]).bos_id


# ----------------------------------------------------------------------------- training/bpe.py

def test_pure_python_bpe_training_matches_tokenizers():
    corpus = _corpus(seed=2, n=600)
    spec = build_bpe_tokenizer_json(corpus, 700, LUMINA_ADDED)
    assert spec == build_bpe_tokenizer_json(corpus, 700, LUMINA_ADDED)          # deterministic
    assert len(spec["model"]["vocab"]) + len(spec["added_tokens"]) == 700         # exact size
    assert len(spec["model"]["vocab"]) == 700 - len(LUMINA_ADDED) <= 256 + len(spec["model"]["merges"])
    ours, hf = TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    assert ours.vocab_size == hf.get_vocab_size(with_added_tokens=True) == 700
    assert ours.token_to_id("<reserved08706>") == hf.token_to_id("<reserved08706>") == 699
    # The learned merges compress the training text well below one token per byte.
    text = " ".join(corpus[:50])
    assert len(ours.encode(text)) < 0.5 * len(text.encode("utf-8"))
    _parity_on(spec, n=300, seed=4)


def test_bpe_training_refuses_impossible_sizes():
    with pytest.raises(ValueError, match="smaller than 256 byte tokens"):
        build_bpe_tokenizer_json(["abc"], 300, LUMINA_ADDED)
    with pytest.raises(ValueError, match="distinct"):
        build_bpe_tokenizer_json(["abc"], 400, ["<a>", "<a>"])


def test_written_folder_loads_in_transformers_like_the_reference(tmp_path):
    """The reference loads the tokenizer with AutoTokenizer; the demo model's folder must too."""
    transformers = pytest.importorskip("transformers")
    spec = build_bpe_tokenizer_json(_corpus(seed=6, n=200), 600, LUMINA_ADDED)
    folder = write_tokenizer_folder(tmp_path / "model", spec)
    ref = transformers.AutoTokenizer.from_pretrained(str(folder))
    ours = TextTokenizer.from_dir(folder)
    assert ref.bos_token_id is None and ours.bos_id == ref.eos_token_id == ours.token_to_id("<|endoftext|>")
    assert len(ref) == ours.vocab_size == 600
    rng = random.Random(8)
    specials = [e if isinstance(e, str) else e["content"] for e in LUMINA_ADDED]
    for text in HARD_CASES[:60] + [_random_text(rng, specials) for _ in range(100)]:
        ids = ours.encode(text)
        assert ids == ref.encode(text, add_special_tokens=False), text
        assert ours.decode(ids) == ref.decode(ids, skip_special_tokens=False)


def test_tens_of_thousands_of_added_tokens(pair):
    """Added-token matching is one trie walk, not a loop per token: 20,000 of them load and
    encode quickly, and the longest match wins ("<r123" over "<r12")."""
    spec = json.loads(json.dumps(pair[2]))
    taken = {t["content"] for t in spec["added_tokens"]}
    next_id = max(t["id"] for t in spec["added_tokens"]) + 1
    names = [n for n in (f"<reserved{k}>" for k in range(20000)) if n not in taken]
    names += [f"<r{k}" for k in range(3000)]          # "<r1" is a prefix of "<r12", of "<r123" ...
    spec["added_tokens"] += [{"id": next_id + k, "content": n, "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": True} for k, n in enumerate(names)]
    ours, hf = TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    rng = random.Random(9)
    for _ in range(200):
        text = "".join(rng.choice([rng.choice(names), rng.choice(names)[:-1], " x", "<reserved", "1>", "<r", "9"])
                       for _ in range(rng.randint(1, 12)))
        _check(ours, hf, text)


# ----------------------------------------------------------------------------- hostile input (issue 16)

def _timed(fn, *args, bound=0.5):
    start = time.perf_counter()
    result = fn(*args)
    elapsed = time.perf_counter() - start
    assert elapsed < bound, f"{elapsed:.2f} s (bound {bound} s)"
    return result


def test_long_added_token_matching_is_linear(pair):
    """A 2,000-character added token that almost matches at each of 20,000 positions: a trie
    walked from every start took 19 s; one Aho-Corasick pass takes milliseconds, same ids."""
    spec = json.loads(json.dumps(pair[2]))
    long_token = "q" * 2000 + ">"
    spec["added_tokens"].append({"id": max(t["id"] for t in spec["added_tokens"]) + 1, "content": long_token,
                                 "special": True, "normalized": False, "single_word": False,
                                 "lstrip": False, "rstrip": False})
    ours, hf = TextTokenizer(spec), Tokenizer.from_str(json.dumps(spec))
    for text in ["q" * 20000, ("q" * 1999 + ">") * 10, long_token * 3 + " x " + long_token[1:]]:
        ids = _timed(ours.encode, text)
        assert ids == hf.encode(text, add_special_tokens=False).ids


def test_overlapping_added_tokens_match_leftmost_longest(pair):
    """Tokens that are prefixes, suffixes and infixes of each other (the fail links of the
    automaton): same splits as `tokenizers`."""
    hf = Tokenizer.from_str(json.dumps(pair[2]))
    names = ["abcd", "bc", "bcde", "cdef", "c", "abcdefg", "defx", "xa", "aab"]
    hf.add_tokens([HFAddedToken(n, special=k % 2 == 0, normalized=False, lstrip=k == 1, rstrip=k == 2)
                   for k, n in enumerate(names)])
    ours = TextTokenizer(json.loads(hf.to_str()))
    rng = random.Random(3)
    for _ in range(300):
        text = "".join(rng.choice("abcdefgx ") for _ in range(rng.randint(0, 30)))
        _check(ours, hf, text)


@pytest.mark.parametrize("change,message", [
    (lambda s: s.update(normalizer="NFC"), "normalizer must be a JSON object with a 'type'.*got str 'NFC'"),
    (lambda s: s.update(normalizer={"type": "Sequence", "normalizers": "NFC"}), "'normalizers' must be a JSON list"),
    (lambda s: s.update(pre_tokenizer="ByteLevel"), "pre_tokenizer must be a JSON object"),
    (lambda s: s.update(model="BPE"), "model must be a JSON object"),
    (lambda s: s.update(decoder="ByteLevel"), "decoder must be a JSON object"),
    (lambda s: s.update(post_processor="x"), "post_processor must be a JSON object"),
    (lambda s: s["pre_tokenizer"]["pretokenizers"][0].update(pattern={"String": 5}), "unsupported Split pattern"),
    (lambda s: s["added_tokens"].append({"content": "<zz>"}), r"added token #\d+ \{'content': '<zz>'\} needs an integer 'id'"),
    (lambda s: s["added_tokens"].append({"content": "<zz>", "id": "7"}), "needs an integer 'id'"),
    (lambda s: s["added_tokens"].append({"id": 7}), "and a string 'content'"),
    (lambda s: s["added_tokens"].append("<zz>"), "needs an integer 'id'"),
    (lambda s: s.update(added_tokens={"<zz>": 7}), "'added_tokens' must be a JSON list"),
    (lambda s: s["model"].update(merges=[["a", 1]]), r"bad merge \['a', 1\] \(merge #0\)"),
    (lambda s: s["model"].update(merges=[[["a"], "b"]]), "bad merge"),
    (lambda s: s["model"].update(merges=[1, 2]), "bad merge 1"),
    (lambda s: s["model"].update(merges={"a": "b"}), "'merges' is not a list"),
    (lambda s: s["model"]["vocab"].update(zz="1"), "vocab entry 'zz' has id '1'"),
    (lambda s: s["model"]["vocab"].update(zz=-1), "vocab entry 'zz' has id -1"),
    (lambda s: s["model"]["vocab"].update(zz=2 ** 40), "ids must be whole numbers"),
])
def test_malformed_files_are_refused_by_name(pair, change, message):
    spec = json.loads(json.dumps(pair[2]))
    change(spec)
    with pytest.raises(TokenizerError, match=message):
        _timed(TextTokenizer, spec)


def test_malformed_file_structure(pair, tmp_path):
    path = tmp_path / "tokenizer.json"
    for text, message in [("[]", "top level is a list"), ("[" * 100_000, "nested too deeply"),
                          ('{"model": ' * 50_000, "nested too deeply"), ("\udcff", "not UTF-8"),
                          ('{"normalizer": ' + '{"type": "Sequence", "normalizers": [' * 900 + "null"
                           + "]}" * 900 + "}", "nested too deeply")]:
        path.write_bytes(text.encode("utf-8", "surrogateescape"))
        with pytest.raises(TokenizerError, match=message):
            _timed(TextTokenizer.from_file, path)
    # 1 GB is refused by its size, before a byte is read (a sparse file: no disk used)
    with open(path, "wb") as f:
        f.truncate(1 << 30)
    with pytest.raises(TokenizerError, match="1024 MiB; tokenizer files are at most 256 MiB"):
        _timed(TextTokenizer.from_file, path)
    with pytest.raises(TokenizerError, match="1024 MiB"):
        _timed(TextTokenizer.from_dir, tmp_path)
    path.write_text(json.dumps(pair[2]), encoding="utf-8")
    for name, text, message in [("tokenizer_config.json", "[1]", "expected a JSON object, got a list"),
                                ("config.json", "[" * 100_000, "nested too deeply"),
                                ("config.json", '{"bos_token_id": "7"}', "bos_token_id is '7'")]:
        (tmp_path / name).write_text(text, encoding="utf-8")
        with pytest.raises(TokenizerError, match=message):
            _timed(TextTokenizer.from_dir, tmp_path)
        (tmp_path / name).unlink()
