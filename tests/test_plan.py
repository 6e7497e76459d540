"""The planner: prompt table, layout meaning, rendering, JSON editing, LLM answers, errors."""

import itertools
import json
import time

import pytest

from uni1_core.layout import relation_holds
from uni1_core.plan import Box, Plan, PlanError, Relation, Style, Subject, make_plan, parse_llm_output
from uni1_core.plan_parse import plural, singular
from tests.plan_cases import OBJECTS, all_cases

CASES = all_cases()


def test_table_is_big_enough():
    assert len(CASES) >= 150
    assert len({c["prompt"] for c in CASES}) == len(CASES)


def check_layout(plan: Plan) -> None:
    """One box per instance, inside the canvas, every relation and position satisfied."""
    want = sorted((i, k) for i, s in enumerate(plan.subjects) for k in range(s.instances))
    assert sorted((b.subject, b.instance) for b in plan.layout) == want
    for b in plan.layout:
        assert 0.0 <= b.x0 < b.x1 <= 1.0 and 0.0 <= b.y0 < b.y1 <= 1.0
    for r in plan.relations:
        o2 = plan.boxes_of(r.object2) if r.object2 is not None else None
        assert relation_holds(r.relation, plan.boxes_of(r.subject), plan.boxes_of(r.object), o2), r
    assert plan.position_violations() == []


@pytest.mark.parametrize("case", CASES, ids=[c["prompt"][:60] for c in CASES])
def test_prompt_table(case):
    plan = make_plan(case["prompt"])
    got = [(s.noun, s.count, s.color, s.attributes) for s in plan.subjects]
    assert got == [tuple(s[:3]) + (list(s[3]),) for s in case["subjects"]]
    rels = sorted((r.subject, r.relation, r.object) + ((r.object2,) if r.object2 is not None else ())
                  for r in plan.relations)
    assert rels == sorted(case["relations"])
    for key in ("scene", "composition"):
        if key in case:
            assert getattr(plan, key) == case[key]
    for key in ("medium", "lighting", "camera", "mood"):
        if key in case:
            assert getattr(plan.style, key) == case[key]
    if "negatives" in case:
        assert plan.negatives == case["negatives"]
    for text in case.get("unparsed", []):
        assert any(text in u for u in plan.unparsed), (text, plan.unparsed)
    if "adverbs" in case:
        assert [r.adverb for r in plan.relations] == case["adverbs"]
    if "sentence" in case:
        assert plan.conditioning_text() == case["sentence"]
    check_layout(plan)
    assert Plan.from_json(plan.to_json()) == plan


@pytest.mark.parametrize("singular_noun,plural_noun", OBJECTS)
def test_plural_and_singular_round_trip(singular_noun, plural_noun):
    if singular_noun in ("skis", "scissors"):
        assert singular(plural_noun) == plural_noun
        return
    assert plural(singular_noun) == plural_noun
    assert singular(plural_noun.split()[-1]) == singular_noun.split()[-1]


