"""Planner speed on hostile prompts: `make_plan` on each 2,000-character prompt of the limits test.

    python bench/planner_speed.py                      # this checkout
    python bench/planner_speed.py --against ../main    # side by side with another checkout

Issue 16 asks for planning under 50 ms for any prompt of up to 2,000 characters. The prompts
are `ADVERSARIAL` in tests/test_plan_limits.py (the test holds each to 50 ms): long runs of words
of every lexicon class, one-letter clauses and comma segments, symbols, emoji, accents, CJK,
collective and framing chains, many subjects, relations and contradictions. Each is timed as
the best of 3 after a warm-up (a plan error, e.g. too many subjects, counts as a plan), then
the PartiPrompts corpus (bench/data) gives the time of an ordinary prompt. With `--against`,
the other checkout runs the same prompts in its own process and the table shows both times and
their ratio.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def adversarial_prompts() -> dict[str, str]:
    """The limits test's prompts, cut to 2,000 characters (read from the test file's text, so
    that this bench needs neither pytest nor hypothesis)."""
    src = (ROOT / "tests" / "test_plan_limits.py").read_text(encoding="utf-8")
    start = src.index("ADVERSARIAL = {")
    end = src.index("\n}\n", start) + 3
    scope: dict = {}
    exec(src[start:end], scope)    # a dict literal of string expressions, from this repository
    return {name: text[:2000] for name, text in scope["ADVERSARIAL"].items()}


def parti_prompts() -> list[str]:
    with open(ROOT / "bench" / "data" / "PartiPrompts.tsv", encoding="utf-8", newline="") as f:
        return [row["Prompt"] for row in csv.DictReader(f, delimiter="\t")]


def time_here(root: Path, prompts: dict[str, str], corpus: list[str]) -> dict[str, float]:
    """Milliseconds per prompt with the planner of the checkout at `root` (this process)."""
    sys.path.insert(0, str(root))
    from uni1_core.plan import PlanError, make_plan

    def plan(text: str) -> None:
        try:
            make_plan(text)
        except PlanError:
            pass

    out = {}
    for name, text in prompts.items():
        plan(text)
        best = float("inf")
        for _ in range(3):
            start = time.perf_counter()
            plan(text)
            best = min(best, time.perf_counter() - start)
        out[name] = 1000 * best
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for text in corpus:
            plan(text)
        best = min(best, time.perf_counter() - start)
    out["(PartiPrompts, per prompt)"] = 1000 * best / len(corpus)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--against", type=Path, help="another checkout of this repository to compare with")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)    # used by --against
    args = ap.parse_args()
    prompts, corpus = adversarial_prompts(), parti_prompts()
    if args.json:
        print(json.dumps(time_here(Path.cwd(), prompts, corpus)))
        return
    other = None
    if args.against:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--json"]
        other = json.loads(subprocess.run(cmd, cwd=args.against, check=True, capture_output=True,
                                          text=True).stdout)
    mine = time_here(ROOT, prompts, corpus)
    rows = sorted(mine, key=lambda k: -(other or mine)[k])
    if other:
        print(f"{'prompt (2,000 characters)':<30}{'other ms':>10}{'this ms':>10}{'speed-up':>10}{'/ 50 ms':>9}")
        for k in rows:
            print(f"{k:<30}{other[k]:>10.2f}{mine[k]:>10.2f}{other[k] / mine[k]:>9.1f}x{mine[k] / 50:>9.2f}")
    else:
        print(f"{'prompt (2,000 characters)':<30}{'ms':>10}{'/ 50 ms':>9}")
        for k in rows:
            print(f"{k:<30}{mine[k]:>10.2f}{mine[k] / 50:>9.2f}")
    worst = max((k for k in mine if not k.startswith("(")), key=mine.get)
    print(f"worst: {worst}, {mine[worst]:.1f} ms")


if __name__ == "__main__":
    main()
