"""Prompt fidelity of the planner on real prompts that nobody here wrote.

    python bench/prompt_fidelity.py                 # every corpus under bench/data/
    python bench/prompt_fidelity.py --show lost     # also list the prompts that fail a check

Corpora (see bench/data/README.md for sources and licences): GenEval's 553 templated prompts with
their metadata, PartiPrompts' 1,632 free-form prompts, and T2I-CompBench's validation prompts.

Three views of each prompt are measured:

    plan         the plan itself: subjects (noun, count, colour, attributes), relations, scene,
                 style, composition, negatives and `unparsed`
    sentence     `plan.conditioning_text()`, the canonical plan sentence a grounded model reads
                 (conditioning "plan")
    prompt+plan  `conditioning.augmented_prompt(plan)`: the prompt verbatim and the plan's
                 statements, what a model without grounding reads by default

and for each view, per corpus, the share of prompts with

    lost      a content word of the prompt that the view does not hold. Content words are the
              prompt's word tokens minus `lexicon.GRAMMAR_WORDS` (articles, pronouns,
              prepositions, conjunctions, auxiliaries, number and quantity words, the position
              and relation words whose meaning the plan keeps as a relation or position, and
              words for the picture itself: "image", "showing"). A word is held when one of its
              forms (as typed, singular, grey/gray, or the same crude stem: "sits" and
              "sitting") is a whole word of the view (for the plan: of any of its strings or
              relation names).
    invented  a count the prompt never gave. Plan: a subject whose count is 2 or more and not
              a number the prompt states (digits, number words, "pair", "couple", "both",
              "twin", "trio", "dozen"; vague words such as "some" or "many" state none).
              Sentence and prompt+plan: a number of 2 or more written in the text that the
              prompt does not state.
    fragment  a stray piece of text (`lexicon.is_fragment`): a chunk (text between . , ; : ! ?
              before a space, or line breaks) that ends in a word needing a complement (an
              article, a preposition, a conjunction, a copula), or has no content word and does
              not end in a place, "view" or a reflexive ("in the corner", "by itself" stand);
              unless it is a chunk of the prompt, or inside a chunk of the prompt that is
              itself such a piece. Plan: the chunks of `unparsed`; sentence, prompt+plan: the
              chunks of the text.

plus crashes (an exception from `make_plan` or `conditioning_text`), the share of prompts with
anything in `unparsed`, the planner's milliseconds per prompt (`make_plan` alone) on this CPU,
and for GenEval the share of plans that match the metadata exactly: one subject per `include` entry with its class,
count and colour (none when the metadata gives none), the stated position as a relation, and
no other subject.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from uni1_core.conditioning import augmented_prompt  # noqa: E402
from uni1_core.lexicon import (COLOR_ALIASES, GRAMMAR_WORDS, NUMBER_WORDS, TENS_WORDS,  # noqa: E402
                               is_fragment, singular)
from uni1_core.plan import make_plan  # noqa: E402
from uni1_core.plan_parse import tokenize  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"

# Numbers a prompt states: number words, digits, and these quantity words.
QUANTITY_WORDS = {"pair": 2, "couple": 2, "both": 2, "twin": 2, "twins": 2, "trio": 3, "dozen": 12}


# ---------------------------------------------------------------------------------------------
# the checks (tests/test_plan_fidelity.py uses them as properties)
# ---------------------------------------------------------------------------------------------

def words(text: str) -> list[str]:
    """The lower-case word tokens of `text`, split as the planner splits them."""
    return [t.low for t in tokenize(text) if t.word]


_IRREGULAR_STEMS = {"lies": "lie", "lying": "lie", "lay": "lie", "sat": "sit", "stood": "stand"}


def stem(word: str) -> str:
    """A crude stem that joins the inflections of one verb or noun: sits, sitting, sit -> "sit";
    placed, place -> "plac"."""
    w = _IRREGULAR_STEMS.get(word, word)
    for suffix in ("ing", "ed", "es", "s"):
        if w.endswith(suffix) and len(w) - len(suffix) >= 3:
            w = w[:-len(suffix)]
            break
    if len(w) > 3 and w[-1] == w[-2] and w[-1] not in "aeiouls":
        w = w[:-1]                      # sitting -> sitt -> sit
    return w[:-1] if len(w) > 3 and w.endswith("e") else w


def forms(word: str) -> set[str]:
    """The forms in which a view may hold `word`: as typed, singular, grey/gray, or any word of
    the same stem ("the statue sits" is held by "a statue sitting")."""
    return {word, singular(word), COLOR_ALIASES.get(word, word), "stem:" + stem(word)}


def content_words(text: str) -> list[str]:
    return [w for w in words(text) if w not in GRAMMAR_WORDS and not w.isdigit()]


def lost_words(prompt: str, held: set[str]) -> list[str]:
    """Content words of `prompt` none of whose forms is in `held` (a set of words)."""
    held = held | {singular(w) for w in held} | {"stem:" + stem(w) for w in held}
    return [w for w in content_words(prompt) if not forms(w) & held]


def stated_numbers(text: str) -> set[int]:
    """The numbers `text` gives: digits, number words ("twenty-one"), "pair", "dozen"..."""
    out = set()
    ws = words(text)
    for i, w in enumerate(ws):
        if w.isdigit() and len(w) <= 9:
            out.add(int(w))
        elif w in NUMBER_WORDS:
            out.add(NUMBER_WORDS[w])
        elif w in TENS_WORDS:
            unit = NUMBER_WORDS.get(ws[i + 1], 0) if i + 1 < len(ws) else 0
            out.add(TENS_WORDS[w] + (unit if 0 < unit < 10 else 0))
        elif w in QUANTITY_WORDS:
            out.add(QUANTITY_WORDS[w])
            if w == "dozen" and i >= 2 and ws[i - 2] == "half":
                out.add(6)
        else:
            head, _, unit = w.partition("-")
            if head in TENS_WORDS and unit in NUMBER_WORDS:
                out.add(TENS_WORDS[head] + NUMBER_WORDS[unit])
    return out


def invented_numbers(prompt: str, counts: list[int | None]) -> list[int]:
    """The counts of 2 or more among `counts` that `prompt` does not state."""
    stated = stated_numbers(prompt)
    return [c for c in counts if c is not None and c >= 2 and c not in stated]


_CHUNK_RE = re.compile(r"[.,;:!?]+(?=\s|$)|\n")


def chunks(text: str) -> list[str]:
    """Lower-case pieces of `text` between punctuation, whitespace normalised."""
    out = []
    for c in _CHUNK_RE.split(text):
        c = " ".join(words(c))
        if c:
            out.append(c)
    return out


def fragments(prompt: str, text: str) -> list[str]:
    """Chunks of `text` that are stray pieces (see the module docstring) and not the prompt's own."""
    own = set(chunks(prompt))
    # words of a piece the user typed as a fragment ("a and") may stay one
    typed = [f" {c} " for c in own if is_fragment(c.split())]
    bad = []
    for c in chunks(text):
        if c not in own and is_fragment(c.split()) and not any(f" {c} " in t for t in typed):
            bad.append(c)
    return bad


