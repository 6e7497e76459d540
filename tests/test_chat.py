"""ChatML rendering (uni1_core/chat.py) against `transformers`' apply_chat_template on the real
Qwen2.5-Instruct and Qwen3 chat templates (tests/data/chat_templates/, sources in SOURCE.md),
and TextTokenizer against `tokenizers` on chat-formatted text with Qwen-style special tokens."""
from pathlib import Path

import pytest

from training.bpe import QWEN25_ADDED, build_bpe_tokenizer_json, write_tokenizer_folder
from uni1_core.chat import ChatFormat, ChatFormatError, split_thinking
from uni1_core.tokenizer import TextTokenizer

transformers = pytest.importorskip("transformers")
tokenizers = pytest.importorskip("tokenizers")

TEMPLATES = Path(__file__).parent / "data" / "chat_templates"
QWEN3_ADDED = QWEN25_ADDED + [{"content": c, "special": False}
                              for c in ("<tool_response>", "</tool_response>", "<think>", "</think>")]
CORPUS = ["You plan pictures. Answer with a description and a JSON plan.",
          "two red circles to the left of a blue square", "a confused grizzly bear in calculus class",
          '{"subjects": [{"noun": "circle", "count": 2, "color": "red"}]}', "Thinking: the user wants"] * 2

SYSTEM = {"role": "system", "content": "You turn prompts into plans.\nAnswer in JSON."}
USER = {"role": "user", "content": "two red circles left of a blue square"}
CONVERSATIONS = {
    "user only": [USER],
    "system + user": [SYSTEM, USER],
    "retry turn": [SYSTEM, USER, {"role": "assistant", "content": "<think>\nhmm\n</think>\n\n{oops"},
                   {"role": "user", "content": "That was not JSON: Expecting ',' delimiter. Try again."}],
    "assistant last, with thinking": [USER, {"role": "assistant", "content": "<think>\nok\n</think>\n\nfine"}],
    "assistant last, no thinking": [USER, {"role": "assistant", "content": "\n\nfine"}],
    "reasoning_content field": [USER, {"role": "assistant", "content": "fine", "reasoning_content": "\nwhy\n"}],
    "later system turn": [USER, {"role": "system", "content": "be brief"}, {"role": "user", "content": "ok"}],
    "assistant after user, then more": [SYSTEM, USER, {"role": "assistant", "content": "a</think>b"},
                                        {"role": "assistant", "content": "<think>x</think>\n\ny"}],
    "empty and unicode": [{"role": "user", "content": ""}, {"role": "assistant", "content": "日本 ✓ 😀"},
                          {"role": "user", "content": "  spaces  \n"}],
}


def _hf_tokenizer(folder: Path, template: str):
    tok = transformers.PreTrainedTokenizerFast(tokenizer_file=str(folder / "tokenizer.json"),
                                               eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.chat_template = template
    return tok


@pytest.fixture(scope="module")
def qwen3_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("qwen3_tok")
    write_tokenizer_folder(folder, build_bpe_tokenizer_json(CORPUS, 256 + 60 + len(QWEN3_ADDED), QWEN3_ADDED))
    return folder


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("generation", [False, True])
@pytest.mark.parametrize("family,file", [("qwen2", "qwen2.5-instruct.jinja"), ("qwen3", "qwen3.jinja")])
def test_render_equals_apply_chat_template(qwen3_folder, family, file, name, generation):
    messages = CONVERSATIONS[name]
    fmt = ChatFormat.qwen2() if family == "qwen2" else ChatFormat.qwen3()
    hf = _hf_tokenizer(qwen3_folder, (TEMPLATES / file).read_text())
    if family == "qwen2" and any("reasoning_content" in m for m in messages):
        pytest.skip("Qwen2.5's template has no reasoning_content field")
    for thinking in (None, True, False):
        kwargs = {} if thinking is None else {"enable_thinking": thinking}
        want = hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)
        got = fmt.render(messages, add_generation_prompt=generation, enable_thinking=thinking)
        assert got == want, (family, name, generation, thinking)


def test_thinking_switch_writes_the_empty_block():
    text = ChatFormat.qwen3().render([USER], add_generation_prompt=True, enable_thinking=False)
    assert text.endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")
    assert ChatFormat.qwen3().render([USER], add_generation_prompt=True).endswith("<|im_start|>assistant\n")
    # Qwen2.5 has no switch: its template ignores the flag
    assert ChatFormat.qwen2().render([USER], add_generation_prompt=True, enable_thinking=False).endswith(
        "<|im_start|>assistant\n")


def test_split_thinking():
    assert split_thinking("<think>\nplan it\n</think>\n\n{}") == ("{}", "plan it")
    assert split_thinking("no tags") == ("no tags", "")
    assert split_thinking("answer", "given") == ("answer", "given")


def test_format_detection():
    qwen3_tokens = [t["content"] for t in QWEN3_ADDED]
    qwen2_tokens = [t["content"] for t in QWEN25_ADDED]
    assert ChatFormat.for_model("qwen3", qwen3_tokens) == ChatFormat.qwen3()
    assert ChatFormat.for_model("qwen2", qwen2_tokens) == ChatFormat.qwen2()
    assert ChatFormat.for_model("qwen2", qwen2_tokens, (TEMPLATES / "qwen2.5-instruct.jinja").read_text()) \
        == ChatFormat.qwen2()
    assert ChatFormat.for_model("qwen2", qwen3_tokens, (TEMPLATES / "qwen3.jinja").read_text()) == ChatFormat.qwen3()
    with pytest.raises(ChatFormatError, match="not a ChatML"):
        ChatFormat.for_model("qwen2", ["<|endoftext|>"])
    with pytest.raises(ChatFormatError, match="model_type 'llama'"):
        ChatFormat.for_model("llama", qwen3_tokens)


@pytest.mark.parametrize("bad,match", [([], "non-empty"), ([{"role": "tool", "content": "x"}], "role 'tool'"),
                                       ([{"role": "user"}], "'role' and 'content'"),
                                       ([{"role": "user", "content": ["x"]}], "must be a string")])
def test_bad_messages_are_named(bad, match):
    with pytest.raises(ChatFormatError, match=match):
        ChatFormat.qwen3().render(bad)


def test_tokenizer_matches_tokenizers_on_chat_text(qwen3_folder):
    """TextTokenizer (pure Python) against `tokenizers` on rendered conversations: the special
    tokens split out whole, <think> (not special) kept by decode(skip_special_tokens=True)."""
    ours = TextTokenizer.from_dir(qwen3_folder)
    ref = tokenizers.Tokenizer.from_file(str(qwen3_folder / "tokenizer.json"))
    texts = [ChatFormat.qwen3().render(m, add_generation_prompt=g, enable_thinking=t)
             for m in CONVERSATIONS.values() for g in (False, True) for t in (None, False)]
    texts += ["<|im_start|><|im_start|>", "x<|im_end|>y", "<think></think>", "<|im_start|>assistant\n<think>\n",
              "a <|im_end|> b <|endoftext|>", "<think", "think>", "<|im_start", "</think>\n\n{\"a\": 1}"]
    for text in texts:
        want = ref.encode(text, add_special_tokens=False).ids
        assert ours.encode(text) == want, text
        for skip in (False, True):
            assert ours.decode(want, skip_special_tokens=skip) == ref.decode(want, skip_special_tokens=skip), text
    for name in ("<|im_start|>", "<|im_end|>", "<|endoftext|>", "<think>", "</think>"):
        assert ours.token_to_id(name) == ref.token_to_id(name)
        assert ours.encode(name) == [ref.token_to_id(name)]
