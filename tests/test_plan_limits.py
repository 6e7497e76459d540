"""Bad and hostile input to the planner: every case is a fast PlanError that names the fix.

The time bounds here are the explicit "fast error" bounds of issue 16 (well under a second; the
planner's 50 ms on any prompt of up to 2,000 characters), measured as the best of a few runs so
that a busy machine does not fail them.
"""
import json
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uni1_core.llm_answer import MAX_ANSWER_CHARS, read_answer, strip_reasoning
from uni1_core.plan import (MAX_INSTANCES, MAX_PROMPT_CHARS, MAX_RELATIONS, MAX_SUBJECTS, Plan, PlanError, Relation,
                            Subject, make_plan)
from uni1_core.plan_parse import RELATIONS

PLAN_MS = 50           # issue 16's bound for the whole planner on any prompt of 2,000 characters
# Every prompt below plans in under 15 ms (best of 3) on a busy 2-core machine: every pass of the
# grammar is linear in the prompt's length, so the bound holds with room for a slower CPU.


def best_seconds(fn, *args, runs: int = 3, warm_up: bool = False) -> float:
    best = float("inf")
    if warm_up:          # the first call builds the grammar's word indexes
        try:
            fn(*args)
        except PlanError:
            pass
    for _ in range(runs):
        start = time.perf_counter()
        try:
            fn(*args)
        except PlanError:
            pass
        best = min(best, time.perf_counter() - start)
    return best


def plan_error(fn, *args) -> str:
    with pytest.raises(PlanError) as info:
        fn(*args)
    return str(info.value)


# -- the planner on adversarial prompts of up to 2,000 characters ---------------------------------

ADVERSARIAL = {
    "repeated relation": "a red circle to the left of " * 80 + "a blue square",
    "relation chain, few subjects": "the cat is left of the dog, the dog is left of the cat, " * 40,
    "many subjects": ", ".join(["a cat"] * 400),
    "many numbered subjects": "fifty cats and " * 150 + "a dog",
    "stacked relations": "a red circle above " * 100 + "a blue square",
    "contradictions": "a cat to the left of a dog. the dog to the left of the cat. the cat is above the dog. " * 30,
    "many pairs": " ".join(f"a {c} {n} left of a {c} box," for c in ("red", "blue", "green", "pink")
                           for n in ("cat", "dog", "cube", "ball", "car", "tree", "cow", "pig")) * 3,
    "between": "a cat between a dog and a bird, " * 60,
    "positions": "a cat on the left, a dog on the right, a bird at the top, a fish at the bottom, " * 25,
    "numbers": " ".join(str(n) for n in range(700)),
    "one word": "cat" * 666,
    "punctuation": ",.;!?" * 400,
    # each once took 30 ms to 0.5 s: a pass of the grammar that re-read a run from every word
    "subjects and commas": "a cat, " * 400,
    "colour run": "red " * 500,
    "adjective pairs": "hot dry " * 250,
    "word run": "x " * 1000,
    "one-letter clauses": "a;" * 1000,
    "one-letter segments": "a," * 1000,
    "symbols": "-" * 2000,
    "emoji": "\U0001F600" * 2000,
    "accents": "é " * 1000,
    "cjk": "日 本 " * 500,
    "collective chain": "a crowd of " * 200,
    "mood words": "cinematic " * 250,
    "framing words": "photo " * 400,
    "ambiguous framing": "centered " * 250,
    "prepositions": "in " * 700,
    "quantities": "a lot of " * 250,
    "dangling tail": "a cat is " * 250,
    "pronouns": "he is " * 400,
    "adverbs": "just " * 400,
    "list words": "and " * 500,
    "elliptic colours": "a red, " * 300,
    "number words": "twenty one " * 200,
    "relation words": "to the left of " * 150,
    "negation": "no cat or " * 200,
    "qualifiers": "with a " * 300,
    "positions in a row": "colorful of on the left cold and " * 70,
    "undo of many phrases": "this \U0001F600 to the left hand side and " * 60,
    "order phrase over a list": ", top to bottom shelf and " * 80,
    "it relations": "a cat and " * 100 + "a dog next to it " * 50,
}


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_any_prompt_of_2000_characters_plans_in_50_ms(name):
    prompt = ADVERSARIAL[name][:2000]
    assert len(prompt) > 1800           # each case is about as long as the bound allows
    seconds = best_seconds(make_plan, prompt, runs=3, warm_up=True)
    assert seconds < PLAN_MS / 1000, f"{name}: {seconds * 1000:.1f} ms"


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_the_planner_after_parsing_takes_under_10_ms(name, monkeypatch):
    """The part of planning this module owns (limits, layout, dropping contradictions), with the
    grammar's answer given: the rest of the 50 ms belongs to the grammar."""
    import uni1_core.plan as plan_module
    prompt = " ".join(ADVERSARIAL[name][:2000].split())
    parsed = plan_module.parse_prompt(prompt)
    monkeypatch.setattr(plan_module, "parse_prompt",
                        lambda text: (json.loads(json.dumps(parsed[0])), list(parsed[1])))
    seconds = best_seconds(make_plan, prompt, runs=5)
    assert seconds < 0.010, f"{name}: {seconds * 1000:.1f} ms"


