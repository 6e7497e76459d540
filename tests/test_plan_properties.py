"""Properties of the planner that hold for every input (hypothesis)."""

import json
import random
import re

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from uni1_core.layout import relation_holds
from uni1_core.plan import Plan, PlanError, Relation, Style, Subject, make_plan
from uni1_core.plan_parse import (BASIC_COLORS, COLOR_ALIASES, FUNCTION_WORDS, RELATIONS, parse_count, singular,
                                  tokenize)

FAST = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# Words a prompt is made of: nouns, colours, numbers, relation and position words, style words,
# negation, punctuation, and invented words the planner cannot know.
VOCAB = [
    "a", "an", "the", "two", "three", "4", "twelve", "twenty-one", "several", "a pair of", "cat", "cats",
    "dog", "people", "mice", "circle", "squares", "traffic light", "teddy bears", "table", "box", "vase",
    "red", "blue", "grey", "navy", "small", "big", "wooden", "fluffy", "left of", "to the right of",
    "on the left side of", "above", "on top of", "beneath", "under", "in front of", "behind", "next to",
    "inside", "between", "and", "or", ",", ";", ".", "is", "are", "on the left", "on the right",
    "at the top", "in the center", "with", "wearing a hat", "in", "on", "a beach", "at night",
    "a white background", "photo of", "oil painting", "watercolor", "cinematic lighting", "35mm",
    "close-up", "moody", "no", "without", "text", "each other", "from left to right", "sitting",
    "running", "zorbly", "quaxes", "8k", "highly detailed", "!", "é", "🙂", "\n", "anime style",
    "in the style of", "zero", "99", "1000000",
]

prompt_words = st.lists(st.sampled_from(VOCAB), max_size=25).map(" ".join)


def check_plan(plan: Plan) -> None:
    plan.validate()
    assert Plan.from_json(plan.to_json()) == plan
    assert Plan.from_json(plan.to_json()).to_json() == plan.to_json()
    want = sorted((i, k) for i, s in enumerate(plan.subjects) for k in range(s.instances))
    assert sorted((b.subject, b.instance) for b in plan.layout) == want
    for b in plan.layout:
        assert 0.0 <= b.x0 < b.x1 <= 1.0 and 0.0 <= b.y0 < b.y1 <= 1.0
    assert plan.violations() == []
    assert plan.position_violations() == []
    assert isinstance(plan.conditioning_text(), str) and isinstance(plan.summary(), str)
    assert len(plan.regions()) == len(want)


@FAST
@given(st.text(max_size=300))
def test_parser_never_crashes_on_arbitrary_text(text):
    check_plan(make_plan(text))


@FAST
@given(prompt_words)
def test_prompt_like_text_gives_a_valid_plan(text):
    check_plan(make_plan(text))


def _plan_text(plan: Plan) -> str:
    d = plan.to_dict()
    parts = [d["scene"], d["composition"], *d["style"].values(), *d["negatives"], *d["unparsed"]]
    for s in d["subjects"]:
        parts += [s["noun"], s["color"] or "", *s["attributes"]]
    return " ".join(parts).lower()


@FAST
@given(st.one_of(prompt_words, st.text(alphabet=st.characters(codec="utf-8"), max_size=120)))
def test_every_word_of_the_prompt_is_kept(text):
    """Nothing is dropped: each word is in a subject, attribute, scene, style, negative or unparsed."""
    plan = make_plan(text)
    kept = _plan_text(plan)
    toks = tokenize(text)
    for i, t in enumerate(toks):
        if not t.word or t.low in FUNCTION_WORDS or parse_count([t], 0) is not None:
            continue
        forms = {t.low, singular(t.low), COLOR_ALIASES.get(t.low, t.low)}
        assert any(f in kept for f in forms), (t.text, text, plan.to_json())


# -- structured plans ------------------------------------------------------------------------------

NOUNS = ["circle", "square", "triangle", "star", "cat", "traffic light", "person"]


@st.composite
def structured_plans(draw):
    n = draw(st.integers(1, 4))
    subjects = [Subject(draw(st.sampled_from(NOUNS)), draw(st.integers(1, 5)),
                        draw(st.sampled_from((None,) + BASIC_COLORS)),
                        draw(st.lists(st.sampled_from(["small", "large", "wooden", "with a hat", "on the left",
                                                       "at the top"]), max_size=2, unique=True)))
                for _ in range(n)]
    relations = []
    if n >= 2:
        for _ in range(draw(st.integers(0, 3))):
            s, o = draw(st.permutations(range(n)))[:2]
            rel = draw(st.sampled_from([r for r in RELATIONS if r != "between"]))
            relations.append(Relation(s, o, rel))
    return Plan(subjects=subjects, relations=relations, scene=draw(st.sampled_from(["", "on a beach"])),
                style=Style(medium=draw(st.sampled_from(["", "photo"]))))


@FAST
@given(structured_plans())
def test_structured_plans_lay_out_or_say_which_relation_fails(plan):
    try:
        laid = plan.with_layout()
    except PlanError as exc:
        assert re.match(r"(relations\[\d+\] \(.+\) cannot hold|subjects\[\d+\]\.attributes: '.+' cannot hold)",
                        str(exc)), exc
        return
    check_plan(laid)


