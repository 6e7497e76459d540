"""The text a model reads: the user's prompt, the plan, or the prompt with the plan's certainties.

One setting, `conditioning`, names the choice everywhere (API, CLI, nodes):

- "prompt+plan": the user's prompt verbatim (whitespace normalised), then short statements of
  what the plan is certain of: exact counts as the prompt wrote them ("Exactly three cats.") and
  left/right/above/below between objects the prompt names ("The cat is to the left of the
  dog."). Nothing is invented (every word of a statement is the prompt's or the template's),
  nothing is lost (the prompt comes first, whole), no fragments (statements are whole sentences
  or absent). The default for models trained on natural captions (Lumina-mGPT 2.0): the plan
  only adds to their own language.
- "plan": the plan's canonical sentence (`Plan.conditioning_text`), the caption language of a
  model trained on it (the demo model, whose default it is).
- "prompt": the prompt exactly as typed, unplanned (a plan's prompt, whitespace normalised).

A model that declares grounding (config.json "uni1.grounding") also reads the layout map after
the text, for "prompt+plan" and "plan".
"""

from __future__ import annotations

from .plan import Plan, PlanError, make_plan
from .plan_parse import FUNCTION_WORDS, NUMBER_WORDS, RELATION_TEXT, TENS_WORDS, parse_count, plural, singular, tokenize

CONDITIONINGS = ("prompt+plan", "prompt", "plan")
STATED_RELATIONS = ("left of", "right of", "above", "below")
MAX_WORDS_BEFORE_NOUN = 3      # "three small red cats": the count, then at most three words, then the noun


def default_conditioning(uni1: dict) -> str:
    """A model folder's choice (config.json "uni1.conditioning"), else "plan" for a model trained
    on the plan's own grounded captions and "prompt+plan" for any other."""
    choice = uni1.get("conditioning") or ("plan" if uni1.get("grounding") else "prompt+plan")
    return check_conditioning(choice)


def check_conditioning(choice: str) -> str:
    if choice not in CONDITIONINGS:
        raise ValueError(f"conditioning must be one of {', '.join(CONDITIONINGS)}; got {choice!r}")
    return choice


def model_text(source: str | Plan, choice: str, grounding: dict | None = None) -> tuple[Plan | None, str]:
    """(the plan as the model reads it, or None for "prompt"; the text it is conditioned on).

    `source` is a prompt (planned here unless the choice is "prompt") or a plan. `grounding` is
    a model's {"grid", "min_cells", "max_cells", "symbols"}: the layout is then snapped to its grid
    and written as a map after the text.
    """
    check_conditioning(choice)
    if choice == "prompt":
        text = source.prompt if isinstance(source, Plan) else str(source)       # as typed
        if not text.strip():
            raise PlanError("conditioning 'prompt' needs the user's prompt, and this plan has none (it was "
                            "written as JSON): use 'plan' or 'prompt+plan'")
        return (source if isinstance(source, Plan) else None), text
    plan = source if isinstance(source, Plan) else make_plan(source)
    if grounding:
        plan = plan.on_grid(grounding["grid"], grounding.get("min_cells", 1), grounding.get("max_cells"))
    text = augmented_prompt(plan) if choice == "prompt+plan" else plan.conditioning_text()
    if grounding and plan.subjects:
        text += " " + plan.grounding_text(grounding["grid"], grounding.get("symbols"))
    return plan, text


def augmented_prompt(plan: Plan) -> str:
    """The plan's prompt verbatim, then its statements; a plan without a prompt (written as JSON
    or built from data) has only its canonical sentence to give."""
    if not plan.prompt:
        return plan.conditioning_text()
    statements = plan_statements(plan)
    if not statements:
        return plan.prompt
    end = "" if plan.prompt.endswith((".", "!", "?")) else "."
    return f"{plan.prompt}{end} " + " ".join(statements)


def plan_statements(plan: Plan) -> list[str]:
    """Short sentences of what the plan is certain of, in the prompt's own words."""
    return count_statements(plan) + relation_statements(plan)


def count_statements(plan: Plan) -> list[str]:
    """ "Exactly three cats." for each subject whose count (2 or more) the prompt wrote as a number
    or an exact quantity right before the noun; the words are the prompt's, from count to noun."""
    toks = tokenize(plan.prompt)
    out = []
    for s in plan.subjects:
        if s.count is None or s.count < 2:      # one, or a plural without a number
            continue
        span = _count_span(plan.prompt, toks, s.count, s.noun.split()[-1])
        if span:
            sentence = f"Exactly {span[:1].lower() + span[1:] if not span[:2].isupper() else span}."
            if sentence not in out:
                out.append(sentence)
    return out


def _count_span(prompt: str, toks, count: int, head: str) -> str | None:
    for i, tok in enumerate(toks):
        found = parse_count(toks, i) if tok.word else None
        if not found or found[0] != count or not _exact(toks[i:i + found[1]]):
            continue
        for j in range(i + found[1], min(len(toks), i + found[1] + MAX_WORDS_BEFORE_NOUN + 1)):
            if not toks[j].word or (toks[j].low in FUNCTION_WORDS and singular(toks[j].low) != head):
                break        # "two tables and two boys": the count of "tables" is not the boys'
            if toks[j].low != head and singular(toks[j].low) == head:      # the plural of the noun
                return prompt[tok.start:toks[j].end]
    return None


def _exact(count_toks) -> bool:
    """Digits or number words: "a pair of", "a dozen" are exact too, but already as explicit as
    a statement could make them ("Exactly a dozen eggs" adds nothing)."""
    first = count_toks[0].low
    return first.isdigit() or first in NUMBER_WORDS or first in TENS_WORDS or first.partition("-")[0] in TENS_WORDS


def relation_statements(plan: Plan) -> list[str]:
    """ "The cat is to the left of the dog." for each left/right/above/below relation that the
    prompt only implies ("on the left a cat, on the right a dog", "a lamp over a table") between
    two subjects it names unambiguously (every word of each name is in the prompt, and no other
    subject has the same name)."""
    toks = tokenize(plan.prompt)
    words = {t.low for t in toks}
    names = [_name(s, words) for s in plan.subjects]
    out = []
    for r in plan.relations:
        if r.relation not in STATED_RELATIONS or _stated(toks, plan, r):
            continue
        a, b = names[r.subject], names[r.object]
        if not a or not b or names.count(a) > 1 or names.count(b) > 1:
            continue
        verb = "is" if plan.subjects[r.subject].count == 1 else "are"
        sentence = f"The {a} {verb} {RELATION_TEXT[r.relation]} the {b}."
        if sentence not in out:
            out.append(sentence)
    return out


def _stated(toks, plan: Plan, r) -> bool:
    """The prompt already says it: the subject's noun, the relation's word ("left", "above"),
    then the object's noun, in one clause."""
    key = r.relation.split()[0]
    heads = (plan.subjects[r.subject].noun.split()[-1], key, plan.subjects[r.object].noun.split()[-1])
    step = 0
    for t in toks:
        if not t.word and t.low in ".;!?\n":
            step = 0
        elif singular(t.low) == heads[step] or t.low == heads[step]:
            step += 1
            if step == 3:
                return True
    return False


def _name(s, prompt_words: set[str]) -> str | None:
    """ "red circles": the colour (when the prompt says it) and the noun, as the prompt words it."""
    noun = s.noun if s.count == 1 else plural(s.noun)
    if not all(w in prompt_words for w in noun.split()):
        return None
    return f"{s.color} {noun}" if s.color and s.color in prompt_words else noun