def test_the_issue_prompt_is_refused_with_the_limit_at_once():
    """~1,100 relations took 84 s: now the subjects are counted before any layout."""
    prompt = "a red circle to the left of " * 140 + "a blue square"       # the issue's, within 4,000 characters
    message = plan_error(make_plan, prompt)
    assert f"at most {MAX_SUBJECTS}" in message and "counts" in message
    assert best_seconds(make_plan, prompt) < 0.2


def test_too_long_a_prompt_is_refused_before_parsing():
    message = plan_error(make_plan, "a cat " * 20000)
    assert f"at most {MAX_PROMPT_CHARS:,}" in message and "conditioning to 'prompt'" in message
    assert best_seconds(make_plan, "a cat " * 20000) < 0.05


def test_whitespace_does_not_count_against_the_prompt_limit():
    plan = make_plan("a cat" + " " * 40000 + "on a sofa")
    assert plan.prompt == "a cat on a sofa" and plan == make_plan("a cat on a sofa")


def test_too_many_subjects_and_relations_name_the_limit():
    assert f"at most {MAX_SUBJECTS}" in plan_error(make_plan, ", ".join(f"a {n}" for n in ["cat", "dog"] * 20))
    message = plan_error(make_plan, "fifty cats, fifty dogs and fifty birds")
    assert f"at most {MAX_INSTANCES}" in message and "counts" in message


def test_a_structured_plan_past_the_limits_is_refused():
    with pytest.raises(PlanError, match=f"at most {MAX_SUBJECTS}"):
        Plan(subjects=[Subject(f"thing{i}") for i in range(MAX_SUBJECTS + 1)])
    with pytest.raises(PlanError, match=f"at most {MAX_RELATIONS}"):
        Plan(subjects=[Subject("cat"), Subject("dog")], relations=[Relation(0, 1, "left of")] * (MAX_RELATIONS + 1))
    with pytest.raises(PlanError, match=f"at most {MAX_INSTANCES}"):
        Plan(subjects=[Subject("cat", 50), Subject("dog", 50), Subject("cow", 50)])


def test_a_repeated_relation_counts_once():
    plan = make_plan("a cat left of a dog, the cat left of the dog, the cat is left of the dog")
    assert len(plan.relations) == 1


def test_contradictions_are_dropped_to_unparsed_in_few_layouts():
    """Worst case inside the limits: 32 subjects, 64 random relations; every plan is consistent."""
    import random

    from uni1_core.plan import _drop_contradictions
    rng = random.Random(0)
    for _ in range(10):
        subjects = [Subject(f"thing{i}", rng.choice([1, 1, 2, 4])) for i in range(MAX_SUBJECTS)]
        relations = []
        while len(relations) < MAX_RELATIONS:
            a, b, c = rng.sample(range(MAX_SUBJECTS), 3)
            rel = rng.choice(RELATIONS)
            relations.append(Relation(a, b, rel, c if rel == "between" else None))
        dropped: list[str] = []
        plan = _drop_contradictions(Plan(subjects=subjects, relations=relations),
                                    [str(i) for i in range(len(relations))], dropped)
        assert plan.violations() == [] and len(plan.relations) + len(dropped) == MAX_RELATIONS
        assert best_seconds(_drop_contradictions, Plan(subjects=subjects, relations=relations),
                            [str(i) for i in range(len(relations))], []) < PLAN_MS / 1000