# -- rendering ---------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt,text", [
    ("two red circles to the left of a blue square", "Two red circles are to the left of a blue square."),
    ("On the left, two red circles; on the right, a blue square.",
     "Two red circles are to the left of a blue square."),
    ("a blue square right of 2 red circles", "A blue square is to the right of two red circles."),
    ("a red cube and a blue sphere", "A red cube and a blue sphere."),
    ("a photo of three dogs", "Three dogs. Photo."),
    ("a cat in the top left corner", "A cat in the top left corner."),
    ("a green star is left of a yellow triangle, and a purple square below the star",
     "A green star is to the left of a yellow triangle. A purple square is below the green star."),
    ("a red circle on a white background", "A red circle, on a white background."),
    ("a cup between a fork and a knife", "A cup is between a fork and a knife."),
    ("a dog with a red collar sitting on a bench", "A dog with a red collar sitting on a bench."),
    ("an apple, highly detailed", "An apple. Highly detailed."),
    ("a street, no cars", "A street. No cars."),
    ("a clock with no hands", "A clock. No hands."),
    ("a kitchen without a refrigerator", "A kitchen. No refrigerator."),
    ("an image showing a single triangle", "A triangle."),
    ("a picture of a circle", "A circle."),
    ("an image with a triangle and a circle", "A triangle and a circle."),
    ("a picture containing a square and a triangle", "A square and a triangle."),
    ("draw a square together with a triangle", "A square and a triangle. Draw."),
    ("a red square together with a purple circle", "A red square and a purple circle."),
    ("a cat along with a dog", "A cat and a dog."),
    ("there are three circles in the picture", "Three circles."),
    ("four circles please", "Four circles. Please."),
    ("two triangles side by side", "Two triangles. Side by side."),
    ("a red square on its own", "A red square. On its own."),
    ("a purple triangle with a green square", "A purple triangle and a green square."),
    ("a man with a hat", "A man with a hat."),
])
def test_conditioning_text(prompt, text):
    assert make_plan(prompt).conditioning_text() == text


def test_a_plural_without_a_number_has_no_count():
    """The schema's unspecified count: null in JSON, one box for the group, no number word."""
    plan = make_plan("robots next to some trees")
    assert [(s.noun, s.count) for s in plan.subjects] == [("robot", None), ("tree", None)]
    assert sorted((b.subject, b.instance) for b in plan.layout) == [(0, 0), (1, 0)]
    assert plan.conditioning_text() == "Robots are next to trees."
    assert '"count": null' in plan.to_json()
    assert Plan.from_json(plan.to_json()) == plan
    assert plan.summary().startswith("some robot, some tree")
    assert [text for text, _ in plan.regions()] == ["robots", "trees"]
    with pytest.raises(PlanError, match=r"count must be a positive integer \(1 to 50\) or null"):
        Plan.from_json({**plan.to_dict(), "subjects": [{"noun": "robot", "count": 0}], "relations": [],
                        "layout": []})


def test_conditioning_from_structured_scene_matches_parsed_prompt():
    """The demo trainer builds plans from scenes; parsing its caption gives the same plan back."""
    plan = Plan(subjects=[Subject("circle", 2, "red", ["small"]), Subject("square", 1, "blue", ["large"])],
                relations=[Relation(0, 1, "left of")], scene="on a light gray background").with_layout()
    text = plan.conditioning_text()
    assert text == "Two small red circles are to the left of a large blue square, on a light gray background."
    again = make_plan(text)
    assert again.subjects == plan.subjects and again.relations == plan.relations and again.scene == plan.scene
    assert again.conditioning_text() == text


def test_summary_and_negative_text():
    plan = make_plan("two red circles to the left of a blue square on a beach, watercolor, no people, no text")
    assert plan.summary() == ("2 red circle, 1 blue square | red circle left of blue square | on a beach | "
                              "watercolor | no people, text")
    assert plan.negative_text() == "people, text"
    text = plan.conditioning_text()
    assert "No people, no text." in text and make_plan(text).negatives == plan.negatives


def test_regions_one_per_instance():
    plan = make_plan("two red circles to the left of a blue square on the right")
    regions = plan.regions()
    assert [t for t, _ in regions] == ["a red circle", "a red circle", "a blue square"]
    for _, (x0, y0, x1, y1) in regions:
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
    assert regions[0][1][2] <= regions[2][1][0] and regions[1][1][2] <= regions[2][1][0]


def test_structured_plan_gets_a_layout_for_regions():
    plan = Plan(subjects=[Subject("star", 3, "yellow")])
    assert plan.layout == []
    regions = plan.regions()
    assert len(regions) == 3 and all(t == "a yellow star" for t, _ in regions)