def plan_words(plan) -> set[str]:
    """Every word the plan holds, in any field."""
    d = plan.to_dict()
    parts = [d["scene"], d["composition"], *d["style"].values(), *d["negatives"], *d["unparsed"]]
    for s in d["subjects"]:
        parts += [s["noun"], s["color"] or "", *s["attributes"]]
    parts += [r["relation"] + " " + r.get("adverb", "") for r in d["relations"]]
    return {w for p in parts for w in words(p)}


def text_checks(prompt: str, text: str) -> dict:
    """The checks on a text a model reads instead of `prompt` (any way of writing the plan)."""
    return {"lost": lost_words(prompt, set(words(text))),
            "invented": invented_numbers(prompt, sorted(stated_numbers(text))),
            "fragment": fragments(prompt, text)}


def check(prompt: str) -> dict:
    """Every check on one prompt: {"plan": {...}, "sentence": {...}, "prompt+plan": {...},
    "unparsed": bool, "plan_obj", ...}."""
    start = time.perf_counter()
    plan = make_plan(prompt)
    seconds = time.perf_counter() - start
    sentence = plan.conditioning_text()
    counts = [s.count for s in plan.subjects]
    return {
        "plan_obj": plan,
        "seconds": seconds,
        "sentence_text": sentence,
        "unparsed": bool(plan.unparsed),
        "plan": {"lost": lost_words(prompt, plan_words(plan)),
                 "invented": invented_numbers(prompt, counts),
                 "fragment": [f for u in plan.unparsed for f in fragments(prompt, u)]},
        "sentence": text_checks(prompt, sentence),
        "prompt+plan": text_checks(prompt, augmented_prompt(plan)),
    }


_INVERSE = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}