# -- another model's answer -------------------------------------------------------------------------

def test_a_long_run_of_spaces_after_a_preface_is_read_in_one_pass():
    text = "Here is the prompt:" + " " * 40000 + "x"
    assert best_seconds(Plan.from_text, text) < 0.05
    assert Plan.from_text(text).prompt == "Here is the prompt: x"
    assert best_seconds(Plan.from_text, "```" + " " * 40000 + "x") < 0.05
    assert best_seconds(Plan.from_text, "**Prompt" + " " * 40000 + "x") < 0.05


def test_thousands_of_reasoning_tags_are_read_in_one_pass():
    for text in ("<think>" * 28000, "</think>" * 24000, "<think" * 32000, "<think>a</think>" * 12000):
        assert best_seconds(strip_reasoning, text) < 0.1, text[:20]
    assert strip_reasoning("<think>" * 28000) == ""
    assert strip_reasoning("a <think>x</think> b </think> c <think> d") == "c"


def test_an_answer_with_only_reasoning_is_refused():
    for text in ("<think>I could draw a cat</think>", "<think>" * 28000, "   ", "```\n```"):
        assert "holds no prompt and no plan" in plan_error(Plan.from_text, text)


def test_an_answer_past_the_limit_is_refused():
    message = plan_error(Plan.from_text, "<think>" * 32000)
    assert f"at most {MAX_ANSWER_CHARS:,}" in message and "output length" in message


def test_json_nested_100k_deep_is_a_plan_error():
    deep = '{"subjects": ' + "[" * 100000 + "]" * 100000 + "}"
    shallower = '{"subjects": ' + "[" * 90000 + "]" * 90000 + "}"     # inside the answer limit
    for fn, text in ((Plan.from_json, deep), (Plan.from_text, shallower)):
        start = time.perf_counter()
        assert "nested too deep" in plan_error(fn, text)
        assert time.perf_counter() - start < 0.5
    assert "nested too deep" in plan_error(Plan.from_text, '{"x": [' * 20000)


def test_subjects_given_as_one_object_are_refused():
    message = plan_error(Plan.from_text, '{"subjects": {"noun": "cat"}}')
    assert "subjects must be a list" in message and "got an object" in message
    assert "got a number" in plan_error(Plan.from_text, '{"subjects": [], "relations": 5}')


def test_attributes_given_as_a_number_are_refused():
    for fn in (Plan.from_text, Plan.from_json):
        message = plan_error(fn, '{"subjects": [{"noun": "cat", "attributes": 5}]}')
        assert "subjects[0].attributes must be a list of strings" in message and "got a number" in message


def test_many_unclosed_fences_and_braces_are_fast():
    for text in ("```json\n{" * 10000, "{" * 100000, '{"x": [' * 20000, "```json\n" + "//" * 50000 + '"\n```'):
        assert best_seconds(Plan.from_text, text) < 0.3, text[:20]


# -- fuzz: plan JSON and answers give a plan or a PlanError, never another exception ---------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 60) | st.floats(-2, 2) | st.just(float("nan")) | st.text(max_size=12)
    | st.sampled_from(["cat", "red", "left of", "0", "two", "between", "on the left", "x0"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.sampled_from(["subjects", "relations", "layout", "noun", "count", "color", "attributes", "subject",
                         "object", "relation", "object2", "instance", "x0", "y0", "x1", "y1", "style", "scene",
                         "medium", "negatives", "unparsed", "version", "prompt", "composition", "other"]),
        inner, max_size=6),
    max_leaves=25)

subject_like = st.fixed_dictionaries({"noun": json_values}, optional={
    "count": json_values, "color": json_values, "attributes": json_values})
relation_like = st.fixed_dictionaries({"subject": st.integers(-1, 3) | json_values, "object": st.integers(-1, 3),
                                       "relation": st.sampled_from(["left of", "on", "between", "next to"]) | json_values},
                                      optional={"object2": json_values})