def test_make_plan_is_deterministic_and_fast():
    prompt = ("A cinematic photo of two small red circles to the left of a large blue square, a green star "
              "above the square, three yellow triangles below the circles, and a purple hexagon between the "
              "square and a white heart, on a light gray background, soft lighting, 35mm, close-up, moody, "
              "no text, without watermarks, highly detailed, trending, masterpiece. ") * 2
    assert make_plan(prompt) == make_plan(prompt)
    best = min(_timed(make_plan, prompt) for _ in range(5))
    assert best < 0.050, f"make_plan took {best * 1000:.1f} ms on a {len(prompt)}-character prompt"


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


# -- layout meaning ------------------------------------------------------------------------------

def test_default_composition_is_a_centred_grid():
    plan = make_plan("a cat")
    (b,) = plan.layout
    assert abs((b.x0 + b.x1) / 2 - 0.5) < 1e-6 and abs((b.y0 + b.y1) / 2 - 0.5) < 1e-6
    plan = make_plan("a cat, a dog, a bird and a fish")
    centres = [((b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2) for b in plan.layout]
    assert centres == [(0.25, 0.25), (0.75, 0.25), (0.25, 0.75), (0.75, 0.75)]


def test_relation_meaning_on_boxes():
    left, right = (0.0, 0.0, 0.4, 0.4), (0.5, 0.0, 0.9, 0.4)
    assert relation_holds("left of", [left], [right]) and not relation_holds("left of", [right], [left])
    assert relation_holds("right of", [right], [left])
    top, bottom = (0.1, 0.0, 0.5, 0.3), (0.0, 0.4, 0.6, 0.9)
    assert relation_holds("above", [top], [bottom]) and relation_holds("on", [top], [bottom])
    assert not relation_holds("on", [(0.7, 0.0, 0.9, 0.3)], [bottom])      # no horizontal overlap
    assert relation_holds("inside", [(0.2, 0.5, 0.3, 0.6)], [bottom])
    assert relation_holds("between", [(0.4, 0, 0.6, 1)], [(0, 0, 0.3, 1)], [(0.7, 0, 1, 1)])
    with pytest.raises(ValueError, match="unknown relation"):
        relation_holds("near-ish", [left], [right])


def test_contradicting_prompt_keeps_the_relation_as_text():
    plan = make_plan("a cat left of a dog and the dog left of the cat")
    assert [(r.subject, r.relation, r.object) for r in plan.relations] == [(0, "left of", 1)]
    assert any("left of" in u for u in plan.unparsed)
    check_layout(plan)


def test_contradicting_structured_relations_are_an_error():
    plan = Plan(subjects=[Subject("cat"), Subject("dog")],
                relations=[Relation(0, 1, "left of"), Relation(1, 0, "left of")])
    with pytest.raises(PlanError, match=r"relations\[1\]"):
        plan.with_layout()


# -- JSON editing ---------------------------------------------------------------------------------

def test_json_round_trip_identity():
    plan = make_plan("a photo of two red circles to the left of a blue square, watercolor, no text")
    text = plan.to_json()
    assert Plan.from_json(text) == plan
    assert Plan.from_json(text).to_json() == text
    data = json.loads(text)
    assert list(data) == ["version", "prompt", "subjects", "relations", "layout", "scene", "style", "composition",
                          "negatives", "unparsed"]
    assert data["subjects"][0] == {"noun": "circle", "count": 2, "color": "red", "attributes": []}
    assert data["relations"] == [{"subject": 0, "object": 1, "relation": "left of"}]
    assert set(data["layout"][0]) == {"subject", "instance", "x0", "y0", "x1", "y1"}


def _edited(prompt: str, edit) -> Plan:
    data = json.loads(make_plan(prompt).to_json())
    edit(data)
    return Plan.from_json(json.dumps(data))


def test_edit_color_re_renders():
    plan = _edited("two red circles to the left of a blue square",
                   lambda d: d["subjects"][0].update(color="green"))
    assert plan.conditioning_text() == "Two green circles are to the left of a blue square."


def test_edit_count_re_lays_out():
    plan = _edited("two red circles to the left of a blue square", lambda d: d["subjects"][0].update(count=3))
    assert plan.conditioning_text() == "Three red circles are to the left of a blue square."
    assert len(plan.boxes_of(0)) == 3
    check_layout(plan)


def test_edit_box_is_kept():
    def move(d):
        d["layout"][0].update(x0=0.0, y0=0.0, x1=0.2, y1=0.2)
    plan = _edited("two red circles to the left of a blue square", move)
    assert plan.boxes_of(0)[0] == (0.0, 0.0, 0.2, 0.2)


def test_missing_layout_is_computed():
    plan = Plan.from_json({"subjects": [{"noun": "cat"}, {"noun": "dog", "count": 2, "color": "grey"}],
                           "relations": [{"subject": 0, "object": 1, "relation": "above"}]})
    assert plan.subjects[1].color == "gray"
    check_layout(plan)


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["subjects"][1].update(count=-1), r"subjects\[1\]\.count must be a positive integer"),
    (lambda d: d["subjects"][1].update(count="two"), r"subjects\[1\]\.count must be a positive integer"),
    (lambda d: d["subjects"][1].update(count=0), r"subjects\[1\]\.count must be a positive integer"),
    (lambda d: d["subjects"][0].update(color="crimson"), r"subjects\[0\]\.color must be null or one of"),
    (lambda d: d["subjects"][0].update(noun=""), r"subjects\[0\]\.noun must be a non-empty string"),
    (lambda d: d["subjects"][0].pop("noun"), r"subjects\[0\]\.noun is missing"),
    (lambda d: d["subjects"][0].update(attributes="small"), r"subjects\[0\]\.attributes must be a list"),
    (lambda d: d["subjects"][0].update(size="big"), r"unknown field subjects\[0\]\.size"),
    (lambda d: d["layout"][0].update(x1=1.5), r"layout\[0\]\.x1 must be a number between 0 and 1"),
    (lambda d: d["layout"][0].update(y0=-0.1), r"layout\[0\]\.y0 must be a number between 0 and 1"),
    (lambda d: d["layout"][0].update(x0=0.6, x1=0.5), r"layout\[0\]: x0 must be smaller than x1"),
    (lambda d: d["layout"][1].update(subject=7), r"layout\[1\]\.subject must be the index of a subject"),
    (lambda d: d["relations"][0].update(object=5), r"relations\[0\]\.object must be the index of a subject"),
    (lambda d: d["relations"][0].update(subject=-1), r"relations\[0\]\.subject must be the index"),
    (lambda d: d["relations"][0].update(relation="diagonal to"), r"relations\[0\]\.relation must be one of"),
    (lambda d: d["relations"][0].update(subject=1), r"relations\[0\]: a subject cannot be left of itself"),
    (lambda d: d["relations"].append({"subject": 1, "object": 0, "relation": "right of", "object2": 0}),
     r"relations\[1\]\.object2 is only used with 'between'"),
    (lambda d: d["relations"].append({"subject": 1, "object": 0, "relation": "left of"}),
     r"relations\[1\] \(the blue square to the left of the red circles\) cannot hold"),
    (lambda d: d.update(version=99), r"version 99 is newer"),
    (lambda d: d.update(colour="red"), r"unknown field 'colour'"),
    (lambda d: d.update(style="watercolor"), r"style must be an object"),
    (lambda d: d["style"].update(medium=3), r"style\.medium must be a string"),
    (lambda d: d.update(negatives="text"), r"negatives must be a list of strings"),
    (lambda d: d.update(subjects={"noun": "cat"}), r"subjects must be a list"),
])
def test_impossible_edits_name_the_field(edit, message):
    with pytest.raises(PlanError, match=message):
        _edited("two red circles to the left of a blue square", edit)


