"""The reasoner's plumbing without weights: canned answers -> plan, retry, fallback; the fact check;
and the text-generation loop (budgets, stop, thinking cap, cancel) on a scripted model."""
import logging

import pytest
import torch

from uni1_core.chat import ChatFormat
from uni1_core.conditioning import model_text
from uni1_core.plan import Plan, make_plan
from uni1_core.reasoner import RETRY_PROMPT, SYSTEM_PROMPT, Reasoner, compare_facts, read_answer
from uni1_core.sampler import Cancelled
from uni1_core.textgen import TextGenerator, TextSettings, parse_completion

PROMPT = "two red circles to the left of a blue square"
GOOD_JSON = ('{"version": 1, "subjects": [{"noun": "circle", "count": 2, "color": "red", "attributes": []}, '
             '{"noun": "square", "count": 1, "color": "blue", "attributes": []}], '
             '"relations": [{"subject": 0, "object": 1, "relation": "left of"}], "scene": "a white table"}')
THINK_AND_FENCE = ("<think>\nThe user wants circles. Maybe {\"subjects\": [{\"noun\": \"decoy\"}]}?\n</think>\n\n"
                   "**Description:** Two glossy red circles rest on a white table, left of a blue square.\n\n"
                   f"```json\n{GOOD_JSON}\n```")
PROSE = "Two shiny red circles sit to the left of a large blue square on a white table, soft studio light."
GARBAGE = "}}}{{ ### 0x7f ]] ::"
BROKEN_JSON = "Description: circles.\n```json\n{\"subjects\": [{\"noun\": \"circle\", \"count\": 2,,}\n```"


class CannedGenerator:
    """Answers each turn with the next canned text, as a thinking model's raw output."""

    def __init__(self, *texts, finished=True):
        self.texts, self.finished, self.seen = list(texts), finished, []

    def complete(self, messages, settings, on_progress=None, should_cancel=None):
        self.seen.append([dict(m) for m in messages])
        return parse_completion(self.texts.pop(0), finished=self.finished)


def test_json_inside_think_and_fence_gives_the_plan():
    gen = CannedGenerator(THINK_AND_FENCE)
    result = Reasoner(gen).plan(PROMPT)
    plan, thinking, detailed = result                # unpacks as the triple
    assert result.source == "model" and not result.fell_back and result.messages == []
    assert [(s.noun, s.count, s.color) for s in plan.subjects] == [("circle", 2, "red"), ("square", 1, "blue")]
    assert plan.scene == "a white table" and not plan.violations()
    assert "decoy" in thinking and "decoy" not in plan.to_json()
    assert detailed == "Two glossy red circles rest on a white table, left of a blue square."
    assert result.disagreements == []
    # the plan's words are the detailed prompt: conditioning "prompt" reads it, "prompt+plan" adds to it
    assert result.plan.prompt == detailed and model_text(result.plan, "prompt")[1] == detailed
    assert model_text(result.plan, "prompt+plan")[1].startswith(detailed)
    assert len(gen.seen) == 1 and gen.seen[0][0] == {"role": "system", "content": SYSTEM_PROMPT}
    assert gen.seen[0][1] == {"role": "user", "content": PROMPT}


def test_prose_answer_gets_the_retry_then_the_plan():
    gen = CannedGenerator(PROSE, THINK_AND_FENCE)
    result = Reasoner(gen).plan(PROMPT)
    assert result.source == "model" and len(result.attempts) == 2
    assert result.messages == ["the first answer could not be read (the answer has no plan JSON (a ```json "
                               "block with \"subjects\")); asked again"]
    assert gen.seen[1][2] == {"role": "assistant", "content": PROSE}


@pytest.mark.parametrize("bad,error", [(GARBAGE, "no plan JSON"), (PROSE, "no plan JSON"),
                                       (BROKEN_JSON, "not valid JSON"),
                                       ("", "empty"),
                                       ('```json\n{"subjects": [{"noun": "cat", "count": 0}]}\n```', "count")])