box_like = st.fixed_dictionaries({k: st.integers(-1, 3) | json_values for k in ("subject", "instance")} |
                                 {k: st.floats(-0.5, 1.5) | json_values for k in ("x0", "y0", "x1", "y1")})
plan_like = st.fixed_dictionaries({}, optional={
    "subjects": st.lists(subject_like | json_values, max_size=4) | json_values,
    "relations": st.lists(relation_like | json_values, max_size=4) | json_values,
    "layout": st.lists(box_like, max_size=4) | json_values,
    "style": json_values, "scene": json_values, "negatives": json_values, "unparsed": json_values,
    "version": json_values, "prompt": json_values})

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _plan_or_plan_error(fn, arg):
    try:
        plan = fn(arg)
    except PlanError as exc:
        assert str(exc)
        return
    assert isinstance(plan, Plan)
    plan.validate()
    plan.conditioning_text()


@FUZZ
@given(plan_like | json_values)
def test_fuzz_plan_json_gives_a_plan_or_a_plan_error(data):
    text = json.dumps(data)
    _plan_or_plan_error(Plan.from_json, text)
    _plan_or_plan_error(Plan.from_text, text)
    _plan_or_plan_error(Plan.from_text, f"<think>hmm</think>\n```json\n{text}\n```")
    if isinstance(data, dict):
        _plan_or_plan_error(Plan.from_json, data)


@FUZZ
@given(st.lists(st.sampled_from(list('{}[]":,`<>/ \n') + ["think", "json", "subjects", "prompt", "noun", "cat",
                                                           "Here is the prompt:", "**", "//", "1", "left of"]),
                max_size=40).map("".join))
def test_fuzz_answers_give_a_plan_or_a_plan_error(text):
    _plan_or_plan_error(Plan.from_text, text)
    payload = None
    try:
        payload = read_answer(text)
    except ValueError:
        pass
    assert payload is None or isinstance(payload, (dict, str))


def test_positions_that_cannot_all_hold_are_a_plan_error_not_a_math_error():
    """Found by the fuzz below: column bounds from positions that contradict each other once
    crossed two column edges (a column of negative width, then 'math domain error')."""
    data = {"subjects": [{"noun": "t0", "count": 5, "attributes": ["on the right"]}, {"noun": "t1", "count": 2},
                         {"noun": "t2"}, {"noun": "t3", "count": 5, "attributes": ["in the bottom right corner"]},
                         {"noun": "t4", "attributes": ["in the center"]},
                         {"noun": "t5", "attributes": ["in the top left corner"]}],
            "relations": [{"subject": 3, "object": 4, "relation": "between", "object2": 1},
                          {"subject": 1, "object": 3, "relation": "between", "object2": 5},
                          {"subject": 1, "object": 5, "relation": "next to"},
                          {"subject": 1, "object": 0, "relation": "next to"}]}
    assert "cannot hold together" in plan_error(Plan.from_json, data)


POSITION_WORDS = ["on the left", "on the right", "at the top", "at the bottom", "in the center",
                  "in the top left corner", "in the bottom right corner", "in the background", "small", "big"]


@FUZZ
@given(st.integers(2, 7).flatmap(lambda n: st.tuples(
    st.lists(st.tuples(st.integers(1, 6), st.lists(st.sampled_from(POSITION_WORDS), max_size=2)),
             min_size=n, max_size=n),
    st.lists(st.tuples(st.integers(0, n - 1), st.integers(0, n - 1), st.sampled_from(RELATIONS),
                       st.integers(0, n - 1)), max_size=8))))
def test_fuzz_structured_plans_lay_out_or_give_a_plan_error(spec):
    subjects, relations = spec
    data = {"subjects": [{"noun": f"thing{i}", "count": c, "attributes": a} for i, (c, a) in enumerate(subjects)],
            "relations": [{"subject": s, "object": o, "relation": r} | ({"object2": o2} if r == "between" else {})
                          for s, o, r, o2 in relations]}
    _plan_or_plan_error(Plan.from_json, data)