@pytest.mark.parametrize("text,message", [
    ("{not json", r"not valid JSON"),
    ("[1, 2]", r"must be a JSON object"),
    ('{"subjects": [3]}', r"subjects\[0\] must be an object"),
])
def test_malformed_json(text, message):
    with pytest.raises(PlanError, match=message):
        Plan.from_json(text)


def test_structured_construction_validates():
    with pytest.raises(PlanError, match=r"subjects\[0\]\.count"):
        Plan(subjects=[Subject("cat", count=-2)])
    with pytest.raises(PlanError, match=r"layout has no box for subjects\[0\] instance 1"):
        Plan(subjects=[Subject("cat", count=2)], layout=[Box(0, 0, 0.1, 0.1, 0.5, 0.5)])
    assert Plan(style=Style(medium="photo")).conditioning_text() == "Photo."


# -- text written by another language model -------------------------------------------------------

PLAN_JSON = json.dumps({"version": 1, "subjects": [{"noun": "circle", "count": 2, "color": "red", "attributes": []},
                                                   {"noun": "square", "count": 1, "color": "blue", "attributes": []}],
                        "relations": [{"subject": 0, "object": 1, "relation": "left of"}]})


@pytest.mark.parametrize("answer", [
    PLAN_JSON,
    f"```json\n{PLAN_JSON}\n```",
    f"<think>The user wants circles. Maybe {{\"subjects\": []}} is wrong; a blue square too.</think>\n"
    f"Here is the plan:\n```json\n{PLAN_JSON}\n```\nLet me know if you want changes.",
    f"Okay, let me think. The circles go left.</think>{PLAN_JSON}",
    "<think>left means x small</think>\nEnhanced prompt: two red circles to the left of a blue square",
    "Sure! Here is an enhanced prompt:\n\n\"two red circles to the left of a blue square\"",
    '{"prompt": "two red circles to the left of a blue square"}',
    "**Prompt:** two red circles to the left of a blue square",
])
def test_llm_answers(answer):
    plan = parse_llm_output(answer)
    assert plan.conditioning_text() == "Two red circles are to the left of a blue square."
    assert Plan.from_text(answer) == plan
    check_layout(plan)


