"""The reasoner: a small instruct LLM (Qwen2.5 / Qwen3) thinks about a prompt, then writes the plan.

    reasoner = Reasoner.from_pretrained("models/LLM/Qwen3-1.7B", dtype="bfloat16", device="cuda")
    plan, thinking, detailed_prompt = reasoner.plan("a confused grizzly bear in calculus class")

It runs on the same `Uni1Model` network as the image model (see model.py), with text sampling
from textgen.py. Our system prompt (SYSTEM_PROMPT) asks for two things: a detailed description
of the picture in plain English (the "pre-thinking" caption of Lumina-mGPT 2.0's paper) and the
plan as JSON in the schema of plan.py (version 1). The answer is read by `Plan.from_text`:

1. a readable plan JSON is the plan, and the prose around it the detailed prompt;
2. an unreadable answer (no plan JSON, broken or cut-off JSON, a plan that fails validation,
   an empty answer) gets ONE retry, whose user turn quotes the error;
3. after that the rule planner (`make_plan`) plans the prompt, and the result says so in
   `messages`: the fallback is never silent.

The rule plan's certain facts (counts, colours, positions, spatial relations) are then checked
against the model's plan, and every disagreement is listed in `disagreements` (not corrected:
the user sees both and decides).
"""
from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from .chat import ChatFormat
from .layout import relation_holds
from .plan import Plan, PlanError, make_plan
from .lexicon import BASIC_COLORS, MAX_COUNT, POSITIONS, RELATIONS, singular
from .llm_answer import LLMAnswerError, json_objects, read_answer as read_llm_answer
from .textgen import Completion, TextGenerator, TextSettings

log = logging.getLogger("uni1")

_EXAMPLE_PLAN = {
    "version": 1,
    "subjects": [{"noun": "circle", "count": 2, "color": "red", "attributes": ["glossy"]},
                 {"noun": "square", "count": 1, "color": "blue", "attributes": ["large"]}],
    "relations": [{"subject": 0, "object": 1, "relation": "left of"}],
    "scene": "a plain light gray background",
    "style": {"medium": "flat vector illustration", "lighting": "soft even light", "camera": "front view",
              "mood": "calm"},
    "composition": "centered, generous margins",
    "negatives": ["text", "shadows"],
}
SYSTEM_PROMPT = f"""You plan pictures for an image generator. The user gives a prompt. Think about what a good picture of it needs, then answer in exactly two parts:

Description: one paragraph of 40 to 120 words that describes the finished picture in plain English: every object with its count, colour, size and place, the setting, the light and the style. Keep everything the prompt asks for exactly (counts, colours, positions); add only what makes the picture clear.

Then the plan, as one JSON object in a ```json block, with these fields:
- "subjects": the objects. "noun" is a singular noun phrase; "count" a whole number from 1 to {MAX_COUNT}; "color" is null or one of: {", ".join(BASIC_COLORS)} (other colour words go in "attributes"); "attributes" is a list of short phrases. An absolute place goes in "attributes" as one of: {", ".join(POSITIONS)}.
- "relations": where objects are relative to each other. "subject" and "object" are indexes into "subjects"; "relation" is one of: {", ".join(RELATIONS)}; "between" also needs "object2".
- "scene", "composition": short phrases. "style": "medium", "lighting", "camera", "mood". "negatives": what must not appear.
Do not write a layout: it is computed from the plan. Write nothing after the JSON block.

Example, for the prompt "two red circles to the left of a blue square":
Description: Two small glossy red circles sit side by side on the left half of a plain light gray background, to the left of one large blue square on the right half. Flat vector illustration, soft even light, seen straight on, with generous empty margins.
```json
{json.dumps(_EXAMPLE_PLAN)}
```"""
FALLBACK = "rules (fallback)"
RETRY_PROMPT = ("Your answer could not be read: {error}. Answer again in the two parts asked for: the "
                "Description paragraph, then the plan as one ```json block that follows the rules.")

_FENCED = re.compile(r"```[ \t]*[A-Za-z0-9_-]*[ \t]*\n?.*?(?:```|$)", re.S)
_LABEL = re.compile(r"^\s*(?:\*\*|__|#+\s*)?\s*(?:detailed\s+)?(?:description|caption|plan)\s*(?:\*\*|__)?\s*:?\s*"
                    r"(?:\*\*|__)?\s*", re.I)


