"""Regional guidance is bounded before anything is allocated, with the fix (the prompt's
positions are checked in tests/test_limits.py)."""
import time

import pytest

from uni1_core.limits import MAX_REGIONS
from uni1_core.pipeline import Uni1Pipeline
from uni1_core.plan import Plan, Subject


@pytest.fixture(scope="module")
def demo():
    return Uni1Pipeline.from_pretrained("demo")


def test_regional_guidance_is_bounded(demo):
    plan = Plan(subjects=[Subject("circle", 10, "red"), Subject("square", 10, "blue")])
    start = time.perf_counter()
    with pytest.raises(ValueError, match=f"regional guidance takes at most {MAX_REGIONS} boxes"):
        demo.sample(plan, regional=True)
    assert time.perf_counter() - start < 1.0
    # the same plan without regions is served (cancelled at once: only the check is tested)
    from uni1_core.sampler import Cancelled
    with pytest.raises(Cancelled):
        demo.sample(plan, should_cancel=lambda: True)


def test_a_long_prompt_with_conditioning_prompt_is_refused_before_sampling(demo):
    """Unplanned text skips the planner's limit; the model's positions still bound it."""
    start = time.perf_counter()
    with pytest.raises(ValueError, match="max_position_embeddings"):
        demo.sample("a red circle and a blue square " * 3000, conditioning="prompt")
    assert time.perf_counter() - start < 1.0
    with pytest.raises(ValueError, match="the planner reads at most"):
        demo.sample("a red circle and a blue square " * 3000)