def matches_geneval(plan, meta: dict) -> bool:
    """The plan says exactly what GenEval's metadata asks (see the module docstring)."""
    include = meta["include"]
    if len(plan.subjects) != len(include):
        return False
    index = {}
    for k, want in enumerate(include):
        found = [i for i, s in enumerate(plan.subjects) if i not in index.values()
                 and s.noun == want["class"] and s.count == want["count"] and s.color == want.get("color")]
        if not found:
            return False
        index[k] = found[0]
    rels = {(r.subject, r.relation, r.object) for r in plan.relations}
    for k, want in enumerate(include):
        if "position" in want:
            rel, other = want["position"]
            a, b = index[k], index[other]
            if (a, rel, b) not in rels and (b, _INVERSE[rel], a) not in rels:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# corpora
# ---------------------------------------------------------------------------------------------

def load_geneval() -> list[dict]:
    with open(DATA / "geneval_evaluation_metadata.jsonl", encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def load_corpora() -> dict[str, list[str]]:
    """name -> prompts, in file order."""
    with open(DATA / "PartiPrompts.tsv", encoding="utf-8", newline="") as f:
        parti = [row["Prompt"] for row in csv.DictReader(f, delimiter="\t")]
    compbench = []
    for path in sorted((DATA / "t2i_compbench").glob("*_val.txt")):
        compbench += [ln.strip() for ln in path.read_text(encoding="utf-8").splitlines() if ln.strip()]
    return {"GenEval": [m["prompt"] for m in load_geneval()], "PartiPrompts": parti,
            "T2I-CompBench": compbench}


# ---------------------------------------------------------------------------------------------
# the table
# ---------------------------------------------------------------------------------------------

def measure(prompts: list[str], metadata: list[dict] | None = None) -> tuple[dict, dict]:
    """(row of shares, failing prompts per check) for one corpus."""
    n = len(prompts)
    tally = {f"{view} {c}": [] for view in VIEWS for c in ("lost", "invented", "fragment")}
    tally.update({"crash": [], "unparsed": [], "geneval miss": []})
    seconds = 0.0
    for k, prompt in enumerate(prompts):
        try:
            got = check(prompt)
        except Exception as exc:   # a crash is a result to count, not a reason to stop
            tally["crash"].append((prompt, repr(exc)))
            continue
        seconds += got["seconds"]
        for view in VIEWS:
            for c in ("lost", "invented", "fragment"):
                if got[view][c]:
                    tally[f"{view} {c}"].append((prompt, got[view][c]))
        if got["unparsed"]:
            tally["unparsed"].append((prompt, got["plan_obj"].unparsed))
        if metadata is not None and not matches_geneval(got["plan_obj"], metadata[k]):
            tally["geneval miss"].append((prompt, got["plan_obj"].summary()))
    ms = 1000 * seconds / max(n, 1)
    row = {key: len(v) / max(n, 1) for key, v in tally.items()}
    row["prompts"], row["ms"] = n, ms
    return row, tally


VIEWS = ("plan", "sentence", "prompt+plan")
COLUMNS = [f"{view} {c}" for view in VIEWS for c in ("lost", "invented", "fragment")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--show", default="", help="comma list of checks whose failing prompts to print "
                    "(e.g. 'plan lost,sentence fragment'; 'lost' matches both views)")
    ap.add_argument("--limit", type=int, default=20, help="failing prompts to print per check and corpus")
    args = ap.parse_args()
    geneval = load_geneval()
    show = [s.strip() for s in args.show.split(",") if s.strip()]
    head = f"{'corpus':<14}{'prompts':>8}" + "".join(f"{c:>10}" for c in
                                                   ["lost", "invented", "fragment"] * len(VIEWS)) + \
        f"{'crash':>7}{'unparsed':>10}{'ms/prompt':>11}{'GenEval':>9}"
    print(f"{'':<22}" + "".join(f"{f' {view} ':-^30}" for view in VIEWS))
    print(head)
    for name, prompts in load_corpora().items():
        row, tally = measure(prompts, geneval if name == "GenEval" else None)
        match = f"{100 * (1 - row['geneval miss']):>8.1f}%" if name == "GenEval" else f"{'-':>9}"
        print(f"{name:<14}{row['prompts']:>8}" + "".join(f"{100 * row[c]:>9.1f}%" for c in COLUMNS)
              + f"{len(tally['crash']):>7}{100 * row['unparsed']:>9.1f}%{row['ms']:>11.2f}{match}")
        for key in tally:
            if any(s == key or s in key.split() for s in show):
                for prompt, why in tally[key][:args.limit]:
                    print(f"    [{key}] {prompt!r}: {why}")


if __name__ == "__main__":
    main()
