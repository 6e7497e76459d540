"""Text generation with the static KV cache: a chat model answers a conversation.

    gen = TextGenerator(model, tokenizer, ChatFormat.qwen3())
    done = gen.complete([{"role": "user", "content": "hi"}], TextSettings(max_new_tokens=256))
    done.answer, done.thinking, done.finished

One prefill of the rendered conversation, then one token per forward (`model(ids, cache=cache,
last_only=True)`), until the end-of-turn token or the token budget. Greedy at temperature 0,
else seeded sampling with top-k / top-p, so a run is reproducible either way.

Thinking models (Qwen3) write `<think> ... </think>` before the answer. Thinking has its own
budget: when it runs out, `</think>` is written for the model (as Qwen's own docs suggest for
capping the thinking length) and the answer gets the rest of `max_new_tokens`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .chat import ENDOFTEXT, IM_END, THINK_CLOSE, THINK_OPEN, ChatFormat, split_thinking
from .sampler import Cancelled


@dataclass
class TextSettings:
    max_new_tokens: int = 1024       # the answer's budget (thinking not counted)
    max_thinking_tokens: int = 1024  # thinking models only; 0 turns thinking off
    temperature: float = 0.0         # 0: greedy
    top_k: int = 20                  # 0: off (sampling only)
    top_p: float = 0.95              # 1: off (sampling only)
    seed: int = 0

    def __post_init__(self):
        if self.max_new_tokens < 1 or self.max_thinking_tokens < 0:
            raise ValueError("max_new_tokens must be >= 1 and max_thinking_tokens >= 0")
        if self.temperature < 0 or not 0 < self.top_p <= 1 or self.top_k < 0:
            raise ValueError("temperature must be >= 0, top_p in (0, 1] and top_k >= 0")


@dataclass
class Completion:
    text: str          # everything generated, special tokens included
    answer: str        # the text after the thinking, without the end-of-turn token
    thinking: str      # the text inside <think> ... </think> ("" for a model without thinking)
    ids: list[int]
    finished: bool     # True: the model ended its turn; False: the budget ran out first
    thinking_cut: bool = False   # the thinking budget ran out and </think> was written for the model


class TextGenerator:
    """A decoder-only model, its tokenizer and its chat format."""

    def __init__(self, model, tokenizer, chat_format: ChatFormat):
        self.model, self.tokenizer, self.chat_format = model, tokenizer, chat_format
        self.stop_ids = {i for i in (tokenizer.token_to_id(t) for t in chat_format.stop_tokens()) if i is not None}
        if not self.stop_ids:
            raise ValueError("the tokenizer has none of the end-of-turn tokens "
                             f"{chat_format.stop_tokens()}; it does not belong to a chat model")
        self.think_open_id = tokenizer.token_to_id(THINK_OPEN)
        self.think_close_id = tokenizer.token_to_id(THINK_CLOSE)

    def complete(self, messages: list[dict], settings: TextSettings | None = None, on_progress=None,
                 should_cancel=None) -> Completion:
        """The model's next assistant turn. on_progress(done, total) after every token."""
        settings = settings or TextSettings()
        think = self.chat_format.thinking and settings.max_thinking_tokens > 0
        prompt = self.chat_format.render(messages, add_generation_prompt=True,
                                         enable_thinking=None if think else False)
        prompt_ids = self.tokenizer.encode(prompt)
        ids, finished, cut = self.generate_ids(
            prompt_ids, settings, thinking_budget=settings.max_thinking_tokens if think else None,
            on_progress=on_progress, should_cancel=should_cancel)
        return parse_completion(self.tokenizer.decode(ids), self.chat_format.stop_tokens(), think, ids,
                                finished, cut)

    @torch.no_grad()
    def generate_ids(self, prompt_ids: list[int], settings: TextSettings, thinking_budget: int | None = None,
                     on_progress=None, should_cancel=None) -> tuple[list[int], bool, bool]:
        """(new ids, ended at a stop token, thinking was cut) for one prompt."""
        if not prompt_ids:
            raise ValueError("the prompt is empty")
        model = self.model
        forced = self._close_thinking_ids() if thinking_budget is not None else []
        total = settings.max_new_tokens + (thinking_budget or 0) + len(forced)
        cache = model.new_cache(1, len(prompt_ids) + total + 1)
        generator = torch.Generator(device="cpu").manual_seed(settings.seed)
        vocab_limit = self.tokenizer.vocab_size   # a padded embedding has rows no token uses
        logits = model(torch.tensor([prompt_ids], device=model.device), cache=cache, last_only=True)
        out: list[int] = []
        # thinking is on once the model opens it with <think> as its first token
        thinking, cut, answer_start = False, False, 0
        while True:
            if should_cancel is not None and should_cancel():
                raise Cancelled("text generation cancelled")
            if thinking and len(out) >= thinking_budget:
                out.extend(forced)              # the budget is spent: close the thinking for the model
                thinking, cut, answer_start = False, True, len(out)
                token = None
            else:
                token = pick_token(logits[0, -1, :vocab_limit], settings, generator)
                out.append(token)
                if len(out) == 1 and thinking_budget is not None and token == self.think_open_id:
                    thinking = True
                elif thinking and token == self.think_close_id:
                    thinking, answer_start = False, len(out)
            if on_progress is not None:
                on_progress(len(out), total)
            if token in self.stop_ids:
                return out, True, cut
            if not thinking and len(out) - answer_start >= settings.max_new_tokens:
                return out, False, cut
            step = out[-len(forced):] if token is None else [token]
            logits = model(torch.tensor([step], device=model.device), cache=cache, last_only=True)

    def _close_thinking_ids(self) -> list[int]:
        return self.tokenizer.encode(f"\n{THINK_CLOSE}\n\n")


def parse_completion(text: str, stop_tokens=(IM_END, ENDOFTEXT), think: bool = True, ids=(),
                     finished: bool = True, thinking_cut: bool = False) -> Completion:
    """A Completion from generated text: cut at the first stop token, thinking split off."""
    body = text
    for stop in stop_tokens:
        body = body.split(stop)[0]
    answer, thinking = split_thinking(body) if think else (body, "")
    if think and THINK_OPEN in body and THINK_CLOSE not in body:   # the budget ran out while thinking
        answer, thinking = "", body.split(THINK_OPEN)[-1]
    return Completion(text, answer.strip(), thinking.strip("\n"), list(ids), finished, thinking_cut)


def pick_token(logits: torch.Tensor, settings: TextSettings, generator: torch.Generator) -> int:
    """Greedy (temperature 0), else a sample from the top-k / top-p renormalised distribution."""
    if settings.temperature == 0:
        return int(logits.argmax())          # on the device: no copy of the vocabulary row per token
    logits = logits.float().cpu()
    logits = logits / settings.temperature
    if settings.top_k and settings.top_k < logits.numel():
        kth = torch.topk(logits, settings.top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if settings.top_p < 1:
        sorted_p, order = probs.sort(descending=True)
        # keep the smallest prefix whose mass reaches top_p (the first token always stays)
        drop = sorted_p.cumsum(0) - sorted_p >= settings.top_p
        probs = probs.scatter(0, order[drop], 0.0)
    return int(torch.multinomial(probs, 1, generator=generator))
