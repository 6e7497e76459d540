"""The reasoning model behind the Reasoning Plan node's `planner` choice: `rules` or an LLM folder.

LLM folders (Qwen2.5-Instruct, Qwen3) are listed from `models/uni1/` and, where present,
`models/LLM/` (a folder other node packs also use; listed as `LLM/<name>`). A name from a workflow
is untrusted input and goes through the same checks as a model name (paths.resolve_local).

The loaded reasoner is kept between runs (loading a 1.7B model costs seconds) in one slot: a
different folder or precision replaces it. Its transformer is registered with ComfyUI's model
manager like the image model, so it moves to the GPU only while it plans, and ComfyUI offloads it
when the 7B image model (or anything else) needs the memory; 'Unload models' does the same.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from . import paths, runtime

log = logging.getLogger("uni1")

RULES = "rules"
LLM_FOLDER = "LLM"
REASONER_MODEL_TYPES = paths.TEXT_MODEL_TYPES          # Qwen2 / Qwen2.5-Instruct, Qwen3


# ---------------------------------------------------------------------------------------------
# which folders hold a reasoner

def llm_roots() -> list[Path]:
    """`models/LLM` folders: ComfyUI's registered ones if another pack registered the name,
    else `models/LLM` when it exists."""
    fp = paths._folder_paths()
    if fp is None:
        return []
    if LLM_FOLDER in fp.folder_names_and_paths:
        return [Path(p) for p in fp.get_folder_paths(LLM_FOLDER)]
    default = Path(fp.models_dir) / LLM_FOLDER
    return [default] if default.is_dir() else []


def _is_reasoner_folder(folder: Path) -> bool:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return config.get("model_type") in REASONER_MODEL_TYPES and (folder / "tokenizer.json").is_file()


def list_planners() -> list[str]:
    """Combo choices: `rules` first, then the reasoner folders found."""
    found = []
    for prefix, roots in (("", paths.model_roots()), (LLM_FOLDER + "/", llm_roots())):
        for root in roots:
            for d in paths._children(root):
                if _is_reasoner_folder(d):
                    found.append(prefix + d.relative_to(root).as_posix())
    return [RULES] + sorted(set(found))


def resolve_planner(name: str) -> Path:
    """The folder a planner name means; ModelPathError (with what to do) when there is none."""
    name = paths.check_name(name)
    prefix = LLM_FOLDER + "/"
    local = None
    if name.startswith(prefix):
        local = paths.resolve_local(name[len(prefix):], roots=llm_roots())
    if local is None:
        local = paths.resolve_local(name)
    if local is None or not local.is_dir():
        raise paths.ModelPathError(
            f"planner {name!r} is not a folder in ComfyUI/models/{paths.FOLDER}/ or models/{LLM_FOLDER}/. Put a "
            "Qwen2.5-Instruct or Qwen3 folder (config.json, tokenizer.json, *.safetensors) there and pick it, "
            f"or pick '{RULES}'.")
    if not _is_reasoner_folder(local):
        raise paths.ModelPathError(
            f"planner {name!r} is not a Qwen2 / Qwen3 text model folder (config.json model_type must be one of "
            f"{', '.join(REASONER_MODEL_TYPES)}, and tokenizer.json must be present).")
    return local


def validate_planner(name) -> bool | str:
    """VALIDATE_INPUTS helper: True, or the message the UI shows."""
    if name is None or name == RULES:
        return True
    try:
        resolve_planner(name)
    except paths.ModelPathError as exc:
        return str(exc)
    return True


# ---------------------------------------------------------------------------------------------
# the loaded reasoner

@dataclass
class _Loaded:
    key: tuple
    reasoner: object            # uni1_core.reasoner.Reasoner
    managed: runtime.Managed


_slot: dict = {}


def get_reasoner(name: str, dtype: str = "auto"):
    """The reasoner of a planner folder, on the compute device, loaded once and kept in one slot."""
    from ..uni1_core.reasoner import Reasoner
    folder = resolve_planner(name)
    torch_dtype = runtime.pick_dtype(dtype, runtime.torch_device())
    key = (str(folder), os.path.getmtime(folder / "config.json"), str(torch_dtype))
    loaded = _slot.get("reasoner")
    if loaded is None or loaded.key != key:
        _slot.clear()            # drop the old reasoner before loading the next one
        log.info("uni1: loading reasoner %s (%s)", folder, torch_dtype)
        reasoner = Reasoner.from_pretrained(folder, dtype=torch_dtype, device=runtime.offload_device())
        reasoner.name = name
        loaded = _slot["reasoner"] = _Loaded(key, reasoner, runtime.Managed.wrap(reasoner.generator.model))
    loaded.managed.load()
    return loaded.reasoner


def unload_reasoner() -> None:
    _slot.clear()


def run_planner(name: str, prompt: str, *, thinking: bool = True, max_tokens: int = 1024,
                temperature: float = 0.6, seed: int = 0, dtype: str = "auto"):
    """A ReasonedPlan for `prompt` from the planner `name` (`rules`: the rule planner)."""
    from ..uni1_core.plan import make_plan
    from ..uni1_core.reasoner import ReasonedPlan
    from ..uni1_core.sampler import Cancelled
    from ..uni1_core.textgen import TextSettings

    if not prompt or not prompt.strip():
        raise ValueError("the prompt is empty: describe the image to generate")
    if name == RULES:
        plan = make_plan(prompt)
        return ReasonedPlan(plan, "", plan.conditioning_text(), RULES)
    reasoner = get_reasoner(name, dtype)
    settings = TextSettings(max_new_tokens=int(max_tokens), max_thinking_tokens=int(max_tokens) if thinking else 0,
                            temperature=float(temperature), seed=int(seed))
    progress = runtime.Progress(int(max_tokens))   # each attempt reports its own total
    try:
        return reasoner.plan(prompt, settings, on_progress=progress.on_progress, should_cancel=runtime.interrupted)
    except Cancelled:
        runtime.raise_interrupt()
    finally:
        runtime.free_cache()


def ui_of(result) -> dict:
    """What the node shows (web/uni1.js): the thinking, the detailed prompt, where the plan came from."""
    return {"uni1_thinking": [result.thinking], "uni1_detailed_prompt": [result.detailed_prompt],
            "uni1_reasoner_report": [result.report()]}


def planner_input() -> tuple:
    """The `planner` widget of the Reasoning Plan node."""
    return (list_planners(), {
        "default": RULES,
        "tooltip": "rules: the built-in rule planner (exact, instant). Or a Qwen2.5-Instruct / Qwen3 folder from "
                   "models/uni1/ or models/LLM/: it thinks about the prompt, writes a detailed description and the "
                   "plan. An answer it cannot read twice falls back to the rules, and the node says so."})
