"""Reading another language model's answer: a plan JSON or a rewritten prompt.

A ComfyUI graph may hold any LLM or prompt-enhancer node before the planner. Its answer is free
text: reasoning in <think>...</think> blocks, a preface ("Sure! Here is an enhanced prompt:"),
a ```json fenced block, a plan in a schema of its own making. `read_answer` digs out what
matters, either a plan dictionary (already put into this project's plan schema where its
meaning is clear) or the rewritten prompt; `Plan.from_text` then validates the first or plans
the second.

Every step here is linear in the length of the answer (no regular expression that backtracks
over a long run of spaces, no rescanning from every "{"), so that a hostile or runaway answer
costs milliseconds, and JSON nested too deep is an `LLMAnswerError`, not a RecursionError.
"""

from __future__ import annotations

import json
import re

from .plan_parse import BASIC_COLORS, COLOR_ALIASES, RELATION_PHRASES, RELATIONS, _match, parse_count, singular, tokenize

MAX_ANSWER_CHARS = 200_000      # a long reasoning trace fits; a runaway generation is refused
MAX_JSON_STARTS = 64            # "{" positions tried as the start of a JSON object
_REASONING_TAGS = ("thinking", "think", "thought", "reasoning", "analysis", "reflection", "scratchpad")
_TAG_RE = re.compile(rf"<(/?)({'|'.join(_REASONING_TAGS)})\b[^<>]{{0,200}}>", re.I)
_FENCE_HEAD_RE = re.compile(r"[ \t]*([A-Za-z0-9_-]*)[ \t]*\n?")     # after ```: "json\n"
# A preface line starts with one of these words and ends with ":" ("Here is the enhanced prompt:").
_PREFACE_HEAD_RE = re.compile(
    r"(?:\*\*|__)?\s*(?:sure|okay|ok|certainly|of course|here(?:'s| is| are)?|"
    r"(?:the\s+)?(?:(?:enhanced|improved|rewritten|revised|refined|expanded|final|new|detailed|optimi[sz]ed)\s*)?"
    r"(?:image\s+)?(?:prompt|caption|description|answer|output|result|plan))\b", re.I)
# A label before the prompt on its own line ("**Prompt:** a cat"). One whitespace run between
# each part, so that a long run of spaces costs one pass.
_LABEL_RE = re.compile(
    r"(?:(?:\*\*|__)\s*)?(?:(?:enhanced|improved|rewritten|revised|refined|expanded|final|new|detailed|"
    r"optimi[sz]ed)\s+)?(?:image\s+)?(?:prompt|caption|description|answer|output)\s*(?:(?:\*\*|__)\s*)?:"
    r"\s*(?:(?:\*\*|__)\s*)?", re.I)
TOO_DEEP = "the model's answer holds JSON nested too deep to be a plan; ask it for a flat plan JSON"
PROMPT_KEYS = ("prompt", "rewritten_prompt", "enhanced_prompt", "caption", "description", "text")


class LLMAnswerError(ValueError):
    """Another model's answer that cannot be read; the message says why and what to ask for."""


def strip_reasoning(text: str) -> str:
    """Remove <think>...</think> (and similar) blocks in one pass over the tags.

    A closing tag without its opening (the opening was in the chat template) ends the
    reasoning: everything before it goes. An opening tag that is never closed (the model
    stopped while thinking) starts it: everything after it goes.
    """
    kept: list[str] = []
    start = 0                   # where the text being kept begins
    open_tag: str | None = None
    for m in _TAG_RE.finditer(text):
        closing, name = m.group(1) == "/", m.group(2).lower()
        if open_tag is None and not closing:
            kept.append(text[start:m.start()])
            open_tag = name
        elif open_tag is None:                          # a stray closing tag
            kept, start = [], m.end()
        elif closing and name == open_tag:              # the end of a block
            kept.append(" ")
            open_tag, start = None, m.end()
    if open_tag is None:
        kept.append(text[start:])
    return "".join(kept).strip()


def fenced_blocks(text: str) -> list[tuple[str, str]]:
    """(language, content) of every ```fenced``` block, in order (str.find, never a backtracking
    pattern: an unclosed fence before a long run of spaces costs one pass)."""
    blocks = []
    i = text.find("```")
    while i != -1:
        head = _FENCE_HEAD_RE.match(text, i + 3)
        end = text.find("```", head.end())
        if end == -1:
            break
        blocks.append((head.group(1), text[head.end():end]))
        i = text.find("```", end + 3)
    return blocks