def test_unreadable_answer_gets_one_retry_quoting_the_error(bad, error):
    gen = CannedGenerator(bad, THINK_AND_FENCE)
    result = Reasoner(gen).plan(PROMPT)
    assert result.source == "model" and len(result.attempts) == 2
    assert any("asked again" in m and error in m for m in result.messages)
    retry = gen.seen[1]
    assert [m["role"] for m in retry] == ["system", "user", "assistant", "user"]
    assert retry[2]["content"] == parse_completion(bad).answer
    assert error in retry[3]["content"] and retry[3]["content"].startswith(RETRY_PROMPT.split("{")[0])


def test_two_unreadable_answers_fall_back_to_the_rules_visibly(caplog):
    gen = CannedGenerator("<think>\nhmm\n</think>\n\n" + GARBAGE, GARBAGE)
    with caplog.at_level(logging.WARNING, logger="uni1"):
        result = Reasoner(gen).plan(PROMPT)
    assert result.fell_back and result.source == "rules (fallback)"
    assert result.plan == make_plan(PROMPT)
    assert result.detailed_prompt == make_plan(PROMPT).conditioning_text()
    assert "could not be read twice" in result.messages[-1] and "rule planner" in result.messages[-1]
    assert "could not be read twice" in caplog.text
    assert "rules (fallback)" in result.report() and result.thinking == "hmm"
    assert len(gen.seen) == 2 and gen.texts == []      # exactly one retry


def test_cut_off_answer_says_so():
    half = THINK_AND_FENCE[:-40]
    result = Reasoner(CannedGenerator(half, half, finished=False)).plan(PROMPT, TextSettings(max_new_tokens=7))
    assert result.fell_back
    assert "cut off at the budget of 7 tokens" in result.messages[-1]


def test_description_field_and_missing_description():
    with_field = GOOD_JSON[:-1] + ', "description": "A tidy flat picture."}'
    plan, description = read_answer(with_field)
    assert description == "A tidy flat picture." and len(plan.subjects) == 2
    result = Reasoner(CannedGenerator(GOOD_JSON)).plan(PROMPT)
    assert result.detailed_prompt == result.plan.conditioning_text()
    assert any("no description" in m for m in result.messages)


def test_facts_the_model_breaks_are_listed():
    rules = make_plan("two red circles to the left of a blue square, a cat in the top left corner")
    model = Plan.from_text('{"subjects": [{"noun": "circles", "count": 3, "color": "red"}, '
                           '{"noun": "square", "color": "green"}], '
                           '"relations": [{"subject": 0, "object": 1, "relation": "right of"}]}')
    found = compare_facts(rules, model)
    assert "count of circle: the prompt says 2, the model's plan 3" in found
    assert "colour of square: the prompt says blue, the model's plan green" in found
    assert "the prompt has 1 cat, the model's plan has no cat" in found
    assert any("left of the square" in f for f in found)
    assert len(found) == 4
    assert compare_facts(rules, rules) == []
    placed = Plan.from_text('{"subjects": [{"noun": "cat", "attributes": ["on the right"]}]}')
    assert compare_facts(make_plan("a cat on the left"), placed) == [
        "place of cat: the prompt says 'on the left', the model's plan does not"]


def test_empty_prompt_is_refused():
    with pytest.raises(ValueError, match="prompt is empty"):
        Reasoner(CannedGenerator()).plan("  ")


# ---------------------------------------------------------------------------------------------
# the generation loop on a scripted model

class ScriptTokenizer:
    """Token i is the character chr(65 + i); a few named tokens."""
    NAMES = {"<|im_end|>": 0, "<|endoftext|>": 1, "<think>": 2, "</think>": 3, "<|im_start|>": 4}

    vocab_size = 40

    def token_to_id(self, name):
        return self.NAMES.get(name)

    def encode(self, text):
        out, i = [], 0
        while i < len(text):
            for name, k in self.NAMES.items():
                if text.startswith(name, i):
                    out.append(k)
                    i += len(name)
                    break
            else:
                out.append(5 + (ord(text[i]) % 30))
                i += 1
        return out

    def decode(self, ids):
        names = {k: n for n, k in self.NAMES.items()}
        return "".join(names.get(i, "\n" if i == 5 + ord("\n") % 30 else chr(60 + i)) for i in ids)


