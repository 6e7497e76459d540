"""nodes/reasoner.py with ComfyUI faked (as in test_nodes.py): which folders are offered as planners,
unsafe names, the reasoner kept in one managed slot, what the node shows, cancel."""
import importlib
import json
import sys

import pytest
import torch

from tests.test_nodes import PACK, FakeInterrupt, fake_comfy, load_pack
from tests.test_reasoner import GARBAGE, THINK_AND_FENCE, CannedGenerator

PROMPT = "two red circles to the left of a blue square"


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    modules, calls = fake_comfy(tmp_path)
    load_pack(monkeypatch, modules)
    rz = importlib.import_module(PACK + ".nodes.reasoner")
    rz.unload_reasoner()
    yield type("C", (), {"rz": rz, "calls": calls, "mm": modules["comfy.model_management"],
                         "models": tmp_path / "models", "fp": modules["folder_paths"]})
    rz.unload_reasoner()


def _folder(path, model_type="qwen3", tokenizer=True):
    path.mkdir(parents=True)
    (path / "config.json").write_text(json.dumps({"model_type": model_type}))
    if tokenizer:
        (path / "tokenizer.json").write_text("{}")
    return path


def test_planners_list_rules_then_qwen_folders_of_uni1_and_llm(comfy):
    assert comfy.rz.list_planners() == ["rules"]
    _folder(comfy.models / "uni1" / "Qwen" / "Qwen3-1.7B")
    _folder(comfy.models / "uni1" / "lumina", model_type="chameleon")       # an image model: not a planner
    _folder(comfy.models / "uni1" / "half", tokenizer=False)
    _folder(comfy.models / "LLM" / "Qwen2.5-3B-Instruct", model_type="qwen2")
    assert comfy.rz.list_planners() == ["rules", "LLM/Qwen2.5-3B-Instruct", "Qwen/Qwen3-1.7B"]
    assert comfy.rz.resolve_planner("LLM/Qwen2.5-3B-Instruct") == (comfy.models / "LLM" / "Qwen2.5-3B-Instruct").resolve()
    assert comfy.rz.validate_planner("Qwen/Qwen3-1.7B") is True
    assert "not a Qwen2 / Qwen3" in comfy.rz.validate_planner("lumina")
    assert "not a folder" in comfy.rz.validate_planner("Qwen/Qwen9")


@pytest.mark.parametrize("name,words", [("../secrets", "'..'"), ("/etc", "absolute"), ("LLM/../../x", "'..'")])
def test_unsafe_planner_names_are_refused(comfy, name, words):
    assert words in comfy.rz.validate_planner(name)


def _fake_reasoner(monkeypatch, comfy, *texts):
    Reasoner = importlib.import_module(PACK + ".uni1_core.reasoner").Reasoner   # the pack's own copy
    loads = []

    def from_pretrained(folder, dtype, device, quantize=None, cache_dir=None):
        loads.append((folder, dtype, device))
        gen = CannedGenerator(*texts)
        gen.model = torch.nn.Linear(2, 2)      # the module ComfyUI manages
        return Reasoner(gen)
    monkeypatch.setattr(Reasoner, "from_pretrained", staticmethod(from_pretrained))
    _folder(comfy.models / "uni1" / "Qwen3-0.6B")
    return loads


def test_reasoner_is_loaded_once_and_goes_through_the_model_manager(comfy, monkeypatch):
    loads = _fake_reasoner(monkeypatch, comfy, THINK_AND_FENCE, THINK_AND_FENCE)
    first = comfy.rz.run_planner("Qwen3-0.6B", PROMPT)
    second = comfy.rz.run_planner("Qwen3-0.6B", PROMPT)
    assert len(loads) == 1 and loads[0][1] == torch.float32        # auto on a CPU
    assert len(comfy.calls["load_models_gpu"]) == 2                 # before each run
    assert first.source == second.source == "model"
    ui = comfy.rz.ui_of(first)
    assert ui["uni1_detailed_prompt"] == [first.detailed_prompt] and "decoy" in ui["uni1_thinking"][0]
    assert ui["uni1_reasoner_report"] == ["plan from: model"]
    # another precision is another reasoner: the slot is replaced, not added to
    comfy.rz.get_reasoner("Qwen3-0.6B", "bfloat16")
    assert len(loads) == 2 and loads[1][1] == torch.bfloat16 and len(comfy.rz._slot) == 1


def test_fallback_is_shown_on_the_node(comfy, monkeypatch):
    _fake_reasoner(monkeypatch, comfy, GARBAGE, GARBAGE)
    result = comfy.rz.run_planner("Qwen3-0.6B", PROMPT)
    report = comfy.rz.ui_of(result)["uni1_reasoner_report"][0]
    assert result.fell_back and "rules (fallback)" in report and "could not be read twice" in report


def test_rules_planner_needs_no_model(comfy):
    result = comfy.rz.run_planner("rules", PROMPT)
    assert result.source == "rules" and not result.fell_back and result.plan.subjects[0].count == 2
    assert comfy.calls["load_models_gpu"] == []
    with pytest.raises(ValueError, match="prompt is empty"):
        comfy.rz.run_planner("rules", " ")


def test_cancel_becomes_comfyui_interrupt(comfy, monkeypatch):
    Cancelled = importlib.import_module(PACK + ".uni1_core.sampler").Cancelled
    _fake_reasoner(monkeypatch, comfy, THINK_AND_FENCE)
    loaded = comfy.rz.get_reasoner("Qwen3-0.6B")

    def cancelled(*args, **kwargs):
        comfy.mm.flag = True
        raise Cancelled("stop")
    monkeypatch.setattr(loaded.generator, "complete", cancelled)
    with pytest.raises(FakeInterrupt):
        comfy.rz.run_planner("Qwen3-0.6B", PROMPT)