def json_objects(text: str):
    """The JSON objects in `text`, in order, each parsed from one of its first MAX_JSON_STARTS
    "{" (a parse that fails moves on to the next "{")."""
    decoder = json.JSONDecoder()
    i, tries = text.find("{"), 0
    while i != -1 and tries < MAX_JSON_STARTS:
        tries += 1
        try:
            obj, end = decoder.raw_decode(text, i)
        except ValueError:
            i = text.find("{", i + 1)
            continue
        except RecursionError:
            raise LLMAnswerError(TOO_DEEP) from None
        if isinstance(obj, dict):
            yield obj
        i = text.find("{", end)


def read_answer(text: str) -> dict | str:
    """The plan dictionary (in the plan schema), or the rewritten prompt, in another model's answer.

    Reasoning blocks (<think>...</think>) are removed first; then a ```json fenced block or the
    first JSON object with "subjects" wins; a JSON object with a "prompt"-like string field gives
    that string; otherwise the answer itself is the prompt, without prefaces ("Here is the
    enhanced prompt:"), labels ("Prompt:"), markdown emphasis or surrounding quotes.
    """
    if not isinstance(text, str):
        raise LLMAnswerError(f"the model's answer must be text, got {type(text).__name__}")
    if len(text) > MAX_ANSWER_CHARS:
        raise LLMAnswerError(f"the model's answer has {len(text):,} characters; at most {MAX_ANSWER_CHARS:,} are "
                             "read. Limit the model's output length")
    body = strip_reasoning(text)
    fences = fenced_blocks(body)
    for chunk in [content for _, content in fences] + [body]:
        for obj in json_objects(chunk):
            if "subjects" in obj:
                return normalise_plan_dict(obj)
            for key in PROMPT_KEYS:
                if isinstance(obj.get(key), str) and obj[key].strip():
                    return obj[key].strip()
    repaired = _repaired_plan(body, fences)
    if repaired is not None:
        return normalise_plan_dict(repaired)
    if fences:
        body = fences[0][1]
    prompt = _bare_prompt(body)
    if not prompt:
        raise LLMAnswerError("the model's answer holds no prompt and no plan (only reasoning, or nothing); let "
                             "it finish its answer (raise its output length) or check what it was asked")
    return prompt


def _repaired_plan(body: str, fences: list[tuple[str, str]]) -> dict | None:
    """A JSON block with the usual slips (trailing commas, // comments) that holds a plan; a
    JSON block that does not parse even so is an error (its plan must not be read as a prompt)."""
    looks_like_json = [content for lang, content in fences
                       if lang.lower() == "json" or content.lstrip().startswith("{")]
    if not fences and body.lstrip().startswith("{"):
        looks_like_json = [body]
    for chunk in looks_like_json:
        obj = next(json_objects(_without_comments(chunk)), None)
        if obj is not None and "subjects" in obj:
            return obj
        if obj is None:
            try:
                json.loads(chunk)
            except json.JSONDecodeError as exc:
                raise LLMAnswerError(f"the model's answer has a JSON block that is not valid JSON ({exc.msg} at "
                                     f"line {exc.lineno} column {exc.colno}); ask it for plain JSON or fix the "
                                     "block") from None
            except RecursionError:
                raise LLMAnswerError(TOO_DEEP) from None
    return None


def _without_comments(text: str) -> str:
    """The usual slips of a language model writing JSON repaired: a // comment after the last
    quote of a line, and trailing commas."""
    lines = []
    for line in text.split("\n"):
        comment = line.find("//", line.rfind('"') + 1)
        lines.append(line if comment == -1 else line[:comment])
    return re.sub(r",(\s*[}\]])", r"\1", "\n".join(lines))


def _bare_prompt(body: str) -> str:
    lines = body.splitlines()
    last_text = max((k for k, ln in enumerate(lines) if ln.strip()), default=-1)
    # drop a preface line ("Sure! Here is an enhanced prompt:") and what came before it
    for k, ln in enumerate(lines[:last_text]):
        line = ln.strip()
        while line.endswith(("**", "__")):
            line = line[:-2].rstrip()
        if line.endswith(":") and _PREFACE_HEAD_RE.match(line):
            lines = lines[k + 1:]
            break
    out = "\n".join(lines).strip()
    label = _LABEL_RE.match(out)
    if label:
        out = out[label.end():].strip()
    out = out.replace("**", "").replace("__", "").strip()
    if len(out) >= 2 and out[0] == out[-1] and out[0] in "\"'“”":
        out = out[1:-1].strip()
    return out.strip("“”").strip()