class ScriptModel:
    """Emits the scripted tokens in order (greedy), whatever it is fed; records what it was fed."""

    def __init__(self, script, vocab=40):
        self.script, self.vocab, self.fed, self.device = list(script), vocab, [], torch.device("cpu")

    def new_cache(self, batch, max_len):
        class Cache:
            lengths = torch.zeros(batch, dtype=torch.long)
        self.max_len = max_len
        return Cache()

    def __call__(self, ids, cache=None, last_only=False, n_valid=None):
        self.fed.append(ids[0].tolist())
        cache.lengths += ids.shape[1]
        assert int(cache.lengths) <= self.max_len
        logits = torch.zeros(1, 1, self.vocab)
        step = len(self.fed) - 1
        logits[0, 0, self.script[min(step, len(self.script) - 1)]] = 1.0
        return logits


def _generator(script, fmt=None):
    return TextGenerator(ScriptModel(script), ScriptTokenizer(), fmt or ChatFormat.qwen3())


def test_loop_stops_at_end_of_turn_and_feeds_each_token():
    gen = _generator([10, 11, 12, 0, 13])
    progress = []
    done = gen.complete([{"role": "user", "content": "hi"}], TextSettings(temperature=0),
                        on_progress=lambda d, t: progress.append(d))
    assert done.ids == [10, 11, 12, 0] and done.finished
    assert gen.model.fed[1:] == [[10], [11], [12]]      # after the prefill, one token per forward
    assert progress == [1, 2, 3, 4]


def test_answer_budget_and_thinking_cap():
    gen = _generator([2] + [20] * 50)                    # opens <think> and never closes it
    done = gen.complete([{"role": "user", "content": "hi"}],
                        TextSettings(temperature=0, max_thinking_tokens=5, max_new_tokens=4))
    close = ScriptTokenizer().encode("\n</think>\n\n")
    assert done.ids == [2, 20, 20, 20, 20] + close + [20] * 4
    assert gen.model.fed[6] == close                     # the forced closing goes in as one window
    assert done.thinking_cut and not done.finished
    assert done.thinking == "PPPP" and done.answer == "PPPP"


def test_no_thinking_prompt_and_budget_when_thinking_is_off():
    gen = _generator([20] * 10)
    done = gen.complete([{"role": "user", "content": "hi"}],
                        TextSettings(temperature=0, max_thinking_tokens=0, max_new_tokens=3))
    assert done.ids == [20, 20, 20] and done.thinking == ""
    assert gen.model.fed[0][-len(ScriptTokenizer().encode("<think>\n\n</think>\n\n")):] == \
        ScriptTokenizer().encode("<think>\n\n</think>\n\n")


def test_cancel_stops_generation():
    gen = _generator([20] * 10)
    calls = []
    with pytest.raises(Cancelled):
        gen.complete([{"role": "user", "content": "hi"}], TextSettings(temperature=0),
                     should_cancel=lambda: calls.append(1) or len(calls) > 3)
    assert len(gen.model.fed) == 4


def test_sampling_is_seeded_and_respects_top_k():
    from uni1_core.textgen import pick_token
    logits = torch.tensor([0.0, 5.0, 4.9, -3.0])
    s = TextSettings(temperature=1.0, top_k=2, top_p=1.0, seed=3)
    draws = [pick_token(logits, s, torch.Generator().manual_seed(k)) for k in range(200)]
    assert set(draws) == {1, 2}
    again = [pick_token(logits, s, torch.Generator().manual_seed(k)) for k in range(200)]
    assert draws == again
    nucleus = TextSettings(temperature=1.0, top_k=0, top_p=0.5)
    assert {pick_token(logits, nucleus, torch.Generator().manual_seed(k)) for k in range(100)} == {1}


def test_the_system_prompts_own_example_is_a_readable_answer_that_keeps_the_facts():
    example = SYSTEM_PROMPT.split("Example, for the prompt")[1].split(":", 1)[1]
    plan, description = read_answer(example)
    assert description.startswith("Two small glossy red circles")
    assert compare_facts(make_plan(PROMPT), plan) == []


def test_deeply_nested_json_after_the_plan_stays_prose_not_a_crash():
    """The description reader skips what it cannot decode; JSON nested past Python's recursion
    limit (a runaway model) is such text, not a RecursionError that escapes the node."""
    answer = "```json\n" + GOOD_JSON + "\n```\nDescription: two shapes. " + '{"x": ' + "[" * 50_000
    plan, description = read_answer(answer)
    assert len(plan.subjects) == 2
    assert description.startswith("two shapes.")