def test_llm_reasoning_never_reaches_the_conditioning():
    plan = Plan.from_text("<think>I should add a dragon and make it purple.</think>a cat on a sofa")
    assert "dragon" not in plan.to_json() and plan.conditioning_text() == "A cat is on a sofa."
    # an answer cut off while still thinking has nothing to draw
    assert Plan.from_text("a cat<think>and also a dragon").conditioning_text() == "A cat."


def test_llm_plan_json_with_an_error_names_the_field():
    bad = PLAN_JSON.replace('"count": 2', '"count": -2')
    with pytest.raises(PlanError, match=r"subjects\[0\]\.count"):
        Plan.from_text(f"```json\n{bad}\n```")


def test_llm_plan_json_in_its_own_words_is_normalised():
    answer = """<think>Two circles, one square. Circles go left.</think>
```json
{"subjects": [{"noun": "Red Circles", "count": "two", "color": null},
              {"noun": "square", "count": 1.0, "color": "Blue", "attributes": "large"},
              {"noun": "star", "color": "gold"}],
 "relations": [{"subject": "circles", "object": 1, "relation": "to the left of"},
               {"subject": 2, "object": "square", "relation": "ON_TOP_OF"}],
 "style": "watercolor", "negatives": "text, watermark",
 "reasoning": "a dragon would be nice", "layout": [{"subject": 0, "instance": 0, "x0": 10, "y0": 10, "x1": 200, "y1": 200}]}
```"""
    plan = Plan.from_text(answer)
    assert [(s.noun, s.count, s.color, s.attributes) for s in plan.subjects] == [
        ("circle", 2, "red", []), ("square", 1, "blue", ["large"]), ("star", 1, None, ["gold"])]
    assert [(r.subject, r.relation, r.object) for r in plan.relations] == [(0, "left of", 1), (2, "on", 1)]
    assert plan.style.medium == "watercolor" and plan.negatives == ["text", "watermark"]
    assert "dragon" not in plan.to_json()
    check_layout(plan)
    assert plan.conditioning_text() == ("Two red circles are to the left of a large blue square. "
                                        "A gold star is on the large blue square. No text, no watermark. Watercolor.")