@FAST
@given(st.integers(2, 5), st.integers(0, 2**32 - 1))
def test_every_satisfiable_direction_set_is_laid_out(n, seed):
    """Relations read off a real arrangement (so they can all hold) always get a layout."""
    rng = random.Random(seed)
    cells = [(rng.randrange(4), rng.randrange(4)) for _ in range(n)]
    relations = []
    for a in range(n):
        for b in range(n):
            if a != b and rng.random() < 0.4:
                (ca, ra), (cb, rb) = cells[a], cells[b]
                options = [r for r, ok in (("left of", ca < cb), ("right of", ca > cb),
                                           ("above", ra < rb), ("below", ra > rb)) if ok]
                if options:
                    relations.append(Relation(a, b, rng.choice(options)))
    plan = Plan(subjects=[Subject("circle", rng.randint(1, 3)) for _ in range(n)], relations=relations)
    check_plan(plan.with_layout())


@FAST
@given(structured_plans())
def test_json_round_trip_is_the_identity(plan):
    try:
        plan = plan.with_layout()
    except PlanError:
        assume(False)
    text = plan.to_json()
    assert Plan.from_json(text) == plan
    assert Plan.from_json(json.loads(text)) == plan
    assert Plan.from_json(plan.to_json(indent=None)).to_json() == text


def test_relation_holds_is_strict_on_edge_contact():
    """Touching boxes are still "left of"; one pixel of overlap is not."""
    assert relation_holds("left of", [(0.0, 0.0, 0.5, 1.0)], [(0.5, 0.0, 1.0, 1.0)])
    assert not relation_holds("left of", [(0.0, 0.0, 0.51, 1.0)], [(0.5, 0.0, 1.0, 1.0)])


# -- the canonical text reads back as the same plan ------------------------------------------------

@st.composite
def caption_plans(draw):
    """Plans like the demo trainer's scenes and GenEval prompts: what the caption language covers."""
    n = draw(st.integers(1, 4))
    nouns = draw(st.lists(st.sampled_from(["circle", "square", "triangle", "star", "hexagon", "cat",
                                           "traffic light", "person", "knife", "bus", "teddy bear", "glass"]),
                          min_size=n, max_size=n, unique=True))
    subjects = [Subject(noun, draw(st.integers(1, 12)), draw(st.sampled_from((None,) + BASIC_COLORS)),
                        draw(st.lists(st.sampled_from(["small", "large", "tiny", "wooden", "shiny", "navy"]),
                                      max_size=1)))
                for noun in nouns]
    relations = []
    if n >= 2:
        for s in range(1, n):   # a tree of relations, as scenes have: each new group tied to an earlier one
            if draw(st.booleans()):
                relations.append(Relation(s, draw(st.integers(0, s - 1)),
                                          draw(st.sampled_from([r for r in RELATIONS if r != "between"]))))
    plan = Plan(subjects=subjects, relations=relations,
                scene=draw(st.sampled_from(["", "on a white background", "on a beach", "in a forest at night"])),
                style=Style(medium=draw(st.sampled_from(["", "photo", "watercolor", "oil painting", "digital art"])),
                            lighting=draw(st.sampled_from(["", "soft lighting", "golden hour"]))))
    try:
        return plan.with_layout()
    except PlanError:
        assume(False)


@FAST
@given(caption_plans())
def test_conditioning_text_reads_back_as_the_same_plan(plan):
    """parse(render(plan)) == plan: the caption language is unambiguous, and the demo model's
    training captions are exactly what the planner writes for a prompt in that language."""
    text = plan.conditioning_text()
    again = make_plan(text)
    assert _content(again) == _content(plan), text       # the text may name subjects in another order
    assert (again.scene, again.style, again.unparsed) == (plan.scene, plan.style, []), text
    assert again.conditioning_text() == text


def _content(plan: Plan):
    key = [(s.noun, s.count, s.color, tuple(s.attributes)) for s in plan.subjects]
    return sorted(key), sorted((key[r.subject], r.relation, key[r.object]) for r in plan.relations)


def test_long_word_salad_prompts_give_valid_plans():
    """Long prompts with many contradicting relations: each still gives a usable, consistent plan,
    or (past the planner's limits) a PlanError that names the limit."""
    rng = random.Random(7)
    planned = 0
    for words in (150, 150, 150, 150, 300, 300, 300, 300):
        prompt = " ".join(rng.choice(VOCAB) for _ in range(words))
        try:
            plan = make_plan(prompt)
        except PlanError as exc:
            assert "at most" in str(exc)
            continue
        check_plan(plan)
        planned += 1
    assert planned >= 4


@FAST
@given(st.one_of(st.text(max_size=200), prompt_words,
                 st.builds(lambda a, b: f"<think>{a}</think>```json\n{b}\n```", st.text(max_size=50),
                           st.text(alphabet='{}[]":,0123456789 subjectsnounct', max_size=80))))
def test_llm_answers_give_a_plan_or_a_plan_error(text):
    try:
        plan = Plan.from_text(text)
    except PlanError:
        return
    check_plan(plan)
