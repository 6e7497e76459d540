"""Prompt text -> plan dictionary: a small, deterministic grammar of English image prompts.

The parser splits a prompt into clauses (at . ; ! ? and line breaks) and reads each clause left to
right. At each word the first rule of `_Parser.CLAUSE_RULES` that reads something wins, in this
order: style phrases ("oil painting", "cinematic lighting", "35mm") and a leading "a photo of";
negation ("no people"); order phrases ("from left to right"); joiners ("together with"); "by
itself"; framing ("in the picture"); a pronoun that starts a clause ("He stands ..."); an adverb
before a relation ("just left of"); absolute positions ("on the left"); spatial relations ("to
the left of", "on top of"); scene phrases ("at night"); phrases that qualify the previous subject
("with a red collar", "holding two cups"); copulas with content ("sits", "showing a bay"); list
words and copulas; colours waiting for their noun ("a red, a green and a blue ball"); and finally
noun phrases ("two small red cubes"), which become subjects with their own count, colour and
attributes, so that adjectives never bleed from one object to the next.

Nothing is invented and nothing is dropped. A plural without a number has no count (None); a
word the grammar does not understand stays, verbatim, in `unparsed`; and when what is left of a
comma segment or a clause would be a stray piece ("under", "one of them"), the whole span is read
again as not understood: it goes to `unparsed` as written and states no subject or relation.
The output is a plain dictionary in the plan's JSON form (see `uni1_core/plan.py`), plus the source
text of each relation so that the planner can hand a relation that the layout cannot satisfy back
to `unparsed`. The word tables and English helpers live in `lexicon.py`; another model's answer is read by
`llm_answer.py`.

Every pass is linear in the prompt's length (issue 16: under 50 ms for any 2,000 characters): a
rule is asked only at a word where it can start (`RULE_STARTS`), every scan ahead is memoised
per start (`scan_until`, `follow`, `noun_phrase`, `count_at`), and undoing a half-read segment
rolls back a log of changes instead of copying the parser's state at every phrase.
"""

from __future__ import annotations

import re

from .lexicon import (  # noqa: F401  (plan.py and tests import some of these from here)
    ADJECTIVES, AMBIGUOUS_COMPOSITION, BASIC_COLORS, CLAUSE_END, COLLECTIVE_WORDS, PARTICLES, COLOR_ALIASES,
    COMPOUND_NOUNS, CONTAINER_NOUNS, COPULAS, DANGLING_WORDS, DEGREE_ADVERBS, DETERMINERS,
    FILLER_WORDS, FUNCTION_WORDS, GRAMMAR_WORDS, INTRO_TABLE, KNOWN_NOUNS, LEADER_TABLE,
    LIGHT_OBJECTS, LIST_TABLE, LIST_WORDS, MAX_COUNT, MOOD_SINGLE, NEGATION_TABLE, NOT_NOUNS,
    NUMBER_WORDS, ORDER_PHRASES, OTHER_COLOR_WORDS, POSITIONS, POSITION_PHRASES, POSTURE_VERBS,
    PREPOSITIONS, PRE_COLOR_WORDS, QUALIFIER_WORDS, RELATIONS, RELATION_PHRASES, RELATION_TEXT,
    SCENE_NOUNS, SCENE_ONLY_PREPOSITIONS, SELF_CONTAINED_ENDS, SOLITARY_TABLE, STYLE_TABLE, TENS_WORDS,
    TRANSITIVE_VERBS, VERBS, _MM_RE, _QUANTITY_INDEX, article, is_fragment, is_noun_like, number_word, plural,
    same_kind, singular)

# ---------------------------------------------------------------------------------------------
# Tokens
# ---------------------------------------------------------------------------------------------

_TOKEN_RE = re.compile(r"\n|[^\W_]+(?:['’\-/.][^\W_]+)*|\S")


class Token:
    __slots__ = ("text", "low", "start", "end", "word")

    def __init__(self, text: str, start: int, end: int):
        self.text, self.start, self.end = text, start, end
        self.low = text.lower().replace("’", "'")
        self.word = text[0].isalnum()

    def __repr__(self) -> str:
        return f"Token({self.text!r})"


def tokenize(text: str) -> list[Token]:
    return [Token(m.group(), m.start(), m.end()) for m in _TOKEN_RE.finditer(text)]


def parse_count(toks: list[Token], i: int) -> tuple[int | None, int] | None:
    """(count, tokens used) for a number at toks[i]: digits, words, "twenty one", quantities;
    the count is None for a vague quantity ("some", "many")."""
    n = len(toks)
    for phrase, value in _QUANTITY_INDEX.get(toks[i].low, ()):
        k = len(phrase)
        if i + k <= n and (k == 1 or toks[i + 1].low == phrase[1]) and all(
                toks[i + j].low == phrase[j] for j in range(2, k)):
            # "a lot of" and friends only count when a noun phrase follows.
            if i + k < n and toks[i + k].word:
                return value, k
    low = toks[i].low
    if low.isascii() and low.isdigit():
        return (int(low) if len(low) <= 9 else 10 ** 9), 1
    if low in NUMBER_WORDS:
        return NUMBER_WORDS[low], 1
    if low in TENS_WORDS:
        if i + 1 < n and toks[i + 1].low in NUMBER_WORDS and 0 < NUMBER_WORDS[toks[i + 1].low] < 10:
            return TENS_WORDS[low] + NUMBER_WORDS[toks[i + 1].low], 2
        return TENS_WORDS[low], 1
    head, _, unit = low.partition("-")
    if head in TENS_WORDS and unit in NUMBER_WORDS and 0 < NUMBER_WORDS[unit] < 10:
        return TENS_WORDS[head] + NUMBER_WORDS[unit], 1
    return None


_INDEX: dict[int, dict[str, tuple[dict, list]]] = {}


def _indexed(table) -> dict[str, tuple[dict, list]]:
    """`table` grouped by first word, built once per table: for each first word, the longer
    phrases grouped by second word and the one-word phrases, each longest first (in table order
    for equal lengths), so that a match only tries phrases that share two words with the text."""
    index = _INDEX.get(id(table))
    if index is None:
        index = {}
        for words, value in sorted(table, key=lambda pr: -len(pr[0])):
            longer, single = index.setdefault(words[0], ({}, []))
            if len(words) == 1:
                single.append((words, value))
            else:
                longer.setdefault(words[1], []).append((words, value))
        _INDEX[id(table)] = index
    return index


def _starts(table) -> set[str]:
    """The words that start a phrase of `table`."""
    return (_INDEX.get(id(table)) or _indexed(table)).keys()


def _is_content(tok: Token) -> bool:
    """A content word as `lexicon.is_fragment` counts them."""
    return tok.word and tok.low not in GRAMMAR_WORDS and not tok.low.isdigit()


def _may_count(low: str) -> bool:
    """True if `parse_count` can read a number at a token whose lower-case text is `low`."""
    return (low in _QUANTITY_INDEX or (low.isascii() and low.isdigit()) or low in NUMBER_WORDS
            or low in TENS_WORDS or low.partition("-")[0] in TENS_WORDS)


def _match(toks: list[Token], i: int, table) -> tuple[int, str] | None:
    """Longest phrase of `table` ((words, value) pairs) starting at toks[i]."""
    n = len(toks)
    if i >= n:
        return None
    phrases = (_INDEX.get(id(table)) or _indexed(table)).get(toks[i].low)
    if phrases is None:      # most words start no phrase: the common case, made cheap
        return None
    longer, single = phrases
    if i + 1 < n:
        for words, value in longer.get(toks[i + 1].low, ()):
            k = len(words)
            if i + k <= n and toks[i + k - 1].low == words[-1] and all(
                    toks[i + j].low == words[j] for j in range(2, k - 1)):
                return k, value
    return (1, single[0][1]) if single else None