def test_summary_stays_short():
    prompt = ", ".join(f"a red {noun}" for noun in ["cat", "dog", "bird", "fish", "cow", "horse", "sheep", "bear",
                                                    "zebra", "giraffe", "lion", "tiger", "wolf", "fox", "deer"] * 2)
    summary = make_plan(prompt).summary()
    assert len(summary) == 200 and summary.endswith("…")


def test_plans_do_not_depend_on_the_hash_seed():
    """Deterministic across processes: no set or dict iteration order leaks into a plan."""
    import os
    import subprocess
    import sys
    prompts = [c["prompt"] for c in CASES[::5]]
    code = ("import json, sys; from uni1_core.plan import make_plan; "
            "print(json.dumps([make_plan(p).to_json() for p in json.loads(sys.stdin.read())]))")
    outs = []
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        run = subprocess.run([sys.executable, "-c", code], input=json.dumps(prompts), capture_output=True,
                             text=True, env=env, check=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        outs.append(json.loads(run.stdout))
    assert outs[0] == outs[1] == [make_plan(p).to_json() for p in prompts]


def test_llm_json_with_trailing_commas_is_repaired():
    answer = "```json\n" + PLAN_JSON.replace("]}", "],}").replace('"left of"}', '"left of"},') + "\n```"
    assert Plan.from_text(answer).conditioning_text() == "Two red circles are to the left of a blue square."


def test_llm_json_that_cannot_be_read_is_an_error_not_a_prompt():
    with pytest.raises(PlanError, match="not valid JSON"):
        Plan.from_text('```json\n{"subjects": [{"noun": "cat" "count": 2}]}\n```')


# -- grounding: the layout snapped to a model's cell grid and written into the prompt -----------

def test_grounding_text_of_the_demo_prompt():
    plan = make_plan("two red circles to the left of a blue square").on_grid(8, 2, 4)
    layout = ("Layout: two red circles (1), a blue square (2).\n"
              "00000000\n01110000\n01110222\n01110222\n00000222\n01110000\n01110000\n01110000\n")
    assert plan.grounding_text(8) == layout
    assert plan.conditioning_text(grounding=8) == "Two red circles are to the left of a blue square. " + layout
    # without a grid the text is the plain sentence, as every other model reads it
    assert plan.conditioning_text() == "Two red circles are to the left of a blue square."


def test_grounding_with_the_models_symbols():
    """A model that declares symbols gets one letter per kind of object and no legend; a subject
    without a symbol keeps its number and its legend entry."""
    plan = make_plan("two red circles to the left of a blue square").on_grid(8, 2, 4)
    text = plan.grounding_text(8, {"red circle": "A", "blue square": "N"})
    assert text == ("Layout:\n00000000\n0AAA0000\n0AAA0NNN\n0AAA0NNN\n00000NNN\n0AAA0000\n0AAA0000\n"
                    "0AAA0000\n")
    mixed = plan.grounding_text(8, {"red circle": "A"})
    assert mixed.startswith("Layout: a blue square (2).\n") and "0AAA0222\n" in mixed
    assert make_plan("a square").on_grid(8, 2, 4).grounding_text(8, {"square": "T"}).count("T") == 16


def test_layout_map_rows_line_up_with_image_rows():
    """Each map row is as many tokens as an image row (8 codes + row end) and the map ends the
    prompt, so map cell (r, c) is a fixed distance before image code (r, c)."""
    from tests.tiny_model_folder import build_tokenizer
    from uni1_core.sequence import t2i_prompt_ids
    tok = build_tokenizer()
    symbols = {"red circle": "A", "blue square": "N", "triangle": "U"}
    for prompt, sym in itertools.product(("two red circles to the left of a blue square", "a yellow triangle",
                                          "four green squares", "a triangle above a blue square"), (None, symbols)):
        text = make_plan(prompt).on_grid(8, 2, 4).conditioning_text(grounding=8, symbols=sym)
        ids = t2i_prompt_ids(tok, text, 64, 64)
        tail = [tok.id_to_token(i) for i in ids[-73:]]
        assert tail[-1] == "<reserved08706>"
        assert [t for k, t in enumerate(tail[:-1]) if k % 9 == 8] == ["\u010a"] * 8          # newline
        assert all(t in "0123456789ANU" and len(t) == 1 for k, t in enumerate(tail[:-1]) if k % 9 != 8)


def test_snapped_boxes_are_squares_of_whole_cells_kept_apart():
    from uni1_core.layout import snap_to_cells
    # two touching boxes: the larger shrinks until a free cell lies between them
    a, b = snap_to_cells([(0.0, 0.0, 0.5, 0.5), (0.5, 0.0, 1.0, 0.5)], 8, 2, 4)
    assert a[2] * 8 < b[0] * 8
    for box in snap_to_cells([(0.1, 0.1, 0.9, 0.9), (0.0, 0.0, 0.05, 0.05)], 8, 2, 4):
        cells = [v * 8 for v in box]
        assert all(c == round(c) for c in cells) and 0 <= cells[0] and cells[2] <= 8
        assert cells[2] - cells[0] == cells[3] - cells[1] and 2 <= cells[2] - cells[0] <= 4
    with pytest.raises(ValueError, match="min_cells"):
        snap_to_cells([(0.0, 0.0, 1.0, 1.0)], 8, 5, 4)


# The planner stacks three instances in half the image as a 2 + 1 pyramid: two rows of squares of
# at least 2 cells with a free row between need 5 rows, and half of 8 has 4. The third square
# then lands wherever there is room, and the relation breaks (a known limit of the demo's grid).
CROWDED_ON_8_CELLS = {"three orange squares below a blue star"}


@pytest.mark.parametrize("prompt", [c["prompt"] for c in CASES] + [
    "two red circles to the left of a blue square", "three triangles", "four green squares",
    "a yellow circle below a purple triangle", "a small red square right of a large blue circle"])
def test_snapping_keeps_the_planned_relations(prompt):
    """On the demo model's grid every left/right/above/below relation of a plan of up to four
    objects still holds after snapping, and no two squares touch."""
    plan = make_plan(prompt)
    if prompt in CROWDED_ON_8_CELLS or not plan.subjects or sum(s.instances for s in plan.subjects) > 4 or any(
            r.relation not in ("left of", "right of", "above", "below") for r in plan.relations):
        return
    snapped = plan.on_grid(8, 2, 4)
    assert snapped.violations() == []
    cells = [tuple(round(v * 8) for v in b.xyxy) for b in snapped.layout]
    for i, p in enumerate(cells):
        assert p[2] - p[0] == p[3] - p[1] and 2 <= p[2] - p[0] <= 4
        for q in cells[i + 1:]:
            assert p[2] < q[0] or q[2] < p[0] or p[3] < q[1] or q[3] < p[1], (prompt, cells)


def test_another_models_plan_keeps_a_relations_adverb():
    answer = ('{"subjects": [{"noun": "bird"}, {"noun": "house"}], '
              '"relations": [{"subject": 0, "object": 1, "relation": "above", "adverb": "high"}]}')
    plan = Plan.from_text(answer)
    assert plan.relations[0].adverb == "high"
    assert plan.conditioning_text() == "A bird is high above a house."
