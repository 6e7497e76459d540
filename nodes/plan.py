"""Uni1 Reasoning Plan: prompt (or another model's answer) -> structured plan, the exact text the
model will read, and the plan JSON."""
from __future__ import annotations

from dataclasses import dataclass, replace

from .handles import CATEGORY, UNI1_MODEL, UNI1_PLAN

AUTO = "auto"
CONDITIONING_TOOLTIP = (
    "What the model reads. prompt+plan: your prompt as typed, then short statements of what the plan is sure of "
    "(exact counts, left/right/above/below). plan: the plan's own sentence (what the demo model was trained on). "
    "prompt: your prompt, unplanned. auto: the model's default (demo: plan; Lumina-mGPT 2.0: prompt+plan).")


def conditioning_choices() -> list[str]:
    from ..uni1_core.conditioning import CONDITIONINGS
    return [AUTO, *CONDITIONINGS]


@dataclass
class PlannedPrompt:
    """What travels on a UNI1_PLAN socket: the plan and the conditioning chosen on the plan node
    ("auto": the model's default), which the sampler follows unless its own setting says otherwise."""
    plan: object                 # uni1_core.plan.Plan
    conditioning: str = AUTO


def build_plan(prompt: str, plan_json: str = "", reasoning: str = ""):
    """The plan: the user's pinned/edited `plan_json` if given, else the one in `reasoning` (another
    model's answer: a plan JSON becomes the plan, a rewritten prompt is planned), else `prompt`'s."""
    from ..uni1_core.plan import Plan, PlanError, make_plan
    if plan_json and plan_json.strip():
        try:
            return Plan.from_json(plan_json)
        except (PlanError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"the plan_json input is not a valid Uni1 plan ({exc}). Clear it to plan from "
                             f"the prompt again, or fix the JSON (the plan_json output shows the format).") from exc
    if reasoning and reasoning.strip():
        try:
            plan = Plan.from_text(reasoning)
        except PlanError as exc:
            raise ValueError(f"the reasoning input could not be read as a plan or a prompt ({exc}). Disconnect "
                             "it to plan from the prompt, or ask the language model for a plan JSON or a "
                             "plain prompt.") from exc
        if not plan.prompt and prompt and prompt.strip():
            plan = replace(plan, prompt=" ".join(prompt.split()))    # a plan JSON keeps the user's words
        return plan
    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: describe the image to generate")
    try:
        return make_plan(prompt)
    except PlanError as exc:
        raise ValueError(str(exc)) from exc


def model_reading(planned: PlannedPrompt, model=None) -> str:
    """The exact text the model reads for this plan: with a model connected, its default and its
    grounding map; without, as a model without grounding reads it."""
    from ..uni1_core.conditioning import default_conditioning, model_text
    if model is not None:
        pipe = model.pipe      # the settings only; no weights are moved
        return pipe.conditioning(planned.plan, conditioning=None if planned.conditioning == AUTO
                                 else planned.conditioning)[1]
    choice = default_conditioning({}) if planned.conditioning == AUTO else planned.conditioning
    return model_text(planned.plan, choice)[1]


class Uni1ReasoningPlan:
    DESCRIPTION = ("Reasoning first: turns a prompt (or another language model's answer) into a structured plan "
                   "(objects, attributes, counts, layout) and shows the exact text the model will read. The plan "
                   "JSON can be edited and pasted into plan_json to pin it, so every run uses exactly that plan.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_PLAN, "STRING", "STRING")
    RETURN_NAMES = ("plan", "conditioning", "plan_json")
    OUTPUT_TOOLTIPS = (
        "The structured plan and the conditioning choice; connect it to the sampler.",
        "The exact text the model reads (connect a model to this node to include its default and layout map).",
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
                "conditioning": (conditioning_choices(), {"default": AUTO, "tooltip": CONDITIONING_TOOLTIP}),
            },
            "optional": {
                "plan_json": ("STRING", {
                    "multiline": True, "dynamicPrompts": False, "default": "",
                    "tooltip": "Leave empty to plan from the prompt. Paste (and edit) a plan JSON here to pin "
                               "it: the prompt and reasoning are then ignored."}),
                "reasoning": ("STRING", {
                    "multiline": True, "dynamicPrompts": False, "default": "",
                    "tooltip": "Optional: the answer of any LLM or prompt-enhancer node (convert this widget to "
                               "an input and connect it). A plan JSON in it becomes the plan; a rewritten "
                               "prompt is planned instead of the prompt above. <think> blocks are ignored."}),
                "model": (UNI1_MODEL, {
                    "tooltip": "Optional: the model from Uni1 Model Loader, so that 'auto' and the shown text "
                               "are exactly that model's (its default choice and its layout map)."}),
            },
        }

    def plan(self, prompt, conditioning=AUTO, plan_json="", reasoning="", model=None):
        plan = build_plan(prompt, plan_json, reasoning)
        planned = PlannedPrompt(plan, conditioning)
        text = model_reading(planned, model)
        as_json = plan.to_json()
        # The web extension (web/uni1.js) shows these on the node.
        ui = {"uni1_plan_summary": [plan.summary()], "uni1_plan_json": [as_json],
              "uni1_conditioning": [text]}
        return {"ui": ui, "result": (planned, text, as_json)}