@dataclass
class ReasonedPlan:
    """What the reasoner decided. Unpacks as (plan, thinking, detailed_prompt)."""
    plan: Plan
    thinking: str
    detailed_prompt: str
    source: str                    # "model", "rules (fallback)" or (the node's choice) "rules"
    messages: list[str] = field(default_factory=list)        # retries, fallback, cut thinking: shown to the user
    disagreements: list[str] = field(default_factory=list)   # the prompt's certain facts the model's plan breaks
    attempts: list[Completion] = field(default_factory=list)

    def __iter__(self):
        return iter((self.plan, self.thinking, self.detailed_prompt))

    @property
    def fell_back(self) -> bool:
        return self.source == FALLBACK

    def report(self) -> str:
        """A few lines for a console or a node: where the plan came from and what to look at."""
        lines = [f"plan from: {self.source}"] + [f"note: {m}" for m in self.messages]
        lines += [f"disagrees with the prompt: {d}" for d in self.disagreements]
        return "\n".join(lines)


class Reasoner:
    """Plans prompts with a chat model. `generator` has `complete(messages, settings, on_progress,
    should_cancel) -> Completion` (a TextGenerator, or a stand-in in tests)."""

    def __init__(self, generator, name: str = "", settings: TextSettings | None = None):
        self.generator, self.name = generator, name
        self.settings = settings or TextSettings(temperature=0.6)

    @classmethod
    def from_pretrained(cls, folder_or_repo_id: str | os.PathLike, dtype="auto", device="cpu",
                        quantize: str | None = None, cache_dir=None) -> "Reasoner":
        """Load a Qwen2 / Qwen2.5-Instruct / Qwen3 folder (or Hugging Face repo id)."""
        from .checkpoint import resolve_model_dir
        from .model import Uni1Model
        from .tokenizer import TextTokenizer

        folder = resolve_model_dir(folder_or_repo_id, cache_dir=cache_dir)
        tokenizer = TextTokenizer.from_dir(folder)
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        chat_format = ChatFormat.for_model(model_type, tokenizer.added_by_content, _chat_template(folder))
        # quantize "int8" | "int4": the image model's weight quantisation (quantize.py), with every
        # row of the head quantised (text sampling reads them all) and the embedding kept as it is
        model = Uni1Model.from_pretrained(folder, dtype=dtype, device=device, quantize=quantize, lm_head="full",
                                          embedding="keep")
        return cls(TextGenerator(model, tokenizer, chat_format), name=Path(folder).name)

    def plan(self, prompt: str, settings: TextSettings | None = None, on_progress=None,
             should_cancel=None) -> ReasonedPlan:
        """Think, answer, read the answer (one retry), else fall back to the rule planner."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise PlanError("the prompt is empty: describe the image to generate")
        settings = settings or self.settings
        messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": prompt.strip()}]
        attempts, notes, error = [], [], ""
        for attempt in range(2):
            done = self.generator.complete(messages, settings, on_progress=on_progress, should_cancel=should_cancel)
            attempts.append(done)
            if done.thinking_cut:
                notes.append(f"the thinking reached its budget ({settings.max_thinking_tokens} tokens) and was "
                             "closed for the model")
            try:
                plan, description = read_answer(done.answer)
            except PlanError as exc:
                error = str(exc)
                if not done.finished:
                    error += f" (the answer was cut off at the budget of {settings.max_new_tokens} tokens)"
                if attempt == 0:
                    notes.append(f"the first answer could not be read ({error}); asked again")
                    messages += [{"role": "assistant", "content": done.answer},
                                 {"role": "user", "content": RETRY_PROMPT.format(error=error)}]
                continue
            if not description:
                notes.append("the model wrote no description; the detailed prompt is the plan's own text")
                description = plan.conditioning_text()
            # the plan's words are the detailed description: conditioning "prompt" reads it, and
            # "prompt+plan" adds the plan's certainties to it
            plan = replace(plan, prompt=" ".join(description.split()))
            return ReasonedPlan(plan, _thinking(attempts), description, "model", notes,
                                compare_facts(make_plan(prompt), plan), attempts)
        plan = make_plan(prompt)
        message = (f"the reasoning model's answer could not be read twice (last error: {error}); "
                   "the rule planner made this plan instead")
        log.warning("uni1: %s", message)
        return ReasonedPlan(plan, _thinking(attempts), plan.conditioning_text(), FALLBACK,
                            notes + [message], [], attempts)


def read_answer(answer: str) -> tuple[Plan, str]:
    """(plan, description) from the answer text (thinking already removed); PlanError naming
    what is wrong when it cannot be used. The plan must be JSON: a prose answer is not a plan
    (the rules would find nouns in anything, even a random model's word salad)."""
    if not answer.strip():
        raise PlanError("the answer is empty")
    try:
        payload = read_llm_answer(answer)
    except ValueError as exc:
        raise PlanError(str(exc)) from None
    if not isinstance(payload, dict):
        if '"subjects"' in answer or "```json" in answer.lower():
            raise PlanError("the answer starts a plan JSON but it is incomplete or not valid JSON (no closed "
                            "object with \"subjects\")")
        raise PlanError("the answer has no plan JSON (a ```json block with \"subjects\")")
    plan = Plan.from_answer(payload)                    # the answer is read once
    try:
        described = next((o["description"] for o in json_objects(answer)
                          if "subjects" in o and isinstance(o.get("description"), str)), None)
    except LLMAnswerError:             # more JSON after the plan, nested too deep: no description field
        described = None
    return plan, described.strip() if described is not None else _description(answer)


def _description(answer: str) -> str:
    """The prose of an answer: without fenced blocks, bare JSON objects and part labels."""
    text = _FENCED.sub("\n", answer)
    decoder, kept, i = json.JSONDecoder(), [], 0
    while (j := text.find("{", i)) != -1:           # cut out bare JSON objects
        try:
            _, end = decoder.raw_decode(text, j)
        except (ValueError, RecursionError):     # not JSON, or nested past Python's limit: prose
            kept.append(text[i:j + 1])
            i = j + 1
            continue
        kept.append(text[i:j])
        i = end
    text = "".join(kept) + text[i:]
    lines = [_LABEL.sub("", ln).strip() for ln in text.splitlines()]
    return " ".join(ln for ln in lines if ln).replace("**", "").strip()


def _thinking(attempts: list[Completion]) -> str:
    parts = [a.thinking for a in attempts if a.thinking]
    return "\n\n--- retry ---\n\n".join(parts)


def _chat_template(folder: Path) -> str | None:
    """The folder's Jinja chat template (only searched for markers by ChatFormat.for_model)."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        return template if isinstance(template, str) else None
    return None


# ---------------------------------------------------------------------------------------------
# the prompt's certain facts against the model's plan

def compare_facts(rules: Plan, model: Plan) -> list[str]:
    """What the rule plan knows for certain (each subject's count, colour and absolute position,
    and the spatial relations the prompt states) that the model's plan contradicts or lacks."""
    out = []
    match = {}
    for i, s in enumerate(rules.subjects):
        j = _match_subject(s, model)
        if j is None:
            out.append(f"the prompt has {_name(s)}, the model's plan has no {s.noun}")
            continue
        match[i] = j
        got = model.subjects[j]
        if got.count != s.count:
            out.append(f"count of {s.noun}: the prompt says {s.count}, the model's plan {got.count}")
        if s.color is not None and got.color != s.color:
            out.append(f"colour of {s.noun}: the prompt says {s.color}, the model's plan {got.color or 'none'}")
        want, have = rules.positions()[i], model.positions()[j]
        if want != (None, None) and want != have:
            place = [a for a in s.attributes if a in POSITIONS][-1]
            out.append(f"place of {s.noun}: the prompt says {place!r}, the model's plan does not")
    laid_out = model if model.layout else model.with_layout()
    for r in rules.relations:
        ids = [match.get(k) for k in (r.subject, r.object, r.object2) if k is not None]
        if None in ids:
            continue                                    # a missing subject is already listed
        o2 = laid_out.boxes_of(ids[2]) if len(ids) == 3 else None
        if not relation_holds(r.relation, laid_out.boxes_of(ids[0]), laid_out.boxes_of(ids[1]), o2):
            out.append(f"the prompt says the {rules.subjects[r.subject].noun} is {r.relation} the "
                       f"{rules.subjects[r.object].noun}; the model's plan does not place them so")
    return out


def _match_subject(s, plan: Plan) -> int | None:
    """The model's subject for a rule subject: same noun head, preferring the same colour."""
    head = singular(s.noun.split()[-1].lower())
    same = [j for j, t in enumerate(plan.subjects) if singular(t.noun.split()[-1].lower()) == head]
    if not same:
        return None
    coloured = [j for j in same if plan.subjects[j].color == s.color]
    return (coloured or same)[0]


def _name(s) -> str:
    return " ".join(x for x in (str(s.count), s.color, s.noun) if x)
