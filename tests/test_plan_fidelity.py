"""The planner on real prompts nobody here wrote (bench/data): nothing lost, nothing invented,
nothing cut into pieces. The checks are those of bench/prompt_fidelity.py, tested here first on
the broken output the planner used to give, so that they can fail."""

import importlib.util
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from uni1_core.plan import make_plan

_PATH = Path(__file__).resolve().parent.parent / "bench" / "prompt_fidelity.py"
_spec = importlib.util.spec_from_file_location("prompt_fidelity", _PATH)
fidelity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(fidelity)

CORPORA = fidelity.load_corpora()
GENEVAL = fidelity.load_geneval()


# -- the checks catch what issue 15 reported -------------------------------------------------------

OLD_OUTPUT = [   # (prompt, the canonical sentence the planner used to write)
    ("a cozy wooden cabin by a frozen lake under the northern lights, cinematic, 35mm",
     "A cozy wooden cabin and two northern lights, by a frozen lake. 35mm, cinematic. Under."),
    ("Three cats sitting on a windowsill, the one in the middle is orange, rainy city outside",
     "A rainy city in the center. Three cats sitting on a windowsill. The one, orange, outside."),
    ("A close-up portrait of an elderly woman with silver hair and freckles, Rembrandt lighting",
     "An elderly freckles woman with silver hair. Rembrandt lighting, close-up, portrait. A."),
    ("A bowl of ramen with two eggs, chopsticks resting on the rim, steam rising, top-down view",
     "A bowl of ramen with two eggs and a rim. Top-down view. Chopsticks resting on, steam rising."),
]


def test_checks_catch_the_old_output():
    (p0, t0), (p1, t1), (p2, t2), (p3, t3) = OLD_OUTPUT
    assert fidelity.invented_numbers(p0, sorted(fidelity.stated_numbers(t0))) == [2]
    assert fidelity.fragments(p0, t0) == ["under"]
    assert fidelity.fragments(p1, t1) == ["the one", "outside"]
    assert fidelity.fragments(p2, t2) == ["a"]
    assert fidelity.fragments(p3, t3) == ["chopsticks resting on"]
    assert fidelity.lost_words("a cat under a table", {"cat"}) == ["table"]
    assert fidelity.lost_words("the statue sits", {"statue", "sitting"}) == []   # same stem
    assert fidelity.invented_numbers("robots", [None]) == []
    assert fidelity.invented_numbers("a pair of shoes and a dozen eggs", [2, 12]) == []
    assert fidelity.invented_numbers("some shoes", [3]) == [3]
    # a chunk of the user's own is not the planner's fragment; a place or a view stands alone
    assert fidelity.fragments("a cat on", "A cat on.") == []
    assert fidelity.fragments("x", "A cat, in the corner. Front view.") == []


@pytest.mark.parametrize("prompt,old", OLD_OUTPUT)
def test_the_issue_examples_now_pass_every_check(prompt, old):
    got = fidelity.check(prompt)
    assert got["plan"] == {"lost": [], "invented": [], "fragment": []}, got["plan_obj"].to_json()
    assert got["sentence"] == {"lost": [], "invented": [], "fragment": []}, got["sentence_text"]
    assert got["prompt+plan"] == {"lost": [], "invented": [], "fragment": []}
    assert got["sentence_text"] != old


# -- every real prompt -----------------------------------------------------------------------------

@pytest.mark.parametrize("corpus", sorted(CORPORA))
def test_real_prompts_lose_invent_and_cut_nothing(corpus):
    """Every prompt of the corpus: the plan holds each content word, gives no count the prompt
    does not, and leaves no stray piece; and so do its sentence (negatives included: "No hands.")
    and the prompt+plan text."""
    bad = []
    for prompt in CORPORA[corpus]:
        got = fidelity.check(prompt)
        problems = {f"{view} {k}": v for view in fidelity.VIEWS for k, v in got[view].items() if v}
        if problems:
            bad.append((prompt, problems))
    assert not bad, f"{len(bad)} of {len(CORPORA[corpus])} prompts: {bad[:5]}"


def test_geneval_plans_match_the_metadata():
    misses = [m["prompt"] for m in GENEVAL if not fidelity.matches_geneval(make_plan(m["prompt"]), m)]
    assert len(misses) <= 0.02 * len(GENEVAL), misses[:10]


def test_matches_geneval_can_fail():
    meta = {"include": [{"class": "dog", "count": 1}, {"class": "cat", "count": 1, "position": ["left of", 0]}]}
    assert fidelity.matches_geneval(make_plan("a cat to the left of a dog"), meta)
    assert fidelity.matches_geneval(make_plan("a dog to the right of a cat"), meta)
    assert not fidelity.matches_geneval(make_plan("a cat to the right of a dog"), meta)
    assert not fidelity.matches_geneval(make_plan("two cats to the left of a dog"), meta)
    assert not fidelity.matches_geneval(make_plan("a red cat to the left of a dog"), meta)


# -- word salad from real prompt words --------------------------------------------------------------

WORDS = [
    "a", "an", "the", "two", "3", "a pair of", "a dozen", "some", "several", "a group of", "cat", "cats",
    "robots", "people", "birthday cake", "school bus", "potted plant", "orange", "red", "grey", "wooden",
    "cozy", "elderly", "woman", "silver hair", "freckles", "bowl of ramen", "a piece of", "cup of",
    "holding", "wearing", "sitting", "sits", "stands", "showing", "resting", "on", "in", "under",
    "by", "with", "and", ",", ".", "left of", "to the right of", "high above", "just", "next to",
    "on the left", "on the right", "in the middle", "is", "are", "he", "she", "it", "they", "one of them",
    "the one", "a frozen lake", "northern lights", "cinematic", "35mm", "oil painting", "top-down view",
    "close-up", "portrait", "no", "without", "text", "steam rising", "zorbly",
]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.sampled_from(WORDS), max_size=20).map(" ".join))
def test_word_salad_loses_invents_and_cuts_nothing(text):
    got = fidelity.check(text)
    assert got["plan"] == {"lost": [], "invented": [], "fragment": []}, (text, got["plan_obj"].to_json())
    assert got["sentence"]["invented"] == [] and got["sentence"]["fragment"] == [], (text, got["sentence_text"])
    assert got["prompt+plan"] == {"lost": [], "invented": [], "fragment": []}, text
