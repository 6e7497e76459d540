"""The reasoning plan: what must be in the picture, written down before any token is drawn.

A `Plan` lists the subjects (noun, count, colour, attributes), the spatial relations between
them, one box per subject instance (the layout), the scene, the style, the composition, the
negatives, and whatever text the parser did not understand (kept verbatim, never dropped).

    plan = make_plan("two red circles to the left of a blue square")
    plan.conditioning_text()   # "Two red circles are to the left of a blue square."
    plan.summary()             # "2 red circle, 1 blue square | red circle left of blue square"
    plan.regions()             # [("a red circle", (x0, y0, x1, y1)), ...] one per instance
    Plan.from_json(plan.to_json()) == plan

A plan can also be built from structured data (the demo trainer does this for its procedural
scenes): `Plan(subjects=[Subject("circle", 2, "red")], relations=[Relation(0, 1, "left of")])`
then `.with_layout()`. `Plan.from_text` reads the answer of another language model: a plan JSON
in this schema (possibly fenced or after <think>...</think> reasoning) or a rewritten prompt.

The conditioning text is also the caption language the demo model is trained on, so its form is
part of the contract: change it only together with the demo model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace

from .layout import compute_layout, position_holds, relation_holds, snap_to_cells
from .llm_answer import STYLE_FIELDS, LLMAnswerError, read_answer
from .plan_parse import (BASIC_COLORS, COLOR_ALIASES, MAX_COUNT, OTHER_COLOR_WORDS, POSITIONS, PRE_COLOR_WORDS,
                         RELATION_TEXT, RELATIONS, article, is_fragment, number_word, parse_prompt, plural)

PLAN_VERSION = 1
# Limits that keep planning fast and the layout readable whatever the input (a picture with more
# objects than this is not one the layout, or a model's attention, can keep apart anyway).
MAX_PROMPT_CHARS = 4000
MAX_SUBJECTS = 32
MAX_RELATIONS = 64
MAX_INSTANCES = 128    # boxes in a layout: the sum of the counts
SUMMARY_MAX = 200   # characters; the node UI shows one line
# Attributes starting with these words follow the noun: "a dog with a red collar".
POST_NOUN_LEADERS = {"with", "wearing", "holding", "carrying", "of", "made", "in", "at", "on",
                     "for", "from", "covered", "filled", "full", "under", "near", "by", "inside",
                     "eating", "drinking", "reading", "playing", "riding", "looking",
                     "surrounded", "dressed", "sitting", "standing", "lying", "running", "flying",
                     "swimming", "walking", "jumping", "to", "against", "without", "that", "which"}


class PlanError(ValueError):
    """A plan that cannot be used; the message names the field and what would fix it."""


@dataclass
class Subject:
    noun: str                      # singular: "circle", "traffic light"
    count: int | None = 1          # None: a plural whose number the prompt does not give ("cats")
    color: str | None = None       # one of BASIC_COLORS or None
    attributes: list[str] = field(default_factory=list)   # "small", "wooden", "with a red collar", "on the left"

    @property
    def instances(self) -> int:
        """Boxes in the layout: one per counted instance; one region for a plural without a number."""
        return 1 if self.count is None else self.count


@dataclass
class Relation:
    subject: int                   # index into Plan.subjects
    object: int
    relation: str                  # one of RELATIONS
    object2: int | None = None     # only for "between": the subject is between object and object2
    adverb: str = ""               # how, in the prompt's word: "high" (above), "slightly" (left of)


@dataclass
class Box:
    subject: int
    instance: int
    x0: float
    y0: float
    x1: float
    y1: float

    @property
    def xyxy(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass
class Style:
    medium: str = ""
    lighting: str = ""
    camera: str = ""
    mood: str = ""


@dataclass
class Plan:
    subjects: list[Subject] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)
    layout: list[Box] = field(default_factory=list)
    scene: str = ""
    style: Style = field(default_factory=Style)
    composition: str = ""
    negatives: list[str] = field(default_factory=list)
    unparsed: list[str] = field(default_factory=list)
    prompt: str = ""               # the user's words this plan was made from ("" for a structured plan)
    version: int = PLAN_VERSION

    def __post_init__(self):
        self.validate()

    # -- validation ------------------------------------------------------------------------------
    def validate(self) -> None:
        """Raise PlanError naming the first field that makes this plan unusable."""
        _check(isinstance(self.version, int) and not isinstance(self.version, bool),
               "version must be an integer")
        _check(self.version <= PLAN_VERSION,
               lambda: f"version {self.version} is newer than this planner understands ({PLAN_VERSION}); update ComfyUI-Uni1")
        _check(isinstance(self.subjects, list), "subjects must be a list")
        _check(len(self.subjects) <= MAX_SUBJECTS,
               lambda: f"the plan has {len(self.subjects)} subjects; at most {MAX_SUBJECTS} can be laid out: "
                       "merge repeated objects into one subject with a count")
        _check(isinstance(self.relations, list) and len(self.relations) <= MAX_RELATIONS,
               lambda: f"relations must be a list of at most {MAX_RELATIONS}; remove some")
        for i, s in enumerate(self.subjects):
            where = f"subjects[{i}]"
            _check(isinstance(s, Subject), lambda: f"{where} must be an object with noun, count, color, attributes")
            _check(isinstance(s.noun, str) and s.noun.strip() != "", lambda: f"{where}.noun must be a non-empty string")
            _check(s.count is None or (isinstance(s.count, int) and not isinstance(s.count, bool)
                                       and 1 <= s.count <= MAX_COUNT),
                   lambda: f"{where}.count must be a positive integer (1 to {MAX_COUNT}) or null (a plural "
                           f"without a number), got {s.count!r}")
            _check(s.color is None or s.color in BASIC_COLORS,
                   lambda: f"{where}.color must be null or one of {', '.join(BASIC_COLORS)}; got {s.color!r} "
                   "(put other colour words in attributes)")
            _check(isinstance(s.attributes, list) and all(isinstance(a, str) and a.strip() for a in s.attributes),
                   lambda: f"{where}.attributes must be a list of non-empty strings")
        n = len(self.subjects)
        instances = sum(s.instances for s in self.subjects)
        _check(instances <= MAX_INSTANCES,
               lambda: f"the plan has {instances} object instances (the sum of the counts); at most "
                       f"{MAX_INSTANCES} can be laid out: lower the counts")
        for i, r in enumerate(self.relations):
            where = f"relations[{i}]"
            _check(isinstance(r, Relation), lambda: f"{where} must be an object with subject, object, relation")
            _check(r.relation in RELATIONS, lambda: f"{where}.relation must be one of {', '.join(RELATIONS)}; got {r.relation!r}")
            for name in ("subject", "object"):
                v = getattr(r, name)
                _check(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n,
                       lambda: f"{where}.{name} must be the index of a subject (0 to {n - 1}); got {v!r}")
            _check(r.subject != r.object, lambda: f"{where}: a subject cannot be {r.relation} itself")
            if r.relation == "between":
                v = r.object2
                _check(isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n and v not in (r.subject, r.object),
                       lambda: f"{where}.object2 must be the index of a third subject (0 to {n - 1}) for 'between'; got {v!r}")
            else:
                _check(r.object2 is None, lambda: f"{where}.object2 is only used with 'between'")
            _check(isinstance(r.adverb, str), lambda: f"{where}.adverb must be a string (or absent)")
        _check(isinstance(self.layout, list), "layout must be a list")
        for i, b in enumerate(self.layout):
            _check_box(b, i, self.subjects)
        if self.layout:
            seen = {(b.subject, b.instance) for b in self.layout}
            _check(len(seen) == len(self.layout), "layout has two boxes for the same subject instance")
            want = {(i, k) for i, s in enumerate(self.subjects) for k in range(s.instances)}
            missing = sorted(want - seen)
            _check(not missing, lambda: f"layout has no box for subjects[{missing[0][0]}] instance {missing[0][1]} "
                                if missing else "")
        for name in ("scene", "composition", "prompt"):
            _check(isinstance(getattr(self, name), str), lambda: f"{name} must be a string")
        _check(isinstance(self.style, Style), "style must be an object with medium, lighting, camera, mood")
        for name in STYLE_FIELDS:
            _check(isinstance(getattr(self.style, name), str), lambda: f"style.{name} must be a string")
        for name in ("negatives", "unparsed"):
            v = getattr(self, name)
            _check(isinstance(v, list) and all(isinstance(x, str) for x in v), lambda: f"{name} must be a list of strings")

    # -- layout ------------------------------------------------------------------------------------
    def positions(self) -> list[tuple[int | None, int | None]]:
        """The absolute position of each subject from its attributes ((None, None) if none)."""
        out = []
        for s in self.subjects:
            pos = [POSITIONS[a] for a in s.attributes if a in POSITIONS]
            out.append(pos[-1] if pos else (None, None))
        return out

    def with_layout(self) -> Plan:
        """This plan with a fresh layout; PlanError if its relations contradict each other."""
        plan = replace(self, layout=_layout_boxes(self))
        bad = plan.violations()
        if bad:
            i = bad[0]
            raise PlanError(f"relations[{i}] ({self.describe_relation(i)}) cannot hold together with the "
                            "other relations and positions; remove or change one of them")
        bad = plan.position_violations()
        if bad:
            i = bad[0]
            pos = [a for a in self.subjects[i].attributes if a in POSITIONS][-1]
            raise PlanError(f"subjects[{i}].attributes: {pos!r} cannot hold together with the relations; "
                            "remove the position or the relation that contradicts it")
        return plan

    def boxes_of(self, subject: int) -> list[tuple[float, float, float, float]]:
        return self._boxes_by_subject().get(subject, [])

    def _boxes_by_subject(self) -> dict[int, list[tuple[float, float, float, float]]]:
        out: dict[int, list] = {}
        for b in sorted(self.layout, key=lambda b: (b.subject, b.instance)):
            out.setdefault(b.subject, []).append(b.xyxy)
        return out

    def violations(self) -> list[int]:
        """Indices of relations the current layout does not satisfy."""
        boxes = self._boxes_by_subject()
        bad = []
        for i, r in enumerate(self.relations):
            o2 = boxes.get(r.object2, []) if r.object2 is not None else None
            if not relation_holds(r.relation, boxes.get(r.subject, []), boxes.get(r.object, []), o2):
                bad.append(i)
        return bad

    def position_violations(self) -> list[int]:
        """Indices of subjects whose boxes are not where their absolute position says."""
        boxes = self._boxes_by_subject()
        return [i for i, p in enumerate(self.positions()) if not position_holds(p, boxes.get(i, []))]

    # -- JSON ----------------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        def rel(r: Relation) -> dict:
            d = {"subject": r.subject, "object": r.object, "relation": r.relation}
            if r.object2 is not None:
                d["object2"] = r.object2
            if r.adverb:
                d["adverb"] = r.adverb
            return d
        return {
            "version": self.version,
            "prompt": self.prompt,
            "subjects": [{"noun": s.noun, "count": s.count, "color": s.color, "attributes": list(s.attributes)}
                         for s in self.subjects],
            "relations": [rel(r) for r in self.relations],
            "layout": [{"subject": b.subject, "instance": b.instance, "x0": b.x0, "y0": b.y0, "x1": b.x1,
                        "y1": b.y1} for b in self.layout],
            "scene": self.scene,
            "style": {k: getattr(self.style, k) for k in STYLE_FIELDS},
            "composition": self.composition,
            "negatives": list(self.negatives),
            "unparsed": list(self.unparsed),
        }

    def to_json(self, indent: int | None = 2) -> str:
        """The plan as JSON. With an indent, each subject, relation and box is one line, which
        keeps the text short enough to edit by hand; `indent=None` gives one compact line."""
        d = self.to_dict()
        if indent is None:
            return json.dumps(d, ensure_ascii=False)
        pad = " " * indent
        fields_ = []
        for key, value in d.items():
            if isinstance(value, list) and value and isinstance(value[0], dict):
                items = ",\n".join(pad * 2 + json.dumps(v, ensure_ascii=False) for v in value)
                fields_.append(f"{pad}{json.dumps(key)}: [\n{items}\n{pad}]")
            else:
                fields_.append(f"{pad}{json.dumps(key)}: {json.dumps(value, ensure_ascii=False)}")
        return "{\n" + ",\n".join(fields_) + "\n}"

    @classmethod
    def from_json(cls, data: str | dict) -> Plan:
        """Read (and validate) a plan JSON string or dict.

        An edited plan re-renders consistently: when the layout is missing, or no longer has
        exactly one box per instance (a count was edited), a fresh layout is computed.
        """
        if isinstance(data, str):
            try:
                data = json.loads(data)
            except json.JSONDecodeError as exc:
                raise PlanError(f"the plan is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
            except RecursionError:
                raise PlanError("the plan JSON is nested too deep to be a plan (a plan is at most four levels "
                                "deep); check what produced it") from None
        _check(isinstance(data, dict), "the plan must be a JSON object with subjects, relations, layout, ...")
        known = {"version", "prompt", "subjects", "relations", "layout", "scene", "style", "composition", "negatives", "unparsed"}
        unknown = sorted(set(data) - known)
        _check(not unknown, lambda: f"unknown field {unknown[0]!r} in the plan (fields: {', '.join(sorted(known))})"
               if unknown else "")
        subjects = [_subject(s, i) for i, s in enumerate(_list(data, "subjects"))]
        relations = [_relation(r, i) for i, r in enumerate(_list(data, "relations"))]
        layout = [_box(b, i) for i, b in enumerate(_list(data, "layout"))]
        style = data.get("style", {})
        if style is None:
            style = {}
        _check(isinstance(style, dict), "style must be an object with medium, lighting, camera, mood")
        bad = sorted(set(style) - set(STYLE_FIELDS))
        _check(not bad, lambda: f"unknown field style.{bad[0]} (fields: {', '.join(STYLE_FIELDS)})" if bad else "")
        style_obj = Style(**{k: _string(style.get(k, ""), f"style.{k}") for k in STYLE_FIELDS})
        version = data.get("version", PLAN_VERSION)
        plan = cls(subjects=subjects, relations=relations, layout=[], scene=_string(data.get("scene", ""), "scene"),
                   style=style_obj, composition=_string(data.get("composition", ""), "composition"),
                   negatives=_strings(data.get("negatives", []), "negatives"),
                   unparsed=_strings(data.get("unparsed", []), "unparsed"),
                   prompt=_string(data.get("prompt", ""), "prompt"), version=version)
        # every box is checked, even one for an instance that no longer exists (a count was
        # edited), so that a typo is caught
        for i, b in enumerate(layout):
            _check_box(b, i, subjects, check_instance=False)
        want = {(i, k) for i, s in enumerate(subjects) for k in range(s.instances)}
        have = [(b.subject, b.instance) for b in layout]
        if layout and len(set(have)) == len(have) == len(want) and set(have) == want:
            given = replace(plan, layout=layout)
            if not given.violations():
                return given
            # the boxes no longer fit the relations (a relation was edited): lay out again below
        return plan.with_layout()

    @classmethod
    def from_text(cls, text: str) -> Plan:
        """A plan from another language model's answer (plan JSON or a rewritten prompt).

        Reasoning (<think>...</think>) never reaches the plan; a JSON plan is validated like an
        edited one; anything else is planned like a prompt.
        """
        try:
            payload = read_answer(text)
        except LLMAnswerError as exc:
            raise PlanError(str(exc)) from None
        return cls.from_answer(payload)

    @classmethod
    def from_answer(cls, payload: dict | str) -> Plan:
        """A plan from what `llm_answer.read_answer` found in an answer: a plan dictionary
        (validated like an edited plan) or a rewritten prompt (planned like a prompt)."""
        if isinstance(payload, dict):
            data = payload
            try:
                return cls.from_json(data)
            except PlanError as exc:
                if not str(exc).startswith("layout") or not data.get("layout"):
                    raise
                # the model's boxes are unusable (pixels, half a layout...): lay out afresh
                return cls.from_json({**data, "layout": []})
        return make_plan(payload)

    # -- rendering -------------------------------------------------------------------------------------
    def subject_phrase(self, i: int, *, definite: bool = False, one: bool = False,
                       with_position: bool = True) -> str:
        """ "two small red circles", "the red circles", "a dog with a red collar"."""
        s = self.subjects[i]
        count = 1 if one else s.count
        pre, mid, post = [], [], []
        for a in s.attributes:
            if a in POSITIONS:
                if with_position:
                    post.append(a)
            elif a.split()[0] in POST_NOUN_LEADERS or (a not in PRE_COLOR_WORDS and a.split()[0].endswith(("ing", "ed"))):
                post.append(a)     # "a dog with a red collar", "a car parked", "a bird flying"
            elif a in PRE_COLOR_WORDS or a in OTHER_COLOR_WORDS:     # "a small navy blue car"
                pre.append(a)
            else:
                mid.append(a)
        noun = s.noun if count == 1 else plural(s.noun)
        words = pre + ([s.color] if s.color else []) + mid + [noun]
        if definite:
            lead = "the"
        elif count == 1:
            lead = article(words[0])
        else:     # no number word when the prompt gave none: "red circles"
            lead = number_word(count) if count else ""
        return " ".join(filter(None, [lead] + words + post))

    def describe_relation(self, i: int) -> str:
        r = self.relations[i]
        s = self.subject_phrase(r.subject, definite=True, with_position=False)
        o = self.subject_phrase(r.object, definite=True, with_position=False)
        if r.relation == "between":
            o += " and " + self.subject_phrase(r.object2, definite=True, with_position=False)
        return " ".join(filter(None, [s, r.adverb, RELATION_TEXT[r.relation], o]))

    def _laid_out(self) -> Plan:
        """This plan if it has a layout (or nothing to lay out), else with a fresh one."""
        return self if self.layout or not self.subjects else self.with_layout()

    def on_grid(self, grid: int, min_cells: int = 1, max_cells: int | None = None) -> Plan:
        """This plan with its layout snapped to squares of whole cells of a grid x grid image
        (`layout.snap_to_cells`): the boxes a grounded model is asked to draw in."""
        plan = self._laid_out()
        boxes = sorted(plan.layout, key=lambda b: (b.subject, b.instance))
        snapped = snap_to_cells([b.xyxy for b in boxes], grid, min_cells, max_cells)
        return replace(plan, layout=[Box(b.subject, b.instance, *xyxy) for b, xyxy in zip(boxes, snapped)])

    def grounding_text(self, grid: int, symbols: dict[str, str] | None = None) -> str:
        """The layout as a map the model reads cell by cell: `grid` rows of `grid` characters,
        each row ended by a newline, after "Layout:". A cell holds the symbol of the subject
        whose box covers it, or 0. A subject's symbol is `symbols["<colour> <noun>"]` (or
        `symbols["<noun>"]` without a colour) when the model declares one (config.json
        "uni1.grounding.symbols"), else its number (1-9, the ninth for any after it), named in
        a legend:

            Layout: two red circles (1), a blue square (2).
            00000000
            01110000
            ...

        Symbols and digits are single characters that the tokenizer keeps as one token each, so
        a map row has as many tokens as an image row (codes + row end). The map ends the prompt,
        so cell (r, c) of the map sits a fixed number of tokens before code (r, c) of the image:
        a model trained on such maps learns to look that far back, which is how the plan's
        counts and positions reach the picture."""
        plan = self._laid_out()
        symbols = symbols or {}
        marks, legend = [], []
        for i, s in enumerate(plan.subjects):
            key = f"{s.color} {s.noun}" if s.color else s.noun
            marks.append(symbols.get(key) or str(min(i + 1, 9)))
            if key not in symbols:
                legend.append(f"{plan.subject_phrase(i, with_position=False)} ({marks[-1]})")
        cells = [["0"] * grid for _ in range(grid)]
        for b in plan.layout:
            x0, y0, x1, y1 = (round(v * grid) for v in b.xyxy)
            for y in range(y0, y1):
                for x in range(x0, x1):
                    cells[y][x] = marks[b.subject]
        head = f"Layout: {', '.join(legend)}.\n" if legend else "Layout:\n"
        return head + "".join("".join(row) + "\n" for row in cells)

    def conditioning_text(self, grounding: int | None = None, symbols: dict[str, str] | None = None) -> str:
        """The text the model is conditioned on: explicit counts, colours, attributes, positions;
        with `grounding` (a grid size) followed by `grounding_text(grounding, symbols)`.

        Form: unrelated subjects first ("A cat and two dogs"), then one sentence per relation
        ("Two red circles are to the left of a blue square."; a subject already named is "the
        red circles"), the scene after the first sentence, the negatives ("No people, no text."),
        then style, composition and any text the parser did not understand, verbatim. (The
        negatives are said as the prompt said them, so that no word of it is lost;
        `negative_text()` also has them for a negative prompt.)
        """
        sentences: list[str] = []
        named: set[int] = set()
        in_relation = {r.subject for r in self.relations} | {r.object for r in self.relations} | {
            r.object2 for r in self.relations if r.object2 is not None}
        free = [i for i in range(len(self.subjects)) if i not in in_relation]
        if free:
            sentences.append(_join([self.subject_phrase(i) for i in free]))
            named.update(free)

        def ref(i: int) -> str:
            phrase = self.subject_phrase(i, definite=i in named)
            named.add(i)
            return phrase

        for r in self.relations:
            s = ref(r.subject)
            verb = "is" if self.subjects[r.subject].count == 1 else "are"
            if s.split()[-1].endswith(("ing", "ed")):     # "a cat sitting on a table" needs no verb
                verb = ""
            o = ref(r.object)
            if r.relation == "between":
                o += " and " + ref(r.object2)
            sentences.append(" ".join(filter(None, [s, verb, r.adverb, RELATION_TEXT[r.relation], o])))
        if self.scene:
            if sentences:
                sentences[0] += ", " + self.scene
            else:
                sentences.append(self.scene)
        # "no people", but not a stray "no dozen" (a negative without a content word)
        negatives = [f"no {n}" for n in self.negatives if not is_fragment(f"no {n}".lower().split())]
        if negatives:
            sentences.append(", ".join(negatives))
        style = [getattr(self.style, k) for k in STYLE_FIELDS if getattr(self.style, k)]
        if self.composition:
            style.append(self.composition)
        if style:
            sentences.append(", ".join(style))
        if self.unparsed:
            sentences.append(", ".join(u.strip() for u in self.unparsed))
        text = " ".join(_sentence(s) for s in sentences if s.strip())
        if grounding and self.subjects:
            text += " " + self.grounding_text(grounding, symbols)
        return text

    def negative_text(self) -> str:
        """The negatives as a comma list ("people, text"), for a negative prompt."""
        return ", ".join(self.negatives)

    def summary(self) -> str:
        """One short line for the node UI."""
        parts = [", ".join(f"{s.count or 'some'} {' '.join(filter(None, [s.color, s.noun]))}" for s in self.subjects)
                 or "no subjects"]
        if self.relations:
            parts.append("; ".join(
                f"{_short(self.subjects[r.subject])} {r.relation} {_short(self.subjects[r.object])}"
                + (f" and {_short(self.subjects[r.object2])}" if r.object2 is not None else "")
                for r in self.relations))
        if self.scene:
            parts.append(self.scene)
        style = ", ".join(x for x in [getattr(self.style, k) for k in STYLE_FIELDS] + [self.composition] if x)
        if style:
            parts.append(style)
        if self.negatives:
            parts.append("no " + ", ".join(self.negatives))
        if self.unparsed:
            parts.append(f"{len(self.unparsed)} unparsed")
        line = " | ".join(parts)
        return line if len(line) <= SUMMARY_MAX else line[:SUMMARY_MAX - 1].rstrip() + "…"

    def regions(self) -> list[tuple[str, tuple[float, float, float, float]]]:
        """(text, (x0, y0, x1, y1)) for every subject instance, for regional guidance."""
        plan = self._laid_out()
        # one box per instance; a plural without a number has one box for the group ("robots")
        return [(plan.subject_phrase(b.subject, one=plan.subjects[b.subject].count is not None,
                                     with_position=False), b.xyxy)
                for b in sorted(plan.layout, key=lambda b: (b.subject, b.instance))]


def make_plan(prompt: str) -> Plan:
    """Plan a prompt: deterministic, pure Python, no model.

    A relation that cannot hold together with the earlier ones (a prompt that contradicts
    itself) is moved, as written, into `unparsed` rather than silently dropped.
    """
    if not isinstance(prompt, str):
        raise PlanError(f"the prompt must be a string, got {type(prompt).__name__}")
    prompt = " ".join(prompt.split())
    if len(prompt) > MAX_PROMPT_CHARS:
        raise PlanError(f"the prompt has {len(prompt):,} characters; the planner reads at most {MAX_PROMPT_CHARS:,}. "
                        "Shorten it, or set conditioning to 'prompt' to give it to the model unplanned")
    data, rel_texts = parse_prompt(prompt)
    subjects = [Subject(s["noun"], s["count"], s["color"], s["attributes"]) for s in data["subjects"]]
    relations, rel_texts = _distinct_relations(data["relations"], rel_texts)
    _check_prompt_size(subjects, relations)
    plan = Plan(subjects=subjects, relations=relations, scene=data["scene"], style=Style(**data["style"]),
                composition=data["composition"], negatives=data["negatives"], unparsed=data["unparsed"],
                prompt=prompt)
    dropped: list[str] = []
    plan = _drop_contradictions(plan, rel_texts, dropped)
    # an absolute position the relations rule out ("a cat left of a dog, the cat on the right")
    # goes the same way
    for i in plan.position_violations():
        s = plan.subjects[i]
        dropped.extend(a for a in s.attributes if a in POSITIONS)
        subjects = list(plan.subjects)
        subjects[i] = replace(s, attributes=[a for a in s.attributes if a not in POSITIONS])
        plan = replace(plan, subjects=subjects)
    if dropped:
        plan = replace(plan, layout=_layout_boxes(plan), unparsed=plan.unparsed + dropped[::-1])
    return plan


def _distinct_relations(found: list[dict], texts: list[str]) -> tuple[list[Relation], list[str]]:
    """The parser's relations as Relation objects, each stated once ("a cat left of a dog, the
    cat left of the dog" says one thing twice; a repeat adds nothing to lay out)."""
    relations, kept, seen = [], [], set()
    for r, text in zip(found, texts):
        key = (r["subject"], r["object"], r["relation"], r.get("object2"))
        if key not in seen:
            seen.add(key)
            relations.append(Relation(*key, adverb=r.get("adverb", "")))
            kept.append(text)
    return relations, kept


def _check_prompt_size(subjects: list[Subject], relations: list[Relation]) -> None:
    """A prompt that names more objects than a layout can hold gets a message, not a slow plan."""
    if len(subjects) > MAX_SUBJECTS:
        raise PlanError(f"the prompt names {len(subjects)} separate objects; the planner lays out at most "
                        f"{MAX_SUBJECTS}. Merge repeats into counts ('five cats'), describe fewer objects, or "
                        "set conditioning to 'prompt' to give the prompt to the model unplanned")
    if len(relations) > MAX_RELATIONS:
        raise PlanError(f"the prompt states {len(relations)} spatial relations; the planner keeps at most "
                        f"{MAX_RELATIONS}. State fewer, or set conditioning to 'prompt' to give the prompt to "
                        "the model unplanned")
    instances = sum(s.instances for s in subjects)
    if instances > MAX_INSTANCES:
        raise PlanError(f"the prompt asks for {instances} objects in all; the planner lays out at most "
                        f"{MAX_INSTANCES}. Lower the counts")


# After this many layouts that each drop the last contradicting relation, all the relations that
# still fail are dropped at once: a prompt that contradicts itself a little keeps as much as it
# can, and one that contradicts itself everywhere still costs only a few layouts.
ONE_BY_ONE_DROPS = 3


def _drop_contradictions(plan: Plan, rel_texts: list[str], dropped: list[str]) -> Plan:
    """`plan` laid out, without the relations that cannot hold together with the earlier ones
    (their source text is appended to `dropped`, last first)."""
    rel_texts, passes = list(rel_texts), 0
    while True:
        plan = replace(plan, layout=_layout_boxes(plan))
        bad = plan.violations()
        if not bad:
            return plan
        drop = bad[-1:] if passes < ONE_BY_ONE_DROPS else bad
        passes += 1
        for i in reversed(drop):
            dropped.append(rel_texts.pop(i))
        gone = set(drop)
        plan = replace(plan, relations=[r for i, r in enumerate(plan.relations) if i not in gone])


def parse_llm_output(text: str) -> Plan:
    """Same as `Plan.from_text`."""
    return Plan.from_text(text)


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------

def _layout_boxes(plan: Plan) -> list[Box]:
    counts = [s.instances for s in plan.subjects]
    rels = [(r.subject, r.object, r.relation, r.object2) for r in plan.relations]
    boxes = compute_layout(counts, rels, plan.positions(), [s.attributes for s in plan.subjects])
    return [Box(i, k, *b) for i, bs in enumerate(boxes) for k, b in enumerate(bs)]


def _check_box(b, i: int, subjects: list[Subject], check_instance: bool = True) -> None:
    where, n = f"layout[{i}]", len(subjects)
    _check(isinstance(b, Box), lambda: f"{where} must be an object with subject, instance, x0, y0, x1, y1")
    _check(isinstance(b.subject, int) and not isinstance(b.subject, bool) and 0 <= b.subject < n,
           lambda: f"{where}.subject must be the index of a subject (0 to {n - 1}); got {b.subject!r}")
    cnt = subjects[b.subject].instances
    _check(isinstance(b.instance, int) and not isinstance(b.instance, bool)
           and 0 <= b.instance < (cnt if check_instance else MAX_COUNT),
           lambda: f"{where}.instance must be 0 to {cnt - 1} (subjects[{b.subject}].count is {cnt}); got {b.instance!r}")
    for name in ("x0", "y0", "x1", "y1"):
        v = getattr(b, name)
        _check(isinstance(v, (int, float)) and not isinstance(v, bool) and 0.0 <= v <= 1.0,
               lambda: f"{where}.{name} must be a number between 0 and 1; got {v!r}")
    _check(b.x0 < b.x1, lambda: f"{where}: x0 must be smaller than x1 (got {b.x0} >= {b.x1})")
    _check(b.y0 < b.y1, lambda: f"{where}: y0 must be smaller than y1 (got {b.y0} >= {b.y1})")


def _check(ok: bool, message) -> None:
    """Raise PlanError(message) unless ok; `message` may be a function, so that the text is only
    built on failure (validation runs on every plan the planner makes)."""
    if not ok:
        raise PlanError(message() if callable(message) else message)


def _list(data: dict, key: str) -> list:
    v = data.get(key, [])
    if v is None:
        v = []
    _check(isinstance(v, list), lambda: f"{key} must be a list [...] of {LIST_ITEMS[key]}, got {_json_kind(v)}")
    return v


LIST_ITEMS = {"subjects": 'subjects, e.g. [{"noun": "cat", "count": 2}]',
              "relations": 'relations, e.g. [{"subject": 0, "object": 1, "relation": "left of"}]',
              "layout": "boxes (or [] to lay out afresh)"}


def _json_kind(v) -> str:
    """What a JSON value is, in the words of a JSON reader: "an object", "a number"."""
    kinds = ((dict, "an object"), (str, "a string"), (bool, "true/false"), ((int, float), "a number"),
             (list, "a list"), (type(None), "null"))
    return next((name for t, name in kinds if isinstance(v, t)), type(v).__name__)


def _string(v, where: str) -> str:
    if v is None:
        return ""
    _check(isinstance(v, str), lambda: f"{where} must be a string; got {v!r}")
    return v


def _strings(v, where: str) -> list[str]:
    if v is None:
        return []
    _check(isinstance(v, list) and all(isinstance(x, str) for x in v), lambda: f"{where} must be a list of strings")
    return list(v)


def _fields(obj, where: str, cls, required: tuple[str, ...]) -> dict:
    _check(isinstance(obj, dict), lambda: f"{where} must be an object with {', '.join(f.name for f in fields(cls))}")
    names = {f.name for f in fields(cls)}
    unknown = sorted(set(obj) - names)
    _check(not unknown, lambda: f"unknown field {where}.{unknown[0]} (fields: {', '.join(sorted(names))})" if unknown else "")
    for r in required:
        _check(r in obj, lambda: f"{where}.{r} is missing")
    return obj


def _subject(obj, i: int) -> Subject:
    d = _fields(obj, f"subjects[{i}]", Subject, ("noun",))
    color = d.get("color")
    if isinstance(color, str):
        color = COLOR_ALIASES.get(color.strip().lower(), color.strip().lower()) or None
    attrs = d.get("attributes", [])
    _check(isinstance(attrs, list), lambda: f"subjects[{i}].attributes must be a list of strings, e.g. "
                                            f'["small", "wooden"]; got {_json_kind(attrs)}')
    return Subject(noun=d["noun"], count=d.get("count", 1), color=color, attributes=list(attrs))


def _relation(obj, i: int) -> Relation:
    d = _fields(obj, f"relations[{i}]", Relation, ("subject", "object", "relation"))
    rel = d["relation"]
    if isinstance(rel, str):
        rel = " ".join(rel.lower().replace("_", " ").split())
    return Relation(d["subject"], d["object"], rel, d.get("object2"), d.get("adverb") or "")


def _box(obj, i: int) -> Box:
    d = _fields(obj, f"layout[{i}]", Box, ("subject", "instance", "x0", "y0", "x1", "y1"))
    return Box(**d)


def _join(items: list[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def _sentence(s: str) -> str:
    s = s.strip()
    s = s[:1].upper() + s[1:]
    return s if s[-1:] in ".!?" else s + "."


def _short(s: Subject) -> str:
    return " ".join(filter(None, [s.color, s.noun]))