# ---------------------------------------------------------------------------------------------
# Another model's plan JSON, in this schema
# ---------------------------------------------------------------------------------------------

STYLE_FIELDS = ("medium", "lighting", "camera", "mood")


def normalise_plan_dict(data: dict) -> dict:
    """Another model's plan JSON, put into this schema where its meaning is clear.

    Plural or capitalised nouns, counts as strings or words, colour names outside the basic
    set, relation phrasings ("to the left of", "left_of"), subjects named instead of indexed, a
    style given as one string: all are normalised. Fields this schema does not have (often the
    model's reasoning) are left out, so they never reach the conditioning text. A value of the
    wrong kind (subjects given as one object, attributes as a number) is passed on unchanged,
    for `Plan.from_json` to name.
    """
    out: dict = {k: data[k] for k in ("version", "prompt", "scene", "composition", "layout") if k in data}
    subjects = data.get("subjects")
    if isinstance(subjects, list):
        subjects = [_subject(s) for s in subjects]
    out["subjects"] = subjects
    relations = data.get("relations")
    if isinstance(relations, list):
        nouns = [s.get("noun") if isinstance(s, dict) else None for s in (subjects if isinstance(subjects, list) else [])]
        heads = [n.split()[-1] if isinstance(n, str) and n.split() else None for n in nouns]
        relations = [_relation(r, heads) for r in relations]
    if relations is not None:
        out["relations"] = relations
    style = data.get("style")
    if isinstance(style, str):
        style = {"medium": style}
    if isinstance(style, dict):
        out["style"] = {k: v for k, v in style.items() if k in STYLE_FIELDS}
    elif style is not None:
        out["style"] = style
    for key in ("negatives", "unparsed"):
        v = data.get(key)
        if isinstance(v, str):
            v = [x.strip() for x in v.split(",") if x.strip()]
        if v is not None:
            out[key] = v
    return out


def _subject(s):
    if isinstance(s, str):
        s = {"noun": s}
    if not isinstance(s, dict):
        return s
    s = {k: s[k] for k in ("noun", "count", "color", "attributes") if k in s}
    attributes = s.get("attributes", [])
    if isinstance(attributes, str):
        attributes = [attributes]
    elif attributes is None:
        attributes = []
    elif isinstance(attributes, list):
        attributes = list(attributes)
    color = s.get("color")
    if isinstance(color, str):
        color = COLOR_ALIASES.get(color.strip().lower(), color.strip().lower()) or None
        if color is not None and color not in BASIC_COLORS:
            if isinstance(attributes, list):
                attributes.insert(0, color)
            color = None
    noun = s.get("noun")
    if isinstance(noun, str):
        words = noun.strip().lower().split()
        while words and words[0] in ("a", "an", "the"):
            words = words[1:]
        while len(words) > 1 and COLOR_ALIASES.get(words[0], words[0]) in BASIC_COLORS and color is None:
            color = COLOR_ALIASES.get(words[0], words[0])
            words = words[1:]
        if words:
            words[-1] = singular(words[-1])
        noun = " ".join(words)
    count = s.get("count", 1)
    if isinstance(count, str):
        toks = tokenize(count)
        parsed = parse_count(toks, 0) if toks else None
        count = parsed[0] if parsed and parsed[1] == len(toks) else count
    elif isinstance(count, float) and count.is_integer():
        count = int(count)
    return {"noun": noun, "count": count, "color": color, "attributes": attributes}


def _relation(r, heads: list[str | None]):
    if not isinstance(r, dict):
        return r
    r = {k: r[k] for k in ("subject", "object", "relation", "object2", "adverb") if k in r}
    for key in ("subject", "object", "object2"):
        v = r.get(key)
        if isinstance(v, str) and v.strip().isdigit():
            r[key] = int(v)
        elif isinstance(v, str) and v.split():
            head = singular(v.strip().lower().split()[-1])
            if head in heads:
                r[key] = heads.index(head)
    rel = r.get("relation")
    if isinstance(rel, str):
        toks = tokenize(rel.replace("_", " "))
        m = _match(toks, 0, RELATION_PHRASES) if toks else None
        if m and m[0] == len(toks):
            r["relation"] = m[1]
        elif rel.replace("_", " ").strip().lower() in RELATIONS:
            r["relation"] = rel.replace("_", " ").strip().lower()
    return r