# words that start a phrase ending a noun phrase, and a framing or style phrase
_BOUNDARY_STARTS = set().union(*map(_starts, (ORDER_PHRASES, POSITION_PHRASES, LIST_TABLE, RELATION_PHRASES)))
_FRAMING_STARTS = set(_starts(INTRO_TABLE)) | set(_starts(STYLE_TABLE))


# ---------------------------------------------------------------------------------------------
# The scanner
# ---------------------------------------------------------------------------------------------


class _ClauseState:
    """Where the scanner is inside one clause."""

    def __init__(self):
        self.group: list[int] = []       # subjects the next relation or position applies to
        self.group_open = True           # False right after a relation: "A on B and C" starts a new group
        self.list_next = False           # the last filler was "and" or ","
        self.last_end = -1               # token index just past the current group's phrase
        self.seg_start = True            # at the start of a comma segment
        self.at_seg_start = True         # the current token starts a comma segment
        self.adjacent = False            # the current token comes right after the group's phrase
        self.pending_rel = None          # (relation, object, object2, text, token span): "Above the table, a lamp"
        self.pending_pos = None          # (position, token span): "On the left, a cat"
        self.elliptic: list = []          # [(subject without noun, start, end)]: "a red, a green and a blue ball"
        self.elliptic_joins = False       # the first elliptic subject joins the current group

    def seg_start_at(self, i: int, parser: "_Parser") -> bool:
        """True if toks[i] starts its clause or comma segment."""
        j = i - 1
        while j >= 0 and parser.toks[j].low in ("and",):
            j -= 1
        return j < 0 or parser.toks[j].low in CLAUSE_END or parser.toks[j].low == ","


