"""Requests the model cannot serve are refused before anything is allocated, with the fix."""
import time

import pytest

from uni1_core.pipeline import MAX_REGIONS, Uni1Pipeline
from uni1_core.plan import Plan, Subject


@pytest.fixture(scope="module")
def demo():
    return Uni1Pipeline.from_pretrained("demo")


def refused(fn, match: str) -> float:
    start = time.perf_counter()
    with pytest.raises(ValueError, match=match):
        fn()
    return time.perf_counter() - start


def test_a_prompt_longer_than_the_model_reads_is_refused_at_once(demo):
    """The demo model has 256 positions, 73 of them for a 64x64 image."""
    prompt = "a red circle and a blue square " * 3000        # 93k characters
    assert refused(lambda: demo.sample(prompt, conditioning="prompt"), "reads at most 183 beside a 64x64") < 1.0
    assert refused(lambda: demo.sample(prompt), "the planner reads at most") < 0.2


def test_regional_guidance_is_bounded(demo):
    plan = Plan(subjects=[Subject("circle", 10, "red"), Subject("square", 10, "blue")])
    message = f"regional guidance takes at most {MAX_REGIONS} boxes"
    assert refused(lambda: demo.sample(plan, regional=True), message) < 1.0
    # the same plan without regions is fine (cancelled at once: only the check is tested)
    from uni1_core.sampler import Cancelled
    with pytest.raises(Cancelled):
        demo.sample(plan, should_cancel=lambda: True)


def test_region_prompts_are_checked_too(demo):
    from uni1_core.sequence import ImageGrid
    grid = ImageGrid(64, 64)
    demo.check_length([1] * 183, [[1] * 20], grid)                     # fits exactly
    with pytest.raises(ValueError, match="the prompt is 184 tokens"):
        demo.check_length([1] * 10, [[1] * 20, [1] * 184], grid)      # a region's prompt is too long
