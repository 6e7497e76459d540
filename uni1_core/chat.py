"""The chat format of Qwen-family instruct models (ChatML), rendered in code: no Jinja.

    fmt = ChatFormat.qwen3()
    text = fmt.render([{"role": "system", "content": "Plan images."},
                       {"role": "user", "content": "a cat"}],
                      add_generation_prompt=True, enable_thinking=False)
    # "<|im_start|>system\\nPlan images.<|im_end|>\\n<|im_start|>user\\na cat<|im_end|>\\n"
    # "<|im_start|>assistant\\n<think>\\n\\n</think>\\n\\n"

Every turn is `<|im_start|>{role}\\n{content}<|im_end|>\\n`. The families differ in three places,
each copied from the model's own chat template (tests/data/chat_templates/ holds them, and the
tests compare this module with `transformers`' `apply_chat_template` on them):

- Qwen2 / Qwen2.5-Instruct write a default system turn when the conversation has none.
- Qwen3 has a thinking switch: with `enable_thinking=False` the generation prompt ends with an
  empty `<think>\\n\\n</think>\\n\\n` block, so the model answers at once.
- Qwen3 drops the reasoning of assistant turns before the last user turn (a retry does not see
  the earlier thinking), and writes `<think>\\n...\\n</think>\\n\\n` for the turns after it.

Tools (function calling) are not rendered: a `tool` role or `tool_calls` is an error.
"""
from __future__ import annotations

from dataclasses import dataclass

# the model types whose chat format this module renders (Qwen2 / Qwen2.5-Instruct, Qwen3)
CHAT_MODEL_TYPES = ("qwen2", "qwen3")

IM_START, IM_END = "<|im_start|>", "<|im_end|>"
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
ENDOFTEXT = "<|endoftext|>"
QWEN2_DEFAULT_SYSTEM = "You are Qwen, created by Alibaba Cloud. You are a helpful assistant."
ROLES = ("system", "user", "assistant")


class ChatFormatError(ValueError):
    """A conversation this format cannot render, or a model whose chat format is not ChatML."""


@dataclass(frozen=True)
class ChatFormat:
    family: str                        # "qwen2" or "qwen3"
    default_system: str | None = None  # written when the conversation has no system turn
    thinking: bool = False             # has the enable_thinking switch and <think> blocks

    @classmethod
    def qwen2(cls) -> "ChatFormat":
        return cls("qwen2", default_system=QWEN2_DEFAULT_SYSTEM)

    @classmethod
    def qwen3(cls) -> "ChatFormat":
        return cls("qwen3", thinking=True)

    @classmethod
    def for_model(cls, model_type: str, special_tokens, chat_template: str | None = None) -> "ChatFormat":
        """The format of a model folder, from config.json's model_type, its tokenizer's added
        tokens and (where the folder has one) its Jinja chat template, which is only searched
        for two markers: a Qwen2-type folder whose template has the thinking switch (a few
        fine-tunes) is treated as Qwen3-style; one without Qwen's default system sentence gets
        no default system turn."""
        tokens = set(special_tokens)
        missing = [t for t in (IM_START, IM_END) if t not in tokens]
        if missing:
            raise ChatFormatError(f"the tokenizer lacks {missing[0]!r}, so this is not a ChatML (Qwen-family) "
                                  "instruct model. Fix: use a Qwen2.5-Instruct or Qwen3 folder.")
        if model_type not in CHAT_MODEL_TYPES:
            raise ChatFormatError(f"model_type {model_type!r} has no known chat format here; supported: "
                                  "qwen2 (Qwen2 / Qwen2.5-Instruct) and qwen3.")
        has_switch = (THINK_OPEN in tokens and THINK_CLOSE in tokens
                      and (chat_template is None or "enable_thinking" in chat_template))
        if model_type == "qwen3" or has_switch:
            return cls.qwen3()
        if chat_template is not None and QWEN2_DEFAULT_SYSTEM not in chat_template:
            return cls("qwen2")
        return cls.qwen2()

    # -- rendering ---------------------------------------------------------------------------

    def render(self, messages: list[dict], add_generation_prompt: bool = False,
               enable_thinking: bool | None = None) -> str:
        """The prompt text of a conversation, as the model's chat template writes it.

        enable_thinking: None leaves the model's default (Qwen3 thinks); False asks a thinking
        model to answer at once. A model without the switch ignores it, as its template does."""
        _check_messages(messages)
        out = []
        first_is_system = bool(messages) and messages[0]["role"] == "system"
        if first_is_system:
            out.append(_turn("system", messages[0]["content"]))
        elif self.default_system is not None:
            out.append(_turn("system", self.default_system))
        last_query = _last_user_index(messages)
        for i, m in enumerate(messages):
            if i == 0 and first_is_system:
                continue
            if m["role"] != "assistant" or not self.thinking:
                out.append(_turn(m["role"], m["content"]))
                continue
            content, reasoning = split_thinking(m["content"], m.get("reasoning_content"))
            if i > last_query and (i == len(messages) - 1 or reasoning):
                body = f"{THINK_OPEN}\n{reasoning.strip(chr(10))}\n{THINK_CLOSE}\n\n{content.lstrip(chr(10))}"
            else:
                body = content
            out.append(_turn("assistant", body))
        if add_generation_prompt:
            out.append(f"{IM_START}assistant\n")
            if self.thinking and enable_thinking is False:
                out.append(f"{THINK_OPEN}\n\n{THINK_CLOSE}\n\n")
        return "".join(out)

    def stop_tokens(self) -> tuple[str, ...]:
        """Where an assistant turn ends: the end-of-turn token, and end-of-text as a safeguard."""
        return (IM_END, ENDOFTEXT)


def split_thinking(content: str, reasoning: str | None = None) -> tuple[str, str]:
    """(answer, reasoning) of an assistant turn, as Qwen3's template splits it: an explicit
    reasoning string wins, else everything up to the last </think> (after any <think>)."""
    if isinstance(reasoning, str):
        return content, reasoning
    if THINK_CLOSE not in content:
        return content, ""
    head, _, _ = content.partition(THINK_CLOSE)
    reasoning = head.rstrip("\n").split(THINK_OPEN)[-1].lstrip("\n")
    return content.split(THINK_CLOSE)[-1].lstrip("\n"), reasoning


def _turn(role: str, content: str) -> str:
    return f"{IM_START}{role}\n{content}{IM_END}\n"


def _last_user_index(messages: list[dict]) -> int:
    """Index of the last user turn that is not a tool response (Qwen3's 'last query')."""
    for i in range(len(messages) - 1, -1, -1):
        c = messages[i]["content"]
        if messages[i]["role"] == "user" and not (c.startswith("<tool_response>") and c.endswith("</tool_response>")):
            return i
    return len(messages) - 1


def _check_messages(messages) -> None:
    if not isinstance(messages, list) or not messages:
        raise ChatFormatError("messages must be a non-empty list of {'role': ..., 'content': ...} dicts")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise ChatFormatError(f"messages[{i}] must be a dict with 'role' and 'content'")
        if m["role"] not in ROLES:
            raise ChatFormatError(f"messages[{i}] has role {m['role']!r}; this renderer writes "
                                  f"{', '.join(ROLES)} turns (no tools)")
        if m.get("tool_calls"):
            raise ChatFormatError(f"messages[{i}] has tool_calls; tool use is not rendered here")
        if not isinstance(m["content"], str):
            raise ChatFormatError(f"messages[{i}]['content'] must be a string, got {type(m['content']).__name__}")
