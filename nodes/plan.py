"""Uni1 Reasoning Plan: prompt -> structured plan, the text the model will see, and the plan JSON."""
from __future__ import annotations

from .handles import CATEGORY, UNI1_PLAN


def build_plan(prompt: str, plan_json: str = ""):
    """The plan for `prompt`, or the user's pinned/edited plan when `plan_json` is not empty."""
    from ..uni1_core.plan import Plan, PlanError, make_plan
    if plan_json and plan_json.strip():
        try:
            return Plan.from_json(plan_json)
        except (PlanError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the plan_json input is not a valid Uni1 plan ({exc}). Clear it to plan from "
                             f"the prompt again, or fix the JSON (the plan_json output shows the format).") from exc
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: describe the image to generate")
    return make_plan(prompt)


class Uni1ReasoningPlan:
    DESCRIPTION = ("Reasoning first: turns a prompt into a structured plan (objects, attributes, counts, layout) "
                   "and the conditioning text the model is given. The plan JSON can be edited and pasted into "
                   "plan_json to pin it, so every run uses exactly that plan.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_PLAN, "STRING", "STRING")
    RETURN_NAMES = ("plan", "conditioning", "plan_json")
    OUTPUT_TOOLTIPS = (
        "The structured plan; connect it to the sampler.",
        "The text the model is conditioned on (the plan rendered as a prompt).",
        "The plan as JSON; edit a copy and paste it into plan_json to pin it.",
    )
    FUNCTION = "plan"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "prompt": ("STRING", {
                    "multiline": True, "dynamicPrompts": True,
                    "default": "two red circles to the left of a blue square",
                    "tooltip": "What to draw. Counts, colours and positions ('left of', 'above') become "
                               "explicit entries of the plan."}),
            },
            "optional": {
                "plan_json": ("STRING", {
                    "multiline": True, "dynamicPrompts": False, "default": "",
                    "tooltip": "Leave empty to plan from the prompt. Paste (and edit) a plan JSON here to pin "
                               "it: the prompt is then ignored."}),
            },
        }

    def plan(self, prompt, plan_json=""):
        plan = build_plan(prompt, plan_json)
        text, as_json = plan.conditioning_text(), plan.to_json()
        # The web extension (web/uni1.js) shows these on the node.
        ui = {"uni1_plan_summary": [plan.summary()], "uni1_plan_json": [as_json],
              "uni1_conditioning": [text]}
        return {"ui": ui, "result": (plan, text, as_json)}