class _Parser:
    def __init__(self, text: str):
        self.text = text
        self.toks = tokenize(text)
        self.used = [False] * len(self.toks)
        self._boundary: list[bool | None] = [None] * len(self.toks)
        self._counts: list = [False] * len(self.toks)      # memo of `count_at` (False: not yet read)
        self.subjects: list[dict] = []
        self.relations: list[dict] = []
        self.relation_texts: list[str] = []
        self.style = {"medium": [], "lighting": [], "camera": [], "mood": []}
        self.composition: list[str] = []
        self.scene: list[str] = []
        self.negatives: list[str] = []
        self.lost: list[str] = []            # relation texts that named one subject twice
        self.spans: list[tuple[int, int]] = []   # token span of each subject's first mention
        self.head: int | None = None         # first subject of the last clause that named one
        # Every change to the state above (subjects, relations, style lists, `used`...) goes
        # through `add`, `set`, `take` and `untake`, which log how to undo it: a snapshot is then
        # a position in this log, and going back to it undoes only what changed since. (Copying
        # the state at every phrase made a long prompt quadratic.)
        self.journal: list = []
        self._scans: dict = {}               # memo of the scans ahead, see `scan_until`
        self._chains: dict = {}              # memo of collective chains, see `noun_phrase`
        self._noun_phrases: dict = {}        # memo of `noun_phrase`
        self._relation_keys: set = set()     # (subject, object, relation, object2) of `relations`

    # -- helpers ------------------------------------------------------------------------------
    def span_text(self, i: int, j: int) -> str:
        """Original text of tokens i..j-1, with their inner spacing."""
        if j <= i:
            return ""
        return self.text[self.toks[i].start:self.toks[j - 1].end]

    def norm_text(self, i: int, j: int) -> str:
        return re.sub(r"\s+", " ", self.span_text(i, j).lower()).strip()

    # -- the state's changes, logged so that a snapshot can be restored -----------------------
    def add(self, target: list, *items) -> None:
        """Append to one of the state's lists (a subject's attributes included)."""
        for item in items:
            target.append(item)
            self.journal.append(target)                  # undone by target.pop()

    def set(self, subject: dict, key: str, value) -> None:
        self.journal.append((subject, key, subject[key]))
        subject[key] = value

    def take(self, i: int, j: int) -> None:
        self._mark_used(i, j, True)

    def untake(self, i: int, j: int) -> None:
        self._mark_used(i, j, False)

    def _mark_used(self, i: int, j: int, value: bool) -> None:
        used, journal = self.used, self.journal
        for k in range(i, j):
            if used[k] is not value:
                used[k] = value
                journal.append(k)                        # undone by flipping used[k]

    def snapshot(self, st: _ClauseState) -> tuple:
        """Everything a clause rule may change, to undo a segment the grammar only half read:
        the length of the log, and the clause state (whose lists are never changed in place)."""
        return len(self.journal), dict(vars(st))

    def restore(self, snap: tuple, st: _ClauseState) -> None:
        """Undo every change made since `snap` was taken."""
        mark, st_vars = snap
        journal, used = self.journal, self.used
        while len(journal) > mark:
            entry = journal.pop()
            if type(entry) is int:
                used[entry] = not used[entry]
            elif type(entry) is list:
                entry.pop()
            elif len(entry) == 2:
                keys, key = entry
                keys.discard(key)
            else:
                subject, key, old = entry
                subject[key] = old
        vars(st).update(st_vars)

    def count_at(self, i: int) -> tuple[int | None, int] | None:
        """`parse_count` at toks[i], memoised (the rules ask at the same word many times)."""
        c = self._counts[i]
        if c is False:
            c = self._counts[i] = parse_count(self.toks, i)
        return c

    def is_boundary(self, i: int) -> bool:
        """A token that ends a noun phrase (memoised: the scanner asks often)."""
        b = self._boundary[i]
        if b is None:
            b = self._boundary[i] = self._is_boundary(i)
        return b

    def scan_until(self, kind: str, k: int, end: int) -> int:
        """The first index >= k (at most `end`) where a phrase of this kind stops: at a boundary
        ("boundary"), also at a participle ("phrase": "with long hair *reading* a book"), also at
        "alone" and friends ("noun": "a cat *alone*"). Memoised per start, so that trying a
        phrase at every word of a long run of modifiers stays linear."""
        memo = self._scans.setdefault((kind, end), {})
        path = []
        while k < end and k not in memo:
            if self.is_boundary(k) or (kind != "boundary" and (self.is_participle(k, end) or (
                    kind == "noun" and _match(self.toks, k, SOLITARY_TABLE)))):
                memo[k] = k
                break
            path.append(k)
            k += 1
        stop = memo.get(k, k)
        for p in path:
            memo[p] = stop
        return stop

    def follow(self, kind: str, p: int, end: int, step, combine=lambda note, rest: rest):
        """Follow a chain of phrases from p: `step(q)` is (0, result) where the chain stops or
        (k, note) to go on at q + k; the answer at each q is `combine(note, answer at q + k)`.
        Memoised per position, so that a chain tried at each of its words is read once."""
        memo = self._scans.setdefault((kind, end), {})
        path, start = [], p
        while p not in memo:
            k, note = step(p)
            if k == 0:
                memo[p] = note
                break
            path.append((p, note))
            p += k
        result = memo[p]
        for q, note in reversed(path):
            result = memo[q] = combine(note, result)
        return memo[start]

    def _is_boundary(self, i: int) -> bool:
        t = self.toks[i]
        if not t.word or t.low in CLAUSE_END:
            return True
        low = t.low
        # a verb ends a noun phrase, except right after an article ("a jump rope") or as the
        # last word of a compound ("a book stand.", "a drum set and ...")
        before = self.toks[i - 1].low if i > 0 else ""
        verb = low in VERBS and not (before in ("a", "an", "the") or (
            low in KNOWN_NOUNS and (before in ADJECTIVES or before in BASIC_COLORS)))   # "a silver watch"
        prev, nxt = self.toks[i - 1] if i > 0 else None, self.toks[i + 1] if i + 1 < len(self.toks) else None
        if (low in ("stand", "set") and prev and prev.word and prev.low not in DETERMINERS
                and (nxt is None or not nxt.word or nxt.low in LIST_WORDS)):
            return False
        if (low in LIST_WORDS or low in PREPOSITIONS or low in COPULAS or low in DETERMINERS
                or low in ("no", "not", "nor") or verb or low in FILLER_WORDS
                or self.count_at(i) is not None):
            return True
        if low in _BOUNDARY_STARTS and (
                _match(self.toks, i, ORDER_PHRASES) or _match(self.toks, i, POSITION_PHRASES)
                or _match(self.toks, i, LIST_TABLE) or _match(self.toks, i, RELATION_PHRASES)):
            return True
        if low in DEGREE_ADVERBS and (_match(self.toks, i + 1, RELATION_PHRASES)
                                      or _match(self.toks, i + 1, POSITION_PHRASES)):
            return True      # "a bird *high* above a house"
        m = _match(self.toks, i, STYLE_TABLE)
        # mood words ("a serene garden") and a few framing words are ordinary adjectives too
        return m is not None and m[1] != "mood" and low not in AMBIGUOUS_COMPOSITION

    # -- noun phrases ---------------------------------------------------------------------------
    def noun_phrase(self, i: int, end: int, *, as_subject: bool) -> tuple[dict, int] | None:
        """Parse "[det] [count] modifiers* head" at i. Returns (subject dict, next index): a
        fresh dict each time (the caller may change it), read once per (i, end, as_subject)."""
        key = (i, end, as_subject)
        if key not in self._noun_phrases:
            self._noun_phrases[key] = self._noun_phrase(i, end, as_subject)
        found = self._noun_phrases[key]
        if found is None:
            return None
        subj, j = found
        return dict(subj, attributes=list(subj["attributes"])), j

    def _noun_phrase(self, i: int, end: int, as_subject: bool) -> tuple[dict, int] | None:
        toks = self.toks
        det = None
        count = None
        quantity = False         # a number or quantity word was read (its count may be None: "some")
        collective = None        # "a group of (four) squares": squares in a group
        chained = []             # the collective words read (where this prefix can be resumed)
        while i < end:
            low = toks[i].low
            in_chain = collective is not None and count is None and i == collective[1]
            if in_chain:
                # what follows a collective ("a crowd of a crowd of ...") reads the same from
                # every start: read once, so that a phrase tried at every word stays linear
                done = self._chains.get((collective, end))
                if done is not None:
                    count, collective, i = done
                    break
                chained.append((collective, end))
            if not quantity or in_chain:
                c = self.count_at(i)
                if c is not None:
                    (count, k), quantity = c, True
                    word = next((t.low for t in toks[i:i + k] if t.low in COLLECTIVE_WORDS), None)
                    if word:
                        collective = (word, i + k)
                    i += k
                    continue
            if low in DETERMINERS and det is None and not quantity:
                det = low
                i += 1
                continue
            break
        for key in chained:
            self._chains[key] = (count, collective, i)
        words_start = i
        # the words run to a boundary; after the first word an -ing word ("a dog running") or
        # "alone" ("a cat alone") starts a trailing phrase
        if i < end and not self.is_boundary(i):
            i = self.scan_until("noun", i + 1, end)
        # "the fire engine *sped* past": an unknown word after a known noun, before a preposition,
        # is the verb, not the head
        if (i - words_start >= 2 and i < end and toks[i].low in PREPOSITIONS
                and not is_noun_like(toks[i - 1].low) and is_noun_like(toks[i - 2].low)
                and toks[i - 1].low not in ADJECTIVES
                and (toks[i - 2].low, singular(toks[i - 1].low)) not in COMPOUND_NOUNS):
            i -= 1
        if i == words_start:
            return None
        # the head first, the modifiers (a run of any length) only once the phrase is accepted
        last = toks[i - 1].low
        if i - words_start >= 2 and (toks[i - 2].low, singular(last)) in COMPOUND_NOUNS:
            head_words = [toks[i - 2].low, last]
        else:
            head_words = [last]
        if len(head_words) == 1 and (((last in BASIC_COLORS or last in COLOR_ALIASES or last in ADJECTIVES
                or last in OTHER_COLOR_WORDS) and last not in KNOWN_NOUNS) or last.isdigit()):
            return None
        noun_sing = singular(last)
        is_plural = noun_sing != last
        if as_subject and det is None and not quantity and (not is_noun_like(last) or last in BASIC_COLORS):
            return None
        if last in NOT_NOUNS or (last in GRAMMAR_WORDS and last not in KNOWN_NOUNS and last not in SCENE_NOUNS):
            return None      # "the one", "a dozen" (no noun after it), "a she"
        if count is not None and (count < 1 or count > MAX_COUNT):
            return None
        if count is None and not (quantity or det in ("these", "those") or is_plural):
            count = 1            # "a cat", "the dog", "each bird"
        # else a plural without a number ("cats", "some cats", "these birds") keeps count None:
        # the prompt does not say how many, so neither does the plan
        noun = " ".join(head_words[:-1] + [noun_sing])
        color, attributes = _color_and_attributes([t.low for t in toks[words_start:i - len(head_words)]])
        if collective:
            attributes.append(f"in a {collective[0]}")
        return {"noun": noun, "count": count, "color": color, "attributes": attributes, "_det": det}, i

    def elliptic(self, i: int, end: int) -> tuple[dict, int, int] | None:
        """ "a red" followed by "," or "and": a subject whose noun comes with the next one."""
        toks = self.toks
        j = i
        count = 1
        if j < end and toks[j].low in ("a", "an", "one"):
            j += 1
        else:
            c = self.count_at(j)
            if c is None:
                return None
            count, k = c
            if count is None or not 1 <= count <= MAX_COUNT:
                return None
            j += k
        k = self.scan_until("boundary", j, end)
        words = [t.low for t in toks[j:k]]
        j = k
        if not words or not (j < end and toks[j].low in (",", "and", "or")):
            return None
        if not all(w in BASIC_COLORS or w in COLOR_ALIASES or w in ADJECTIVES or w in OTHER_COLOR_WORDS
                   for w in words):
            return None
        color, attributes = _color_and_attributes(words)
        return {"noun": None, "count": count, "color": color, "attributes": attributes, "_det": None}, i, j

    def phrase_until_boundary(self, i: int, end: int) -> int:
        """End of a qualifier phrase object: "[det] [count] words" up to the next boundary."""
        j = i
        while j < end and self.toks[j].low in DETERMINERS | {"some", "many"}:
            j += 1
        c = self.count_at(j) if j < end else None
        if c:
            j += c[1]
        if j >= end or self.is_boundary(j):
            return i
        return self.scan_until("phrase", j + 1, end)      # "with long hair *reading* a book"

    def is_participle(self, i: int, end: int) -> bool:
        """ "a dog *sleeping* under", "a car *parked* in front of": a verb form that ends a noun phrase."""
        toks = self.toks
        low = toks[i].low
        if not low.endswith(("ing", "ed")) or low in KNOWN_NOUNS:
            return False
        if i + 1 < end and (low, singular(toks[i + 1].low)) in COMPOUND_NOUNS:
            return False                     # "an orange potted plant"
        if low in QUALIFIER_WORDS or (low.endswith("ing") and i + 1 < end and (
                toks[i + 1].low in DETERMINERS or self.count_at(i + 1) is not None)):
            return True                      # "a beaver wearing glasses", "a man holding a cup"
        return is_noun_like(toks[i - 1].low) or (
            low not in ADJECTIVES and (i + 1 >= end or self.is_boundary(i + 1)))

    # -- the scan -----------------------------------------------------------------------------
    def parse(self) -> None:
        toks = self.toks
        n = len(toks)
        clause_start = 0
        for i in range(n + 1):
            if i == n or toks[i].low in CLAUSE_END:
                if i > clause_start:
                    before = len(self.subjects)
                    self.parse_clause(clause_start, i)
                    if len(self.subjects) > before:
                        self.head = before
                clause_start = i + 1

    def segment_is_style_only(self, i: int, end: int) -> bool:
        """True if the comma segment starting at i is only style words ("..., oil painting,")."""
        toks = self.toks

        def step(j: int):        # (ok so far, a style word seen)
            if j >= end or toks[j].low == "," or toks[j].low in CLAUSE_END:
                return 0, (True, False)
            m = _match(toks, j, STYLE_TABLE) or _match(toks, j, INTRO_TABLE)
            if m and m[1]:
                return m[0], True
            if toks[j].low in ("and", "a", "an", "the") or _MM_RE.match(toks[j].low):
                return 1, False
            return 0, (False, False)

        ok, any_style = self.follow("style only", i, end, step, lambda style, rest: (rest[0], rest[1] or style))
        return ok and any_style

    def parse_clause(self, start: int, end: int) -> None:
        """Read one clause: at each token, the first rule of `CLAUSE_RULES` that consumes something
        wins (each returns the next index, or None to pass); a token no rule takes stays unused
        and ends up, verbatim, in `unparsed`."""
        st = _ClauseState()
        clause_snap = self.snapshot(st)
        seg_start = i = start
        checkpoints = [(i, clause_snap)]     # where a phrase of this comma segment began
        while i < end:
            if self.toks[i].low == ",":
                self.keep_whole_if_cut(seg_start, i, checkpoints, st)
                i = self.comma(i, st)
                seg_start, checkpoints = i, [(i, self.snapshot(st))]
                continue
            st.at_seg_start, st.seg_start = st.seg_start, False
            st.adjacent = bool(st.group) and st.last_end == i   # right after a subject's phrase
            snap = self.snapshot(st) if i > seg_start else None
            for rule in self.rules_at(self.toks[i]):
                nxt = rule(self, i, end, st)
                if nxt is not None:
                    if snap is not None:
                        checkpoints.append((i, snap))
                    i = nxt
                    break
            else:
                i += 1   # not understood: stays unused and ends up in `unparsed`
        self.keep_whole_if_cut(seg_start, end, checkpoints, st)
        # what was waiting for a noun that never came stays as written:
        waiting = bool(st.elliptic or st.pending_pos or st.pending_rel)
        for _, a, b in st.elliptic:          # "a red and a blue."
            self.untake(a, b)
        if st.pending_pos:                   # "On the left."
            self.untake(*st.pending_pos[1])
        if st.pending_rel is not None:       # "next to the window."
            self.untake(*st.pending_rel[4])
        if seg_start > start or waiting:     # (else the clause was one segment, just checked)
            self.keep_whole_if_cut(start, end, [(start, clause_snap)], st)

    def keep_whole_if_cut(self, start: int, end: int, checkpoints: list, st: _ClauseState) -> None:
        """If what the rules left unread in toks[start:end] is a stray piece ("under", "one of
        them"), undo from the last phrase that began before it (`checkpoints`: (token index,
        snapshot) pairs, the first at `start`): that tail goes to `unparsed` whole, as written,
        and states nothing. An earlier phrase is tried when the tail alone would still leave a
        stray piece; the first checkpoint undoes the whole span."""
        first = next((a for _, _, a, b in self.unused_runs(start, end)
                      if a < b and is_fragment([t.low for t in self.toks[a:b] if t.word])), None)
        if first is None:
            return
        candidates = [c for c in checkpoints if c[0] <= first] or checkpoints[:1]
        last, content_after = self.span_end_facts(start, end) if len(candidates) > 1 else (None, [])
        # A span that ends in a word needing a complement ("... a cat is") stays a stray piece
        # whatever is undone after its last word: go straight to an undo that reaches that word.
        dangling = last is not None and self.toks[last].low in DANGLING_WORDS
        for at, snap in reversed(candidates):
            whole = at == checkpoints[0][0]
            if dangling and at <= last and not whole:
                continue
            self.restore(snap, st)
            if not whole and self.tail_is_fragment(start, at, end, last, content_after):
                continue           # the full test below would fail on the tail: try an earlier phrase
            self.untake(at, end)
            if whole or not self.has_fragment(start, end):
                return

    def span_end_facts(self, start: int, end: int) -> tuple[int | None, list[bool]]:
        """(the last word of toks[start:end] that is not "and"/"or", or None; content_after,
        where content_after[k - start] says whether toks[k:end] holds a content word)."""
        toks = self.toks
        last = next((k for k in range(end - 1, start - 1, -1)
                     if toks[k].word and toks[k].low not in ("and", "or")), None)
        content_after, seen = [False] * (end - start + 1), False
        for k in range(end - 1, start - 1, -1):
            seen = seen or _is_content(toks[k])
            content_after[k - start] = seen
        return last, content_after

    def tail_is_fragment(self, start: int, at: int, end: int, last: int | None, content_after: list) -> bool:
        """What `has_fragment` would find of the run of unused tokens that ends with toks[at:end]
        once they are unread: is that run a stray piece? Answered without unreading them, in
        time for the tokens before `at` only (`last`: the last word of toks[start:end] that is
        not "and"/"or", and `content_after`: see `span_end_facts`), so that trying many
        phrases of one long segment stays linear."""
        toks, used = self.toks, self.used
        r = at
        while r > start and not used[r - 1]:
            r -= 1
        final = last if last is not None and last >= at else None
        content = content_after[at - start]
        for k in range(at - 1, r - 1, -1):
            if final is None and toks[k].word and toks[k].low not in ("and", "or"):
                final = k
            content = content or _is_content(toks[k])
        if final is None:
            return False           # no word in the run: not a piece of text
        low = toks[final].low
        return low in DANGLING_WORDS or (not content and low not in SELF_CONTAINED_ENDS)

    def comma(self, i: int, st: _ClauseState) -> int:
        """A comma starts a segment; right after a subject it lists the next one."""
        self.take(i, i + 1)
        st.seg_start = True
        if st.last_end == i:
            st.last_end = i + 1
            st.list_next = True
        return i + 1

    # -- clause rules, in priority order (see CLAUSE_RULES) -------------------------------------
    def rule_style(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Style phrases ("oil painting", "35mm") and a leading "a photo of"."""
        return self.style_or_intro(i, end, st.at_seg_start)

    def rule_negation(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "no people", "without text"."""
        return self.negation(i, end)

    def rule_order(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Order phrases: "a, b and c from left to right", "x and y side by side"."""
        m = _match(self.toks, i, ORDER_PHRASES)
        if not m:
            return None
        if len(st.group) >= 2 and st.adjacent:
            k, rel = m
            text = self.norm_text(i, i + k)
            for a, b in zip(st.group, st.group[1:]):
                self.add_relation(a, b, rel, None, text)
            self.take(i, i + k)
            st.last_end = i + k
            return i + k
        if _match(self.toks, i, RELATION_PHRASES):
            return None
        # no two subjects to put in order ("two triangles side by side"): the idiom stays whole
        # and as written rather than falling apart into a scene and a stray word
        if st.last_end == i:        # what follows still belongs to the same subjects
            st.last_end = i + m[0]
        return i + m[0]

    def rule_joiner(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "a cat together with a dog": another subject, as after "and"."""
        m = _match(self.toks, i, LIST_TABLE)
        if not m:
            return None
        self.take(i, i + m[0])
        if st.last_end == i:
            st.last_end = i + m[0]
            st.list_next = True
        return i + m[0]

    def rule_solitary(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "a red square on its own", "a star by itself": not a relation, kept as written."""
        m = _match(self.toks, i, SOLITARY_TABLE)
        if not m:
            return None
        if st.last_end == i:        # "a cat alone in a field": the field is still the scene
            st.last_end = i + m[0]
        return i + m[0]

    def rule_frame(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "three birds in the image": the picture itself is framing, not a place."""
        return self.frame_phrase(i, end)

    def rule_pronoun(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "A beaver wearing glasses. He stands next to a stack of books": a pronoun that starts
        a segment and is followed by what a subject does or is, refers to the first subject of
        the last clause that named one."""
        toks = self.toks
        low = toks[i].low
        if low not in ("he", "she", "it", "they") or not st.at_seg_start or self.head is None:
            return None
        last = self.head
        if (low == "they") != (self.subjects[last]["count"] != 1):
            return None
        j = i + 1
        while j < end and toks[j].low in ("is", "are", "was", "were"):
            j += 1
        if j >= end:
            return None
        w = toks[j].low
        if not (_match(toks, j, RELATION_PHRASES) or w in POSTURE_VERBS or w in TRANSITIVE_VERBS
                or w in QUALIFIER_WORDS or w in BASIC_COLORS or w in COLOR_ALIASES or w in ADJECTIVES):
            return None
        self.take(i, i + 1)
        st.group, st.group_open, st.list_next = [last], False, False
        st.last_end = i + 1
        return i + 1

    def rule_adverb(self, i: int, end: int, st: _ClauseState) -> int | None:
        """An adverb before a relation, a position or a noun phrase: "just left of", "high above",
        "directly behind", "just a square". The relation still binds to the subject before it;
        an adverb with content ("high") goes with that relation (see `relation`), or else stays
        as written in `unparsed`; an empty one ("just") is read as grammar."""
        toks = self.toks
        if toks[i].low not in DEGREE_ADVERBS or i + 1 >= end or not toks[i + 1].word:
            return None
        if _match(toks, i, RELATION_PHRASES) or _match(toks, i, POSITION_PHRASES):
            return None      # "right of", "far in the background" are phrases of their own
        if not (_match(toks, i + 1, RELATION_PHRASES) or _match(toks, i + 1, POSITION_PHRASES)
                or toks[i + 1].low in DETERMINERS or self.count_at(i + 1) is not None):
            return None
        if toks[i].low in GRAMMAR_WORDS:
            self.take(i, i + 1)
        if st.last_end == i:                 # what follows still belongs to the same subjects
            st.last_end = i + 1
        st.seg_start = st.at_seg_start
        return i + 1

    def rule_position(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Absolute positions: "a cat on the left", "On the left, a cat"."""
        toks = self.toks
        m = _match(toks, i, POSITION_PHRASES)
        if not m or (i + m[0] < end and toks[i + m[0]].low == "of"):
            return None
        k, canon = m
        after = toks[i + k].low if i + k < end else ""
        # "on the right is a cow", "..., on the right, a house": it introduces what follows
        introduces = after in COPULAS or (st.at_seg_start and (
            after == "," or after in DETERMINERS or (i + k < end and self.count_at(i + k) is not None))) or (
            not st.adjacent and after != "")
        if st.adjacent and not introduces:
            for s in st.group:
                self.add(self.subjects[s]["attributes"], canon)
            st.last_end = i + k
            st.group_open = False     # "a dog on the right and a cat on the left"
        else:
            if st.pending_pos:                    # two in a row: the first stays as written
                self.untake(*st.pending_pos[1])
            st.pending_pos = (canon, (i, i + k))
        self.take(i, i + k)
        return i + k

    def rule_relation(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Relations: "to the left of", "on top of", "beneath", "between X and Y"."""
        m = _match(self.toks, i, RELATION_PHRASES)
        if m and (st.adjacent or st.at_seg_start or not st.group):
            return self.relation(i, m[0], m[1], end, st, st.adjacent)
        return None

    def rule_scene(self, i: int, end: int, st: _ClauseState) -> int | None:
        """A scene phrase: "at night", "during sunset", "against a white wall"."""
        if self.toks[i].low not in SCENE_ONLY_PREPOSITIONS:
            return None
        k = self.phrase_until_boundary(i + 1, end)
        if k <= i + 1:
            return None
        head = self.toks[k - 1].low
        if not (singular(head) in SCENE_NOUNS or head in SCENE_NOUNS or not st.adjacent):
            return None
        if is_fragment([t.low for t in self.toks[i:k] if t.word]):
            return None                      # "by she"
        i0 = i - 1 if st.adjacent and self.adverb_before(i) else i      # "flying low over the sea"
        self.add(self.scene, self.norm_text(i0, k))
        self.take(i0, k)
        if st.adjacent:                      # "a cabin by a lake under the lights": still the cabin
            st.last_end = k
        return k

    def rule_qualifier(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Qualifiers of the previous subject: "with a red collar", "made of wood", "facing a
        dragon"; but "a purple triangle with a green square" is two subjects of one kind."""
        if not st.adjacent:
            return None
        toks = self.toks
        low = toks[i].low
        if low == "with":
            np = self.noun_phrase(i + 1, end, as_subject=True)
            if np is not None and same_kind(self.subjects[st.group[-1]]["noun"], np[0]["noun"]):
                self.take(i, i + 1)
                st.last_end, st.list_next = i + 1, True
                return i + 1
        transitive = (low.endswith("ing") and i + 1 < end
                      and (toks[i + 1].low in DETERMINERS or self.count_at(i + 1) is not None))
        if not (low in QUALIFIER_WORDS or transitive):
            return None
        k = self.phrase_until_boundary(i + 1, end)
        if k == i + 1 and i + 2 < end and toks[i + 1].low in PREPOSITIONS:   # "made of wood"
            k = self.phrase_until_boundary(i + 2, end)
        if k <= i + 1 or is_fragment([t.low for t in toks[i:k] if t.word]):   # "playing with", "with it"
            return None
        # "with silver hair and freckles": a bare noun after "and" belongs to the same phrase
        while (k + 1 < end and toks[k].low == "and" and toks[k + 1].word and not self.is_boundary(k + 1)
               and not is_noun_like(toks[k + 1].low)):
            k2 = self.phrase_until_boundary(k + 1, end)
            if k2 <= k + 1:
                break
            k = k2
        self.add(self.subjects[st.group[-1]]["attributes"], self.norm_text(i, k))
        self.take(i, k)
        st.last_end = k
        # what follows is about this subject only, and a list after it starts afresh
        st.group, st.group_open = st.group[-1:], False
        return k

    def rule_verb(self, i: int, end: int, st: _ClauseState) -> int | None:
        """A copula with content after its subject: "the statue sits on the moon" (a statue
        sitting), "a map showing a bay" (with its object). Elsewhere it stays as written."""
        toks = self.toks
        low = toks[i].low
        if low not in POSTURE_VERBS and low not in TRANSITIVE_VERBS:
            return None
        if not st.adjacent or st.pending_rel is not None:     # "On the hill stands a castle"
            return i + 1
        if low in TRANSITIVE_VERBS:
            k = self.phrase_until_boundary(i + 1, end)
            if k <= i + 1:
                return i + 1
            text = f"{TRANSITIVE_VERBS[low]} {self.norm_text(i + 1, k)}"
            self.add(self.subjects[st.group[-1]]["attributes"], text)
            st.group, st.group_open = st.group[-1:], False
        else:
            k = i + 1
            for s in st.group:
                self.add(self.subjects[s]["attributes"], POSTURE_VERBS[low])
        self.take(i, k)
        st.last_end = k
        return k

    def rule_bridge(self, i: int, end: int, st: _ClauseState) -> int | None:
        """A verb between a subject and its relation: "the phone was resting on the charger" (an
        -ing or -ed form qualifies the subject), "the sun shone down on the water" (another verb,
        with its particle, stays as written); the relation still binds to the subject."""
        toks = self.toks
        low = toks[i].low
        if not st.adjacent or not toks[i].word or low in GRAMMAR_WORDS or low in COPULAS:
            return None
        j = i + 1
        if j < end and toks[j].low in PARTICLES and not _match(toks, j, RELATION_PHRASES):
            j += 1                                          # "shone down on"
        if not (j < end and _match(toks, j, RELATION_PHRASES)):
            return None
        if j == i + 1 and low.endswith(("ing", "ed")):
            for s in st.group:
                self.add(self.subjects[s]["attributes"], low)
            self.take(i, j)
        st.last_end = j
        return j

    def rule_filler(self, i: int, end: int, st: _ClauseState) -> int | None:
        """List words and copulas: "and", ",", "is", "which"."""
        low = self.toks[i].low
        if low not in LIST_WORDS and low not in COPULAS:
            return None
        self.take(i, i + 1)
        if st.last_end == i:
            st.last_end = i + 1
        if low in LIST_WORDS and st.last_end == i + 1:
            st.list_next = True
        return i + 1

    def rule_elliptic(self, i: int, end: int, st: _ClauseState) -> int | None:
        """ "a red, a green and a blue ball": colours now, the noun comes later."""
        if self.noun_phrase(i, end, as_subject=True) is not None:
            return None
        ell = self.elliptic(i, end)
        if ell is None:
            return None
        if not st.elliptic:
            st.elliptic_joins = st.list_next and st.last_end == i and st.group_open and bool(st.group)
        st.elliptic = st.elliptic + [ell]     # never changed in place: snapshots share it
        self.take(i, ell[2])
        st.last_end = ell[2]
        return ell[2]

    def rule_subject(self, i: int, end: int, st: _ClauseState) -> int | None:
        """A noun phrase: a new subject (or "the cat" again), which takes the elliptic subjects,
        the position and the relation that were waiting for it."""
        np = self.noun_phrase(i, end, as_subject=True)
        if np is None:
            return None
        subj, j = np
        for n_part, (part, a, b) in enumerate(st.elliptic):
            part = dict(part, noun=subj["noun"])     # the waiting part is shared with snapshots
            idx = self.add_subject(part, a, b)
            if n_part == 0 and not st.elliptic_joins:
                st.group, st.group_open = [idx], True
            else:
                st.group = st.group + [idx]
            st.list_next, st.last_end = True, i
        st.elliptic = []
        if st.pending_pos:
            subj["attributes"].append(st.pending_pos[0])
            st.pending_pos = None
        idx = self.add_subject(subj, i, j)
        self.take(i, j)
        if st.pending_rel is not None:
            rel, obj, obj2, text, _ = st.pending_rel
            self.add_relation(idx, obj, rel, obj2, text)
            st.pending_rel = None
        if st.list_next and st.last_end == i and st.group_open:
            st.group = st.group + [idx]
        else:
            st.group = [idx]
            st.group_open = True
        st.list_next = False
        st.last_end = j
        return j

    def rule_trailing(self, i: int, end: int, st: _ClauseState) -> int | None:
        """Trailing words of the previous subject: "a dog running happily", "the cat is black"."""
        t = self.toks[i]
        if not (st.adjacent and not st.at_seg_start and t.word and t.low not in FUNCTION_WORDS):
            return None
        k = self.scan_until("boundary", i, end)
        if k <= i:
            return None
        subj = self.subjects[st.group[-1]]
        color = COLOR_ALIASES.get(self.norm_text(i, k), self.norm_text(i, k))
        if color in BASIC_COLORS and subj["color"] is None:
            self.set(subj, "color", color)
        else:
            self.add(subj["attributes"], self.norm_text(i, k))
        self.take(i, k)
        st.last_end = k
        return k

    CLAUSE_RULES = (rule_style, rule_negation, rule_order, rule_joiner, rule_solitary, rule_frame,
                    rule_pronoun, rule_adverb, rule_position, rule_relation, rule_scene,
                    rule_qualifier, rule_verb, rule_bridge, rule_filler, rule_elliptic, rule_subject,
                    rule_trailing)
    # Each rule's first test, on the token alone (its lower-case text, and whether it is a word):
    # the scan asks a rule only where it can start, since asking every rule at every token cost
    # more than the rules' own work. A rule missing here is asked everywhere.
    RULE_STARTS = {
        rule_style: lambda low, word: word,
        rule_negation: lambda low, word: low in _starts(NEGATION_TABLE),
        rule_order: lambda low, word: low in _starts(ORDER_PHRASES),
        rule_joiner: lambda low, word: low in _starts(LIST_TABLE),
        rule_solitary: lambda low, word: low in _starts(SOLITARY_TABLE),
        rule_frame: lambda low, word: low in ("in", "within"),
        rule_pronoun: lambda low, word: low in ("he", "she", "it", "they"),
        rule_adverb: lambda low, word: low in DEGREE_ADVERBS,
        rule_position: lambda low, word: low in _starts(POSITION_PHRASES),
        rule_relation: lambda low, word: low in _starts(RELATION_PHRASES),
        rule_scene: lambda low, word: low in SCENE_ONLY_PREPOSITIONS,
        rule_qualifier: lambda low, word: low == "with" or low in QUALIFIER_WORDS or low.endswith("ing"),
        rule_verb: lambda low, word: low in POSTURE_VERBS or low in TRANSITIVE_VERBS,
        rule_bridge: lambda low, word: word and low not in GRAMMAR_WORDS and low not in COPULAS,
        rule_filler: lambda low, word: low in LIST_WORDS or low in COPULAS,
        rule_elliptic: lambda low, word: low in ("a", "an", "one") or _may_count(low),
        rule_subject: lambda low, word: word,
        rule_trailing: lambda low, word: word and low not in FUNCTION_WORDS,
    }
    _rules_at: dict = {}

    @classmethod
    def rules_at(cls, tok: Token) -> tuple:
        """The clause rules that can start at `tok`, in priority order (cached per word)."""
        key = (tok.low, tok.word)
        rules = cls._rules_at.get(key)
        if rules is None:
            if len(cls._rules_at) > 50_000:      # a long-running server sees endless new words
                cls._rules_at.clear()
            rules = cls._rules_at[key] = tuple(r for r in cls.CLAUSE_RULES
                                               if cls.RULE_STARTS.get(r, lambda low, word: True)(*key))
        return rules

    def style_or_intro(self, i: int, end: int, at_seg_start: bool) -> int | None:
        """Style phrases and "a photo of"; returns the next index if it consumed something."""
        toks = self.toks
        low = toks[i].low
        if _MM_RE.match(low):                                   # "35mm", "f/1.8"
            self.add(self.style["camera"], low)
            self.take(i, i + 1)
            return i + 1
        if i + 1 < end and toks[i + 1].low in ("lighting", "light", "lights") and toks[i].word and (
                low not in BASIC_COLORS and low not in FUNCTION_WORDS and low not in LIGHT_OBJECTS
                and (toks[i + 1].low == "lighting" or low in ("warm", "soft", "cold", "neon", "natural", "dim"))):
            self.add(self.style["lighting"], self.norm_text(i, i + 2))   # "moody lighting"
            self.take(i, i + 2)
            return i + 2
        if at_seg_start:
            j = self.style_segment(i, end)      # "..., soft natural light from the left, ..."
            if j is not None:
                return j
        if low == "shot" and i + 1 < end and toks[i + 1].low in ("on", "with"):   # "shot on 85mm"
            j = i + 2
            while j < end and toks[j].low != ",":
                j += 1
            self.add(self.style["camera"], self.norm_text(i, j))
            self.take(i, j)
            return j
        if low == "in" and i + 3 < end and [t.low for t in toks[i + 1:i + 4]] == ["the", "style", "of"]:
            j = i + 4
            while j < end and toks[j].low != ",":
                j += 1
            self.add(self.style["medium"], self.norm_text(i, j))          # "in the style of van gogh"
            self.take(i, j)
            return j
        if i + 1 < end and toks[i + 1].low == "style" and toks[i].word and low not in FUNCTION_WORDS:
            k = i - 1 if i > 0 and toks[i - 1].low == "in" and not self.used[i - 1] else i
            self.add(self.style["medium"], self.norm_text(i, i + 2))   # "(in) anime style"
            self.take(k, i + 2)
            return i + 2
        m = _match(toks, i, STYLE_TABLE)
        if m:
            k, fld = m
            ambiguous = fld == "mood" or (fld == "composition" and k == 1 and low in AMBIGUOUS_COMPOSITION)
            if not ambiguous or self.segment_is_style_only(i, end):
                target = self.composition if fld == "composition" else self.style[fld]
                self.add(target, self.norm_text(i, i + k))
                self.take(i, i + k)
                return i + k
        # "a photo of", "a close-up of", "an image of"
        j = i + 1 if low in ("a", "an", "the") else i
        moods = self.follow("moods", j, end,                       # "a cinematic photo of"
                            lambda p: (1, None) if p < end and toks[p].low in MOOD_SINGLE else (0, p))
        if moods >= end or toks[moods].low not in _FRAMING_STARTS:
            return None                      # no framing word: nothing below can match
        nxt = self.framing_chain(i, j, moods, end)
        if nxt is not None:
            return nxt
        m = _match(toks, moods, INTRO_TABLE) if moods < end else None
        # "of" introduces the subject anywhere; "showing", "with", "containing" ... only at the
        # start of a segment, where the picture is framing ("a cat with a picture of ..." is not)
        lead = _match(toks, moods + m[0], LEADER_TABLE) if m else None
        if lead and toks[moods + m[0]].low != "of" and (not at_seg_start or moods + m[0] + lead[0] >= end):
            lead = None
        if m and moods > j and not lead:
            m = None
        if m and moods > j:
            self.add(self.style["mood"], *(t.low for t in toks[j:moods]))
            j = moods
        if m and lead:
            k, fld = m
            if fld == "composition":
                self.add(self.composition, self.norm_text(j, j + k))
            elif fld == "medium":
                self.add(self.style["medium"], self.norm_text(j, j + k))
            self.take(i, j + k + lead[0])
            return j + k + lead[0]
        # a comma segment that is only a medium word: "..., oil painting"
        if m and m[1] and at_seg_start and self.segment_is_style_only(i, end):
            k, fld = m
            self.add(self.composition if fld == "composition" else self.style[fld], self.norm_text(j, j + k))
            self.take(i, j + k)
            return j + k
        return None

    def framing_chain(self, i: int, j: int, moods: int, end: int) -> int | None:
        """ "a close-up portrait of", "a black and white studio photo of": several framing words
        in a row before "of" (toks[j:moods] are mood words, toks[i:j] the article)."""
        toks = self.toks

        def framing(p: int):
            m = _match(toks, p, INTRO_TABLE) or _match(toks, p, STYLE_TABLE) if p < end else None
            return (m[0], m) if m and m[1] and m[1] != "mood" else (0, (p, 0))

        p, length = self.follow("framing", moods, end, framing, lambda m, rest: (rest[0], rest[1] + 1))
        if length < 2 or not (p < end and toks[p].low == "of"):
            return None
        chain, q = [], moods
        while q < p:
            m = framing(q)[1]
            chain.append((q, m))
            q += m[0]
        self.add(self.style["mood"], *(t.low for t in toks[j:moods]))
        for q, (k, fld) in chain:
            self.add(self.composition if fld == "composition" else self.style[fld], self.norm_text(q, q + k))
        self.take(i, p + 1)
        return p + 1

    def frame_phrase(self, i: int, end: int) -> int | None:
        """ "in the picture", "in this photo" closing a phrase: the picture itself, not a place in
        it. A medium word ("photo") is the medium; "image", "picture", "scene" add nothing."""
        toks = self.toks
        if not (i + 2 < end and toks[i].low in ("in", "within") and toks[i + 1].low in ("the", "this", "that")):
            return None
        m = _match(toks, i + 2, INTRO_TABLE)
        if m is None or m[1] == "composition":
            return None
        j = i + 2 + m[0]
        if j < end and toks[j].word and toks[j].low not in LIST_WORDS:
            return None                      # "in the picture frame", "in the image of a ..."
        if m[1] == "medium":
            self.add(self.style["medium"], self.norm_text(i + 2, j))
        self.take(i, j)
        return j

    def style_segment(self, i: int, end: int) -> int | None:
        """A short comma segment that ends in a style head is style as a whole:
        "minimalist food photography" (medium), "soft morning light" (lighting)."""
        toks = self.toks
        e = i
        while e < end and toks[e].low != ",":
            e += 1
        if not 2 <= e - i <= 7:
            return None
        # a lighting direction: "soft natural light from the left"
        tail_end = e
        for k in range(i + 1, e):
            if toks[k].low == "from" and toks[k - 1].low in ("light", "lighting", "lights", "sunlight"):
                tail_end = k
                break
        words = toks[i:tail_end]
        if any(not t.word or t.low in DETERMINERS or self.count_at(i + n) is not None
               for n, t in enumerate(words)):
            return None
        fld = None
        for k in (3, 2, 1):
            if len(words) <= k:
                continue
            start = tail_end - k
            m = _match(toks, start, STYLE_TABLE) or _match(toks, start, INTRO_TABLE)
            if m and m[0] == k and m[1] and m[1] != "mood":
                fld = m[1]
                break
        last = words[-1].low
        if fld is None and last in ("light", "lighting", "lights") and words[-2].low not in LIGHT_OBJECTS:
            fld, k = "lighting", 1
        if fld is None or any(is_noun_like(t.low) and t.low not in SCENE_NOUNS
                              for t in toks[i:tail_end - k]):
            return None
        self.add(self.composition if fld == "composition" else self.style[fld], self.norm_text(i, e))
        self.take(i, e)
        return e

    def negation(self, i: int, end: int) -> int | None:
        """ "no people", "without text or watermarks": returns the next index, or None."""
        toks = self.toks
        m = _match(toks, i, NEGATION_TABLE)
        if not m:
            return None
        j = i + m[0]
        got = False
        while j < end:
            k = self.phrase_until_boundary(j, end)
            if k == j:
                break
            words = [w.low for w in toks[j:k] if w.low not in DETERMINERS and w.low != "any"]
            if words:
                self.add(self.negatives, " ".join(words))
                got = True
            j = k
            if (j + 1 < end and toks[j].low in ("or", "and", "nor") and toks[j + 1].word
                    and not self.is_boundary(j + 1)):
                j += 1
                continue
            break
        if not got:
            return None
        self.take(i, j)
        return j

    def relation(self, i: int, k: int, rel: str, end: int, st: "_ClauseState", adjacent: bool) -> int | None:
        """A relation phrase at toks[i:i+k] and its object; returns the next index, or None."""
        toks = self.toks
        group = st.group if adjacent else []
        j = i + k
        # "a bird high above a house": an adverb with content goes with the relation
        adverb = self.adverb_before(i) if group else ""
        i0 = i - 1 if adverb else i
        # "next to each other", "above one another"
        if j + 1 < end and (toks[j].low, toks[j + 1].low) in (("each", "other"), ("one", "another")):
            if len(group) < 2:
                return None
            text = self.norm_text(i0, j + 2)
            for a, b in zip(group, group[1:]):
                self.add_relation(a, b, rel, None, text, adverb)
            self.take(i0, j + 2)
            st.last_end = j + 2
            return j + 2
        if j < end and toks[j].low in ("it", "them") and group:
            # "a phone next to it": the subject named just before this group
            members = set(group)
            earlier = next((s for s in reversed(range(len(self.subjects))) if s not in members), None)
            if earlier is None:
                return None
            text = self.norm_text(i0, j + 1)
            for s in group:
                self.add_relation(s, earlier, rel, None, text, adverb)
            self.take(i0, j + 1)
            st.last_end = j + 1
            return j + 1
        np = self.noun_phrase(j, end, as_subject=False)
        if np is None:
            return None
        obj, j2 = np
        noun = obj["noun"]
        head = noun.split()[-1]
        is_scene = head in SCENE_NOUNS and noun not in KNOWN_NOUNS - {"wall", "sky", "water"}
        if is_scene and rel in ("on", "inside", "under", "above", "below", "behind", "next to", "in front of"):
            self.add(self.scene, self.norm_text(i0, j2))        # "on a beach", "in a forest"
            self.take(i0, j2)
            if adjacent:
                st.last_end = j2
            return j2
        if rel == "inside" and toks[i].low == "in" and k == 1 and noun not in CONTAINER_NOUNS:
            if adjacent:                                      # "a woman in a red dress"
                self.add(self.subjects[group[-1]]["attributes"], self.norm_text(i, j2))
                self.take(i, j2)
                st.last_end = j2
                return j2
            return None
        obj2_idx, end_tok = None, j2
        if rel == "between":
            if not (j2 + 1 < end and toks[j2].low in ("and", "&")):
                return None
            np2 = self.noun_phrase(j2 + 1, end, as_subject=False)
            if np2 is None:
                return None
            obj2, end_tok = np2
        if not group and not st.seg_start_at(i, self):
            return None
        obj_idx = self.add_subject(obj, j, j2)
        if rel == "between":
            obj2_idx = self.add_subject(obj2, j2 + 1, end_tok)
        text = self.norm_text(i0, end_tok)
        self.take(i0, end_tok)
        if group:
            for s in group:
                self.add_relation(s, obj_idx, rel, obj2_idx, text, adverb)
        else:   # "Above the table, a lamp": the subject comes later
            st.pending_rel = (rel, obj_idx, obj2_idx, text, (i, i + k))
        st.group, st.group_open, st.list_next = [obj_idx], False, False
        st.last_end = end_tok
        return end_tok

    def add_subject(self, subj: dict, i: int, j: int) -> int:
        """Add a subject, or return the earlier one that "the <noun>" refers to."""
        det = subj.pop("_det", None)
        if det == "the":
            for k, old in enumerate(self.subjects):
                if (old["noun"] == subj["noun"] and subj["color"] in (None, old["color"])
                        and all(a in old["attributes"] for a in subj["attributes"])):
                    return k
        self.add(self.subjects, subj)
        self.add(self.spans, (i, j))
        return len(self.subjects) - 1

    def adverb_before(self, i: int) -> str:
        """The adverb with content that `rule_adverb` left unread right before toks[i] ("high"
        in "high above"), or ""."""
        t = self.toks[i - 1] if i > 0 else None
        if t is None or self.used[i - 1] or t.low not in DEGREE_ADVERBS or t.low in GRAMMAR_WORDS:
            return ""
        return t.low

    def add_relation(self, s: int, o: int, rel: str, o2: int | None, text: str, adverb: str = "") -> None:
        # the text a dropped relation leaves in `unparsed` names its subject: "the sun behind it"
        if s == o or (o2 is not None and s == o2) or o == o2:
            self.add(self.lost, f"{self.norm_text(*self.spans[s])} {text}")   # "the cat left of the cat"
            return
        key = (s, o, rel, o2)
        if key in self._relation_keys:     # stated before
            return
        r = {"subject": s, "object": o, "relation": rel}
        if o2 is not None:
            r["object2"] = o2
        if adverb:
            r["adverb"] = adverb
        self._relation_keys.add(key)
        self.journal.append((self._relation_keys, key))              # undone by discarding the key
        self.add(self.relations, r)
        self.add(self.relation_texts, f"{self.norm_text(*self.spans[s])} {text}")

    def unused_runs(self, start: int, end: int):
        """(i, j, a, b) for each run toks[i:j] of unused tokens in [start, end); toks[a:b] is the
        run without list punctuation and conjunctions at its edges (a == b: no word in it)."""
        i = start
        while i < end:
            if self.used[i] or self.toks[i].low in CLAUSE_END:
                i += 1
                continue
            j = i
            while j < end and not self.used[j] and self.toks[j].low not in CLAUSE_END:
                j += 1
            a, b = i, j
            while a < b and (not self.toks[a].word or self.toks[a].low in ("and", "or")):
                a += 1
            while b > a and (not self.toks[b - 1].word or self.toks[b - 1].low in ("and", "or")):
                b -= 1
            yield i, j, a, b
            i = j

    def has_fragment(self, start: int, end: int) -> bool:
        """Some unused run in [start, end) is a stray piece of a phrase ("under", "he, next to").
        The runs are read from the end: a piece left by an undo is most often the last one."""
        toks, used = self.toks, self.used
        j = end
        while j > start:
            if used[j - 1] or toks[j - 1].low in CLAUSE_END:
                j -= 1
                continue
            i = j                            # the run toks[i:j], as `unused_runs` finds it
            while i > start and not used[i - 1] and toks[i - 1].low not in CLAUSE_END:
                i -= 1
            words = [t.low for t in toks[i:j] if t.word]
            while words and words[0] in ("and", "or"):        # the edges `unused_runs` trims
                words.pop(0)
            while words and words[-1] in ("and", "or"):
                words.pop()
            if words and is_fragment(words):
                return True
            j = i
        return False

    def unparsed(self) -> list[str]:
        """Verbatim runs of tokens nobody used (punctuation-only runs are dropped)."""
        runs = []
        for i, j, a, b in self.unused_runs(0, len(self.toks)):
            if a < b:
                runs.append(self.span_text(a, b))
            elif any(not t.word and t.low not in (",", "\n") for t in self.toks[i:j]):
                # keep symbols such as emoji or "#" even without words around them
                runs.append(self.span_text(i, j).strip(" ,"))
        return [r for r in runs if r]


def _color_and_attributes(modifiers: list[str]) -> tuple[str | None, list[str]]:
    """The first basic colour word is the colour; every other modifier is an attribute, in order."""
    color, attributes = None, []
    for m in modifiers:
        c = COLOR_ALIASES.get(m, m)
        if c in BASIC_COLORS and color is None:
            color = c
        else:
            attributes.append(m)
    return color, attributes


def _positions_to_relations(subjects: list[dict], relations: list[dict], texts: list[str]) -> None:
    """ "On the left, X; on the right, Y" -> X left of Y (and the positions become the relation)."""
    placed = [(i, a) for i, s in enumerate(subjects) for a in s["attributes"] if a in POSITIONS]
    if len(placed) != 2:
        return
    (i, a), (j, b) = placed
    pairs = {("on the left", "on the right"): "left of", ("on the right", "on the left"): "right of",
             ("at the top", "at the bottom"): "above", ("at the bottom", "at the top"): "below",
             ("in the background", "in the foreground"): "behind",
             ("in the foreground", "in the background"): "in front of"}
    rel = pairs.get((a, b))
    if rel is None or i == j:
        return
    if any({r["subject"], r["object"]} == {i, j} for r in relations):
        return
    subjects[i]["attributes"].remove(a)
    subjects[j]["attributes"].remove(b)
    relations.append({"subject": i, "object": j, "relation": rel})
    texts.append(f"{a} ... {b}")


def parse_prompt(text: str) -> tuple[dict, list[str]]:
    """The plan dictionary for `text` (without layout) and the source text of each relation."""
    p = _Parser(text)
    p.parse()
    _positions_to_relations(p.subjects, p.relations, p.relation_texts)
    plan = {
        "subjects": p.subjects,
        "relations": p.relations,
        "scene": " ".join(p.scene),
        "style": {k: ", ".join(dict.fromkeys(v)) for k, v in p.style.items()},
        "composition": ", ".join(dict.fromkeys(p.composition)),
        "negatives": list(dict.fromkeys(p.negatives)),
        "unparsed": p.unparsed() + p.lost,
    }
    return plan, list(p.relation_texts)
