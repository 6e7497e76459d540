"""Unit tests of the ComfyUI nodes: input validation, safe model paths, type conversion, runtime glue.

ComfyUI is not importable here, so the few ComfyUI modules the nodes touch (`folder_paths`,
`comfy.model_management`, `comfy.utils`, `comfy.model_patcher`) are replaced by minimal fakes
that record calls. Behaviour inside a real ComfyUI is tested by tests/test_comfy_server.py.
"""
import importlib.util
import inspect
import json
import logging
import os
import sys
import types
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PACK = "uni1_pack_under_test"
NODE_IDS = ["Uni1ModelLoader", "Uni1VQLoader", "Uni1ReasoningPlan", "Uni1SJDSampler", "Uni1VQDecode",
            "Uni1VQEncode"]


# ---------------------------------------------------------------------------------------------
# fakes and the pack loader

class FakeInterrupt(Exception):
    pass


def fake_comfy(tmp_path, interrupted=False, new_api=True):
    """Minimal stand-ins for the ComfyUI modules the pack imports. Returns {name: module}."""
    calls = {"load_models_gpu": [], "progress": []}

    fp = types.ModuleType("folder_paths")
    fp.models_dir = str(tmp_path / "models")
    fp.folder_names_and_paths = {}
    fp.get_folder_paths = lambda name: list(fp.folder_names_and_paths[name][0])

    mm = types.ModuleType("comfy.model_management")
    mm.flag = interrupted
    mm.InterruptProcessingException = FakeInterrupt
    mm.get_torch_device = lambda: torch.device("cpu")
    mm.unet_offload_device = lambda: torch.device("cpu")
    mm.intermediate_device = lambda: torch.device("cpu")
    mm.should_use_bf16 = lambda device=None: True
    mm.module_size = lambda m: sum(p.numel() * p.element_size() for p in m.parameters())
    mm.processing_interrupted = lambda: mm.flag
    mm.soft_empty_cache = lambda force=False: None

    def throw_exception_if_processing_interrupted():
        if mm.flag:
            mm.flag = False
            raise FakeInterrupt()
    mm.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
    if new_api:
        def load_models_gpu(models, memory_required=0, force_patch_weights=False,
                            minimum_memory_required=None, force_full_load=False):
            calls["load_models_gpu"].append((models, force_full_load))
    else:
        def load_models_gpu(models, memory_required=0):
            calls["load_models_gpu"].append((models, None))
    mm.load_models_gpu = load_models_gpu

    utils = types.ModuleType("comfy.utils")

    class ProgressBar:
        def __init__(self, total):
            self.total = total

        def update_absolute(self, value, total=None, preview=None):
            calls["progress"].append((value, total, preview))
    utils.ProgressBar = ProgressBar

    patcher = types.ModuleType("comfy.model_patcher")

    class ModelPatcher:
        def __init__(self, model, load_device, offload_device, size=0, current_device=None):
            self.model, self.load_device, self.offload_device, self.size = model, load_device, offload_device, size
    patcher.ModelPatcher = ModelPatcher

    comfy = types.ModuleType("comfy")
    comfy.model_management, comfy.utils, comfy.model_patcher = mm, utils, patcher
    return {"folder_paths": fp, "comfy": comfy, "comfy.model_management": mm, "comfy.utils": utils,
            "comfy.model_patcher": patcher}, calls


def load_pack(monkeypatch, modules=None):
    """Import the repository root as a ComfyUI pack (a package under a folder name, as ComfyUI
    does), with the given fake modules installed; a fresh import every time."""
    for name in [n for n in sys.modules if n == PACK or n.startswith(PACK + ".")]:
        monkeypatch.delitem(sys.modules, name)
    for name in ("folder_paths", "comfy", "comfy.model_management", "comfy.utils", "comfy.model_patcher"):
        if modules and name in modules:
            monkeypatch.setitem(sys.modules, name, modules[name])
        elif name in sys.modules:
            monkeypatch.delitem(sys.modules, name)
    # The pack aliases its uni1_core as `uni1_core` when that name is free; import the real one
    # first so this test process keeps a single top-level uni1_core for the other test modules.
    importlib.import_module("uni1_core")
    spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                  submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, PACK, pack)
    spec.loader.exec_module(pack)
    return pack


@pytest.fixture
def comfy(tmp_path, monkeypatch):
    modules, calls = fake_comfy(tmp_path)
    pack = load_pack(monkeypatch, modules)
    return types.SimpleNamespace(pack=pack, calls=calls, fp=modules["folder_paths"],
                                 mm=modules["comfy.model_management"], models=tmp_path / "models" / "uni1",
                                 nodes=sys.modules[PACK + ".nodes"])


# ---------------------------------------------------------------------------------------------
# registration and node metadata

def test_registers_every_node_with_a_permanent_prefixed_id(comfy):
    assert list(comfy.pack.NODE_CLASS_MAPPINGS) == NODE_IDS
    assert set(comfy.pack.NODE_DISPLAY_NAME_MAPPINGS) == set(NODE_IDS)
    assert comfy.pack.WEB_DIRECTORY == "./web"
    assert (ROOT / "web" / "uni1.js").is_file()


@pytest.mark.parametrize("node_id", NODE_IDS)
def test_every_node_documents_itself(comfy, node_id):
    cls = comfy.pack.NODE_CLASS_MAPPINGS[node_id]
    assert len(cls.DESCRIPTION) > 40
    assert cls.CATEGORY == "Uni1"
    assert callable(getattr(cls, cls.FUNCTION))
    assert len(cls.RETURN_TYPES) == len(cls.RETURN_NAMES) == len(cls.OUTPUT_TOOLTIPS)
    spec = cls.INPUT_TYPES()
    inputs = {**spec["required"], **spec.get("optional", {})}
    for name, (kind, options) in inputs.items():
        assert options.get("tooltip"), f"{node_id}.{name} has no tooltip"
        if isinstance(kind, list):
            assert options.get("default", kind[0]) in kind
    # the function accepts exactly the declared inputs
    params = set(inspect.signature(getattr(cls, cls.FUNCTION)).parameters) - {"self"}
    assert params == set(inputs)
    doc = ROOT / "web" / "docs" / f"{node_id}.md"
    assert doc.is_file() and doc.read_text().startswith("# ")


def test_sampler_and_plan_widgets(comfy):
    sampler = comfy.pack.NODE_CLASS_MAPPINGS["Uni1SJDSampler"].INPUT_TYPES()
    assert sampler["required"]["seed"][1]["control_after_generate"] is True
    assert sampler["required"]["mode"][0] == ["sjd_coupled", "sjd", "ar"]
    assert sampler["required"]["compile"][0] == "BOOLEAN" and sampler["required"]["compile"][1]["default"] is True
    plan = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"].INPUT_TYPES()
    # JSON must reach the server untouched: dynamic prompts would strip // and resolve {a|b}
    assert plan["optional"]["plan_json"][1]["dynamicPrompts"] is False


def test_missing_dependency_logs_a_fix_instead_of_breaking_startup(tmp_path, monkeypatch, caplog):
    modules, _ = fake_comfy(tmp_path)
    monkeypatch.setitem(sys.modules, "einops", None)   # `import einops` now raises ImportError
    with caplog.at_level(logging.ERROR, logger="uni1"):
        pack = load_pack(monkeypatch, modules)
    assert pack.NODE_CLASS_MAPPINGS == {}
    assert "einops" in caplog.text and "pip install -r requirements.txt" in caplog.text


def test_imports_without_comfyui(monkeypatch):
    pack = load_pack(monkeypatch, modules=None)
    runtime = sys.modules[PACK + ".nodes.runtime"]
    assert list(pack.NODE_CLASS_MAPPINGS) == NODE_IDS
    assert runtime.torch_device() == torch.device("cpu")
    assert sys.modules[PACK + ".nodes.paths"].list_models()[0] == "demo"


# ---------------------------------------------------------------------------------------------
# model folders and path safety

def test_model_folder_registration_keeps_extra_model_paths(tmp_path, monkeypatch):
    modules, _ = fake_comfy(tmp_path)
    user = str(tmp_path / "elsewhere" / "uni1")
    # extra_model_paths.yaml is read before custom nodes load: it creates the entry first
    modules["folder_paths"].folder_names_and_paths["uni1"] = ([user], set())
    load_pack(monkeypatch, modules)
    paths, exts = modules["folder_paths"].folder_names_and_paths["uni1"]
    assert paths == [user, str(tmp_path / "models" / "uni1")]
    assert ".safetensors" in exts


def make_model_dir(path):
    path.mkdir(parents=True)
    (path / "config.json").write_text("{}")
    return path


def test_lists_demo_first_then_local_folders_then_known_repos(comfy):
    make_model_dir(comfy.models / "Alpha-VLLM" / "Lumina-mGPT-2.0")
    make_model_dir(comfy.models / "my-model")
    (comfy.models / "not-a-model").mkdir()
    (comfy.models / "movq.safetensors").write_bytes(b"")
    qwen = make_model_dir(comfy.models / "Qwen" / "Qwen3-1.7B")      # a reasoner, not an image model
    (qwen / "config.json").write_text('{"model_type": "qwen3"}')
    paths = comfy.nodes.paths
    assert paths.list_models() == ["demo", "Alpha-VLLM/Lumina-mGPT-2.0", "my-model",
                                   "Alpha-VLLM/Lumina-mGPT-2.0-Omni"]
    assert paths.list_vqs() == ["from model folder", "movq.safetensors", "ai-forever/MoVQGAN"]
    assert paths.resolve_local("my-model") == (comfy.models / "my-model").resolve()
    assert paths.resolve_local("Alpha-VLLM\\Lumina-mGPT-2.0") == (comfy.models / "Alpha-VLLM" / "Lumina-mGPT-2.0").resolve()
    assert paths.resolve_local("absent") is None


@pytest.mark.parametrize("name, words", [
    ("../secret", "'..'"), ("a/../../b", "'..'"), ("a/./b", "'..'"), ("..\\..\\x", "'..'"),
    ("/etc/passwd", "absolute"), ("C:\\models\\x", "absolute"), ("\\\\server\\share\\m", "absolute"),
    ("~/models/x", "absolute"), ("", "no model name"), ("   ", "no model name"), ("a//b", "empty"),
])
def test_unsafe_names_are_refused_with_a_clear_message(comfy, name, words):
    paths = comfy.nodes.paths
    with pytest.raises(paths.ModelPathError, match="(?i)" + words.replace(".", r"\.").replace("'", "'")):
        paths.check_name(name)
    for cls in ("Uni1ModelLoader", "Uni1VQLoader"):
        node = comfy.pack.NODE_CLASS_MAPPINGS[cls]
        arg = "model_name" if cls == "Uni1ModelLoader" else "vq_name"
        message = node.VALIDATE_INPUTS(**{arg: name})
        assert isinstance(message, str) and "list" in message.lower()


def test_links_out_of_the_models_folder_are_refused(comfy, tmp_path):
    outside = make_model_dir(tmp_path / "outside" / "model")
    comfy.models.mkdir(parents=True, exist_ok=True)
    os.symlink(outside, comfy.models / "escape")
    with pytest.raises(comfy.nodes.paths.ModelPathError, match="outside the models folder"):
        comfy.nodes.paths.resolve_local("escape")
    message = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ModelLoader"].VALIDATE_INPUTS(model_name="escape")
    assert "outside the models folder" in message


def test_validation_accepts_list_entries_repo_ids_and_linked_inputs(comfy):
    make_model_dir(comfy.models / "mine")
    validate = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ModelLoader"].VALIDATE_INPUTS
    assert validate(model_name="demo") is True
    assert validate(model_name="mine") is True
    assert validate(model_name="someone/some-model") is True   # a repo id typed into an API prompt
    assert validate(model_name=None) is True                   # linked: checked at run time
    assert "not found" in validate(model_name="missing-model")
    assert comfy.nodes.paths.download_dir("a/b") == comfy.models / "a" / "b"
    with pytest.raises(comfy.nodes.paths.ModelPathError):
        comfy.nodes.loaders.resolve_model_source("missing-model")


# ---------------------------------------------------------------------------------------------
# type conversion

def test_image_layout_round_trip_and_range(comfy):
    vq = comfy.nodes.vq
    image = torch.rand(2, 24, 40, 3)
    pixels = vq.image_to_movq(image)
    assert pixels.shape == (2, 3, 24, 40) and pixels.min() >= -1 and pixels.max() <= 1
    back = vq.movq_to_image(pixels)
    assert back.shape == (2, 24, 40, 3) and back.dtype == torch.float32
    torch.testing.assert_close(back, image, atol=1e-6, rtol=0)
    # out-of-range decoder overshoot is clamped, not wrapped
    assert vq.movq_to_image(torch.full((1, 3, 8, 8), 1.3)).max() == 1.0


def test_alpha_is_blended_onto_white_and_grey_becomes_rgb(comfy):
    vq = comfy.nodes.vq
    rgba = torch.zeros(1, 4, 4, 4)
    rgba[..., 0] = 1.0            # red
    rgba[..., 3] = 0.25           # mostly transparent
    rgb = (vq.image_to_movq(rgba) + 1) / 2
    torch.testing.assert_close(rgb[0, :, 0, 0], torch.tensor([1.0, 0.75, 0.75]))
    grey = vq.image_to_movq(torch.full((1, 2, 2, 1), 0.5))
    assert grey.shape == (1, 3, 2, 2) and torch.all(grey == 0)
    with pytest.raises(ValueError, match="channels"):
        vq.image_to_movq(torch.zeros(1, 2, 2, 2))
    with pytest.raises(ValueError, match="batch, height, width"):
        vq.image_to_movq(torch.zeros(2, 2, 3))


def test_center_crop_covers_the_target_and_keeps_the_centre(comfy):
    vq = comfy.nodes.vq
    # a wide image with a marked centre column block
    pixels = torch.full((1, 3, 64, 128), -1.0)
    pixels[:, :, :, 48:80] = 1.0
    out = vq.center_crop(pixels, 32, 32)
    assert out.shape == (1, 3, 32, 32)
    # scaled by 1/2 to 32x64, the centre 32 columns hold the bright block (columns 24..40 -> 8..24)
    assert out[0, 0, 16, 16] > 0.9 and out[0, 0, 16, 2] < -0.9
    same = vq.center_crop(pixels[:, :, :, :64], 64, 64)
    assert torch.equal(same, pixels[:, :, :, :64])


def test_tokens_carry_their_geometry(comfy):
    handles = comfy.nodes.handles
    tokens = handles.Tokens(torch.zeros(2, 4, 6, dtype=torch.int32))
    assert tokens.codes.dtype == torch.long and (tokens.width, tokens.height) == (48, 32)
    with pytest.raises(ValueError, match="batch, rows, cols"):
        handles.Tokens(torch.zeros(4, 6))


class FakeMoVQ(torch.nn.Module):
    """Decodes code c to a flat 8x8 patch of value c / num_codes * 2 - 1 (so the layout is checkable)."""
    num_codes = 16

    def __init__(self):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def decode(self, codes):
        value = codes.float() / self.num_codes * 2 - 1
        return value[:, None].repeat_interleave(8, 2).repeat_interleave(8, 3).repeat(1, 3, 1, 1)

    def encode(self, pixels):
        return ((pixels[:, 0, ::8, ::8] + 1) / 2 * self.num_codes).round().long().clamp(0, self.num_codes - 1)


def managed_vq(comfy):
    runtime = comfy.nodes.runtime
    movq = FakeMoVQ()
    return comfy.nodes.handles.VQHandle(movq, runtime.Managed.wrap(movq), "fake")


def test_decode_gives_comfy_images_and_crops_the_generated_panel(comfy):
    vq = managed_vq(comfy)
    codes = torch.arange(2 * 4 * 3).remainder(16).view(2, 4, 3)
    decode = comfy.pack.NODE_CLASS_MAPPINGS["Uni1VQDecode"]()
    (image,) = decode.decode(comfy.nodes.handles.Tokens(codes), vq, "generated")
    assert image.shape == (2, 32, 24, 3) and 0 <= image.min() and image.max() <= 1
    assert image[1, 8, 16, 0].item() == pytest.approx(codes[1, 1, 2].item() / 16)
    two_panel = comfy.nodes.handles.Tokens(codes, condition_rows=2)
    (lower,) = decode.decode(two_panel, vq, "generated")
    (full,) = decode.decode(two_panel, vq, "full")
    assert lower.shape == (2, 16, 24, 3) and full.shape == (2, 32, 24, 3)
    torch.testing.assert_close(lower, full[:, 16:])
    assert comfy.calls["load_models_gpu"], "the VQ must be loaded through ComfyUI's model manager"
    with pytest.raises(ValueError, match="load the VQ that belongs"):
        decode.decode(comfy.nodes.handles.Tokens(torch.full((1, 1, 1), 99)), vq, "full")


def test_encode_makes_a_single_condition_and_validates_sizes(comfy):
    vq = managed_vq(comfy)
    encode = comfy.pack.NODE_CLASS_MAPPINGS["Uni1VQEncode"]
    image = torch.rand(1, 50, 70, 3)
    (cond,) = encode().encode(image, vq, 64, 32)
    assert cond.kind == "condition" and cond.codes.shape == (1, 4, 8)
    assert encode.VALIDATE_INPUTS(width=64, height=32) is True
    assert "multiple of 32" in encode.VALIDATE_INPUTS(width=70, height=32)
    assert "out of range" in encode.VALIDATE_INPUTS(width=4096, height=32)
    assert encode.VALIDATE_INPUTS(width=None, height=32) is True
    sampler = comfy.nodes.sampler
    assert sampler.pick_condition(cond).shape == (4, 8)
    assert sampler.pick_condition(None) is None
    with pytest.raises(ValueError, match="VQ Encode"):
        sampler.pick_condition(comfy.nodes.handles.Tokens(torch.zeros(1, 4, 8)))
    with pytest.raises(ValueError, match="conditions on one"):
        sampler.pick_condition(comfy.nodes.handles.Tokens(torch.zeros(2, 4, 8), kind="condition"))


def test_sampler_refuses_an_empty_request_before_touching_the_model(comfy):
    sampler = comfy.pack.NODE_CLASS_MAPPINGS["Uni1SJDSampler"]()
    with pytest.raises(ValueError, match="Reasoning Plan"):
        sampler.sample(model=None, width=64, height=64, seed=0, mode="ar", cfg=1.0, temperature=1.0, top_k=0,
                       top_p=1.0, window=0, regional=False, batch_size=1, plan=None, prompt="  ")


def test_stats_text_is_readable_and_keeps_the_raw_numbers(comfy):
    stats = {"mode": "sjd_coupled", "image_tokens": 64, "forwards": 20, "forwards_per_token": 0.3125,
             "seconds": 1.5, "accepted_hist": [1, 2]}
    text = comfy.nodes.sampler.format_stats(stats, 64, 64)
    first, second, third = text.splitlines()[:3]
    assert first == "sjd_coupled 64x64: 64 image tokens"
    assert second == "20 forwards (0.312 per token)" and third == "1.50 s"
    assert json.loads(text.split("\n", 3)[3]) == stats


# ---------------------------------------------------------------------------------------------
# runtime glue

def test_dtype_choice(comfy):
    runtime = comfy.nodes.runtime
    assert runtime.pick_dtype("auto", torch.device("cpu")) == torch.float32
    assert runtime.pick_dtype("auto", torch.device("cuda")) == torch.bfloat16   # fake says bf16 is good
    assert runtime.pick_dtype("float16", torch.device("cpu")) == torch.float16
    with pytest.raises(ValueError, match="not one of"):
        runtime.pick_dtype("int8", torch.device("cpu"))


def test_models_go_through_load_models_gpu_with_full_load_when_supported(comfy, tmp_path, monkeypatch):
    module = torch.nn.Linear(4, 4)
    managed = comfy.nodes.runtime.Managed.wrap(module)
    assert managed.patcher.model.inner is module and managed.patcher.size == 4 * 4 * 4 + 4 * 4
    # ComfyUI's patcher writes bookkeeping onto the module it manages; it gets a plain container
    managed.patcher.model.device = torch.device("cpu")
    assert list(managed.patcher.model.parameters()) == list(module.parameters())
    assert managed.load() is module
    assert comfy.calls["load_models_gpu"] == [([managed.patcher], True)]
    # the 2024 ComfyUI has no force_full_load keyword: it must not be passed
    modules, calls = fake_comfy(tmp_path, new_api=False)
    pack_nodes = load_pack(monkeypatch, modules) and sys.modules[PACK + ".nodes"]
    pack_nodes.runtime.Managed.wrap(module).load()
    assert calls["load_models_gpu"][0][1] is None


def test_progress_throttles_previews_and_survives_a_failing_one(comfy):
    runtime = comfy.nodes.runtime
    drawn = []

    def draw(codes, mask):
        drawn.append(mask)
        from PIL import Image
        return Image.new("RGB", (8, 8))
    progress = runtime.Progress(100, preview_fn=draw, preview_every=3600)
    progress._last_preview = -1e9        # the first preview is due at once
    for step in range(1, 11):
        progress.on_preview(torch.zeros(1, step, 2), step)   # any two values: passed through
        progress.on_progress(step, 100)
    assert drawn == [1], "a second preview inside the throttle interval"
    values = [c[0] for c in comfy.calls["progress"]]
    assert values == list(range(1, 11))
    kind, image, size = comfy.calls["progress"][0][2]
    assert kind == "JPEG" and image.size == (8, 8) and size == 512
    assert all(c[2] is None for c in comfy.calls["progress"][1:])

    # the last preview (all tokens done) is drawn at once, whatever the throttle says
    progress.on_progress(100, 100)
    progress.on_preview(torch.zeros(1, 10, 2), "complete")
    assert drawn == [1, "complete"] and comfy.calls["progress"][-1][0] == 100
    assert comfy.calls["progress"][-1][2][0] == "JPEG"

    def broken(*_):
        raise RuntimeError("decoder exploded")
    progress = runtime.Progress(10, preview_fn=broken, preview_every=0)
    progress.on_preview(torch.zeros(1, 1, 2), 1)
    progress.on_progress(1, 10)
    progress.on_preview(torch.zeros(1, 2, 2), 2)
    progress.on_progress(2, 10)
    assert progress.preview_fn is None and progress.done == 2


def test_cancel_becomes_comfyui_interrupt(comfy):
    runtime = comfy.nodes.runtime
    assert runtime.interrupted() is False
    comfy.mm.flag = True
    assert runtime.interrupted() is True
    with pytest.raises(FakeInterrupt):
        runtime.raise_interrupt()
    assert comfy.mm.flag is False, "the flag must be cleared so the next prompt runs"
    with pytest.raises(FakeInterrupt):     # even if someone cleared the flag already
        runtime.raise_interrupt()


def test_preview_decodes_finished_rows_padded_to_full_size(comfy):
    sampler = comfy.nodes.sampler
    preview = sampler._previewer(FakeMoVQ(), rows=4)
    codes = torch.full((2, 4, 3), 15)
    done = torch.zeros(2, 4, 3, dtype=torch.bool)
    assert preview(codes, done) is None
    done[0, :2] = True
    done[0, 3, 0] = True            # a draft ran ahead into row 3: row 2 is still unfinished
    assert sampler.finished_rows(done) == 2
    image = preview(codes, done)
    assert image.size == (24, 32)
    top, bottom = image.getpixel((0, 0)), image.getpixel((0, 31))
    assert top[0] > 200 and bottom == (128, 128, 128)
    done[0] = True
    assert sampler.finished_rows(done) == 4


# ---------------------------------------------------------------------------------------------
# example workflows: the UI JSON (drag and drop) and its API twin (what /prompt runs) agree

WORKFLOWS = ROOT / "example_workflows"
UI_ONLY = {"Note", "MarkdownNote", "Reroute", "PrimitiveNode"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}
# The core nodes the examples use, as ComfyUI's /object_info describes them.
CORE_NODES = {
    "SaveImage": {"display_name": "Save Image", "input": {"required": {
        "images": ["IMAGE"], "filename_prefix": ["STRING", {"default": "ComfyUI"}]}}},
    "PreviewImage": {"display_name": "Preview Image", "input": {"required": {"images": ["IMAGE"]}}},
    "LoadImage": {"display_name": "Load Image", "input": {"required": {
        "image": [["example.png"], {"image_upload": True}]}}},
}


def widget_inputs(spec):
    """(name, extra) for each input the UI draws as a widget, in widgets_values order; `extra`
    counts the values the front end stores after it (a seed's control_after_generate mode, an
    image's upload button)."""
    out = []
    for section in ("required", "optional"):
        for name, entry in spec.get(section, {}).items():
            kind, options = entry[0], (entry[1] if len(entry) > 1 else {})
            if options.get("forceInput") or not (isinstance(kind, list) or kind in WIDGET_TYPES):
                continue
            seed = kind == "INT" and (options.get("control_after_generate") or name in ("seed", "noise_seed"))
            out.append((name, 1 if seed or options.get("image_upload") else 0))
    return out


def ui_to_api(ui, object_info):
    """Convert a UI-format workflow to the API format with node definitions from /object_info."""
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in sorted(ui["nodes"], key=lambda n: n["id"]):
        if node["type"] in UI_ONLY or node.get("mode", 0) in (2, 4):   # notes, muted, bypassed
            continue
        info = object_info[node["type"]]
        values, inputs, i = list(node.get("widgets_values", [])), {}, 0
        for name, extra in widget_inputs(info["input"]):
            inputs[name] = values[i]
            i += 1 + extra
        assert i == len(values), f"node {node['id']} ({node['type']}): {len(values)} widget values, expected {i}"
        ui_only = {n["id"] for n in ui["nodes"] if n["type"] in UI_ONLY}
        for slot in node.get("inputs", []):
            if slot.get("link") is not None:
                link = links[slot["link"]]
                assert link[3] == node["id"], f"link {link[0]} does not end at node {node['id']}"
                if link[1] in ui_only:      # a primitive feeding a widget: its value is the widget's
                    source = next(n for n in ui["nodes"] if n["id"] == link[1])
                    assert slot.get("widget", {}).get("name") == slot["name"] in inputs
                    assert source["widgets_values"][0] == inputs[slot["name"]]
                    continue
                inputs[slot["name"]] = [str(link[1]), link[2]]
        api[str(node["id"])] = {"inputs": inputs, "class_type": node["type"],
                                "_meta": {"title": node.get("title") or info["display_name"]}}
    return api


def pack_object_info(pack):
    info = {name: {"display_name": pack.NODE_DISPLAY_NAME_MAPPINGS[name], "input": cls.INPUT_TYPES()}
            for name, cls in pack.NODE_CLASS_MAPPINGS.items()}
    return json.loads(json.dumps({**CORE_NODES, **info}))   # as the server would serve it


def ui_workflows():
    return sorted(p for p in WORKFLOWS.glob("*.json") if not p.name.endswith(".api.json"))


def test_there_are_the_five_example_workflows():
    names = [p.stem for p in ui_workflows()]
    assert names == ["uni1_demo_llm_reasoning", "uni1_demo_reasoner", "uni1_demo_text_to_image",
                     "uni1_lumina_mgpt2_text_to_image", "uni1_omni_image_conditioned"]


@pytest.mark.parametrize("path", ui_workflows(), ids=lambda p: p.stem)
def test_ui_workflow_and_api_twin_agree(comfy, path):
    ui = json.loads(path.read_text())
    twin = json.loads(path.with_name(path.stem + ".api.json").read_text())
    for node in twin.values():          # a reasoner the workflow names is a folder the user has
        planner = node["inputs"].get("planner", "rules")
        if planner != "rules":
            folder = comfy.models.parent.joinpath(*planner.split("/"))
            folder.mkdir(parents=True)
            (folder / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
            (folder / "tokenizer.json").write_text("{}")
    info = pack_object_info(comfy.pack)
    assert ui_to_api(ui, info) == twin
    # every link in the UI graph connects sockets of the same type, as the editor enforces
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        nodes = {n["id"]: n for n in ui["nodes"]}
        assert nodes[src]["outputs"][src_slot]["type"] == kind == nodes[dst]["inputs"][dst_slot]["type"]
    # widget values pass the nodes' own validation (combos, ranges)
    for node in twin.values():
        spec = info[node["class_type"]]["input"]
        entries = {**spec["required"], **spec.get("optional", {})}
        for name, value in node["inputs"].items():
            kind, options = entries[name][0], (entries[name][1] if len(entries[name]) > 1 else {})
            if isinstance(value, list):
                continue
            if isinstance(kind, list) and node["class_type"] != "LoadImage":
                assert value in kind, f"{name}={value!r}"
            if kind in ("INT", "FLOAT"):
                assert options.get("min", value) <= value <= options.get("max", value), f"{name}={value}"
    for node in (n for n in twin.values() if n["class_type"] == "Uni1ReasoningPlan"):
        assert comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"].VALIDATE_INPUTS(
            planner=node["inputs"]["planner"]) is True
    for node in (n for n in twin.values() if n["class_type"] == "Uni1ReasoningPlan"):
        assert comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"].VALIDATE_INPUTS(
            planner=node["inputs"]["planner"]) is True
    for cls in ("Uni1ModelLoader", "Uni1VQLoader"):
        for node in (n for n in twin.values() if n["class_type"] == cls):
            arg = "model_name" if cls == "Uni1ModelLoader" else "vq_name"
            assert comfy.pack.NODE_CLASS_MAPPINGS[cls].VALIDATE_INPUTS(**{arg: node["inputs"][arg]}) is True


# ---------------------------------------------------------------------------------------------
# the reasoning plan node (uni1_core's planner is light: no model involved)

def test_plan_node_outputs_plan_text_and_json_and_pins_an_edited_plan(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    out = node.plan("two red circles to the left of a blue square", "plan")
    planned, text, as_json = out["result"]
    plan = planned.plan
    assert planned.conditioning == "plan" and text == plan.conditioning_text() and "circle" in text
    assert out["ui"]["uni1_plan_summary"] == [plan.summary()]
    assert out["ui"]["uni1_plan_json"] == [as_json] and out["ui"]["uni1_conditioning"] == [text]
    # edit the JSON (blue square -> green square) and pin it: the prompt is then ignored
    edited = json.loads(as_json)
    edited["subjects"][1]["color"] = "green"
    pinned, pinned_text, _ = node.plan("anything at all", "plan", json.dumps(edited))["result"]
    assert "green square" in pinned_text and "blue" not in pinned_text
    assert pinned.plan.to_json() == type(plan).from_json(json.dumps(edited)).to_json()


def test_plan_node_shows_the_text_each_conditioning_gives(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    prompt = "a lamp  over two tables, warm light"
    texts = {c: node.plan(prompt, c)["result"][1] for c in ("auto", "prompt+plan", "prompt", "plan")}
    assert texts["prompt"] == "a lamp over two tables, warm light"
    assert texts["prompt+plan"] == ("a lamp over two tables, warm light. Exactly two tables. "
                                    "The lamp is above the tables.")
    assert texts["auto"] == texts["prompt+plan"]          # no model connected: a model without grounding
    assert texts["plan"] == node.plan(prompt, "plan")["result"][0].plan.conditioning_text()
    assert node.plan(prompt, "prompt")["ui"]["uni1_conditioning"] == [texts["prompt"]]


def test_plan_node_reads_another_models_answer(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    answer = ('<think>The user wants cats; I will lay them out.</think>\n```json\n{"subjects": '
              '[{"noun": "cats", "count": "three", "color": "orange"}], "style": "watercolor"}\n```')
    planned, text, _ = node.plan("some cats", "prompt+plan", "", answer)["result"]
    assert [(s.noun, s.count, s.color) for s in planned.plan.subjects] == [("cat", 3, "orange")]
    assert planned.plan.prompt == "some cats" and text == "some cats"    # the user's words, nothing invented
    assert node.plan("some cats", "plan", "", answer)["result"][1] == "Three orange cats. Watercolor."
    # a rewritten prompt becomes the prompt (the prompt widget may then be empty)
    planned, text, _ = node.plan("", "prompt+plan", "", "Sure! Here is an enhanced prompt:\n"
                                 "**Three red apples on a wooden table, soft light**")["result"]
    assert planned.plan.prompt == "Three red apples on a wooden table, soft light"
    assert text.startswith("Three red apples on a wooden table, soft light. ") and "Exactly three red apples." in text
    # a pinned plan wins over the answer
    pinned = node.plan("a dog", "plan", make_plan_json("a dog"), answer)["result"][0]
    assert [s.noun for s in pinned.plan.subjects] == ["dog"]


def make_plan_json(prompt):
    from uni1_core.plan import make_plan
    return make_plan(prompt).to_json()


@pytest.mark.parametrize("prompt, plan_json, words", [
    ("a cat", "{not json", "plan_json input is not a valid Uni1 plan"),
    ("a cat", '{"subjects": 3}', "plan_json input is not a valid Uni1 plan"),
    ("   ", "", "prompt is empty"),
    (", ".join(["a cat"] * 40), "", "at most 32"),
    ("a cat", '{"subjects": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deep"),
    ("a cat", '{"subjects": [{"noun": "cat", "attributes": 5}]}', "attributes must be a list of strings"),
])
def test_plan_node_explains_bad_input(comfy, prompt, plan_json, words):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    with pytest.raises(ValueError, match=words):
        node.plan(prompt, "auto", plan_json)


@pytest.mark.parametrize("reasoning, words", [
    ('```json\n{"subjects": {"noun": "cat"}}\n```', "subjects must be a list"),
    ('{"subjects": [{"noun": "cat", "attributes": 5}]}', "attributes must be a list of strings"),
    ('{"subjects": ' + "[" * 90000 + "]" * 90000 + "}", "nested too deep"),
    ("```json\n{\"subjects\": [}\n```", "not valid JSON"),
])
def test_plan_node_explains_a_bad_reasoning_input(comfy, reasoning, words):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    with pytest.raises(ValueError, match="reasoning input could not be read") as info:
        node.plan("a cat", "auto", "", reasoning)
    assert words in str(info.value)


def test_plan_node_refuses_prompt_conditioning_for_a_plan_without_a_prompt(comfy):
    node = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ReasoningPlan"]()
    with pytest.raises(ValueError, match="needs the user's prompt"):
        node.plan("", "prompt", "", '{"subjects": [{"noun": "cat"}]}')


# ---------------------------------------------------------------------------------------------
# the whole chain on a complete tiny random model folder (the real file layout, CPU, seconds)

@pytest.fixture
def tiny(comfy, tiny_model_folder):
    import shutil
    shutil.copytree(tiny_model_folder, comfy.models / "tiny")
    M = comfy.pack.NODE_CLASS_MAPPINGS
    assert M["Uni1ModelLoader"].VALIDATE_INPUTS(model_name="tiny") is True
    (model,) = M["Uni1ModelLoader"]().load("tiny", "auto")
    (vq,) = M["Uni1VQLoader"]().load(model, "from model folder")
    return types.SimpleNamespace(M=M, model=model, vq=vq)


SAMPLER_DEFAULTS = dict(seed=5, mode="sjd_coupled", cfg=2.0, temperature=1.0, top_k=0, top_p=1.0, window=0,
                        regional=False, batch_size=1)


def run_sampler(tiny, width=64, height=64, **changes):
    return tiny.M["Uni1SJDSampler"]().sample(tiny.model, width, height, **{**SAMPLER_DEFAULTS, **changes})


def test_text_to_image_chain_with_progress_and_live_preview(comfy, tiny, monkeypatch):
    monkeypatch.setattr(comfy.nodes.sampler, "PREVIEW_EVERY_S", 0.0)
    plan = tiny.M["Uni1ReasoningPlan"]().plan("two red circles to the left of a blue square")["result"][0]
    out = run_sampler(tiny, plan=plan, vq=tiny.vq, batch_size=2)
    tokens, stats = out["result"]
    assert tokens.codes.shape == (2, 8, 8) and out["ui"]["uni1_stats"] == [stats]
    assert stats.startswith("sjd_coupled 64x64, batch 2: 73 image tokens each")   # 8 rows x 9 + end
    assert json.loads(stats.split("\n", 3)[3])["previews"] > 0
    # the model and the VQ went through ComfyUI's memory manager
    assert {id(m[0][0].model.inner) for m in comfy.calls["load_models_gpu"]} == {id(tiny.model.pipe.model),
                                                                                 id(tiny.vq.movq)}
    values = [c[0] for c in comfy.calls["progress"]]
    assert values == sorted(values) and values[-1] == 146
    previews = [c[2] for c in comfy.calls["progress"] if c[2] is not None]
    assert previews and all(p[0] == "JPEG" and p[1].size == (64, 64) for p in previews)
    (image,) = tiny.M["Uni1VQDecode"]().decode(tokens, tiny.vq, "generated")
    assert image.shape == (2, 64, 64, 3) and image.dtype == torch.float32
    assert 0 <= image.min() and image.max() <= 1 and image.std() > 0.01
    # image i of a batch is seed + i, alone or batched; a prompt without a plan node is planned
    again = run_sampler(tiny, prompt="two red circles to the left of a blue square", seed=6)["result"][0]
    assert torch.equal(again.codes[0], tokens.codes[1])


def test_cancel_raises_comfyui_interrupt_and_the_model_stays_usable(comfy, tiny):
    before = run_sampler(tiny, prompt="a green triangle above a yellow star")["result"][0]
    comfy.mm.flag = True                       # the user pressed Cancel
    with pytest.raises(FakeInterrupt):
        run_sampler(tiny, prompt="a green triangle above a yellow star")
    assert comfy.mm.flag is False
    after = run_sampler(tiny, prompt="a green triangle above a yellow star")["result"][0]
    assert torch.equal(before.codes, after.codes)


def test_omni_condition_is_the_upper_panel(comfy, tiny):
    image = torch.rand(1, 40, 50, 3)
    (cond,) = tiny.M["Uni1VQEncode"]().encode(image, tiny.vq, 64, 32)
    assert cond.codes.shape == (1, 4, 8)
    tokens = run_sampler(tiny, 16, 16, prompt="a purple ring", condition=cond, task="depth")["result"][0]
    assert tokens.codes.shape == (1, 8, 8) and tokens.condition_rows == 4   # width/height follow the condition
    assert torch.equal(tokens.codes[:, :4], cond.codes)
    (lower,) = tiny.M["Uni1VQDecode"]().decode(tokens, tiny.vq, "generated")
    (full,) = tiny.M["Uni1VQDecode"]().decode(tokens, tiny.vq, "full")
    assert lower.shape == (1, 32, 64, 3) and full.shape == (1, 64, 64, 3)


def test_size_zero_means_the_models_default(comfy, tiny):
    tokens, stats = run_sampler(tiny, 0, 0, prompt="a purple ring")["result"]
    assert (tokens.width, tokens.height) == tuple(tiny.model.pipe.default_size) == (64, 64)
    assert stats.startswith("sjd_coupled 64x64")


def test_sampler_errors_a_user_can_act_on(comfy, tiny):
    with pytest.raises(ValueError, match="unsupported resolution 96x64.*nearest are"):
        run_sampler(tiny, 96, 64, prompt="a cat")
    with pytest.raises(comfy.nodes.paths.ModelPathError, match="'..'"):
        tiny.M["Uni1ModelLoader"]().load("../tiny", "auto")


CHAMELEON_CONFIG = {"model_type": "chameleon", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 64,
                    "num_hidden_layers": 1, "num_attention_heads": 4}


def fake_hub(monkeypatch, repos: dict):
    """snapshot_download over `repos` ({repo_id: {file: text}}), honouring allow_patterns;
    returns the list of (repo_id, allow_patterns) calls."""
    import fnmatch

    import huggingface_hub
    calls = []

    def fake_snapshot_download(repo_id, allow_patterns=None, cache_dir=None, local_files_only=False,
                               local_dir=None, tqdm_class=None):
        calls.append((repo_id, list(allow_patterns or [])))
        if repo_id not in repos:
            raise OSError("no network")
        names = [n for n in repos[repo_id] if allow_patterns is None
                 or any(fnmatch.fnmatch(n, p) for p in allow_patterns)]
        bar = tqdm_class(total=len(names), desc=f"Fetching {len(names)} files")
        for name in names:
            Path(local_dir).mkdir(parents=True, exist_ok=True)
            (Path(local_dir) / name).write_text(repos[repo_id][name])
            bar.update(1)
        bar.close()
        return local_dir
    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    return calls


def test_a_repo_id_is_downloaded_once_into_the_models_folder_with_ui_progress(comfy, monkeypatch):
    repo = {"config.json": json.dumps(CHAMELEON_CONFIG), "tokenizer.json": "{}", "model.safetensors": "w",
            "pytorch_model.bin": "pickle", "README.md": "", "extra/huge.safetensors": "w"}
    calls = fake_hub(monkeypatch, {"Alpha-VLLM/Lumina-mGPT-2.0": repo})
    resolve = comfy.nodes.loaders.resolve_model_source
    path = resolve("Alpha-VLLM/Lumina-mGPT-2.0")
    assert Path(path) == comfy.models / "Alpha-VLLM" / "Lumina-mGPT-2.0"
    # config first, then the metadata, then only the weights a model folder needs
    assert [c[1][:1] for c in calls] == [["config.json"]] * 3
    assert "model.safetensors" in calls[2][1] and "model.safetensors" not in calls[1][1]
    assert sorted(p.name for p in Path(path).iterdir()) == ["config.json", "model.safetensors", "tokenizer.json"]
    assert [c[:2] for c in comfy.calls["progress"]] == [(1, 1), (1, 2), (2, 2), (1, 3), (2, 3), (3, 3)]
    # next time it is a local folder under the same name: no second download
    assert comfy.nodes.paths.list_models().count("Alpha-VLLM/Lumina-mGPT-2.0") == 1
    assert Path(resolve("Alpha-VLLM/Lumina-mGPT-2.0")) == Path(path).resolve()
    assert len(calls) == 3

    def cancelled(*args, **kwargs):
        raise FakeInterrupt()
    import huggingface_hub
    monkeypatch.setattr(huggingface_hub, "snapshot_download", cancelled)
    with pytest.raises(FakeInterrupt):          # Cancel is not turned into a download error
        resolve("someone/model")
    fake_hub(monkeypatch, {})
    with pytest.raises(RuntimeError, match="huggingface-cli download someone/model --local-dir"):
        resolve("someone/model")


def test_a_repo_of_another_model_type_is_refused_after_its_config(comfy, monkeypatch):
    """Issue 16: a shared workflow naming any repo id downloaded all of it."""
    import time
    big = {"config.json": json.dumps({"model_type": "llama", "hidden_size": 4096}), "model.safetensors": "w"}
    calls = fake_hub(monkeypatch, {"someone/llama": big})
    start = time.perf_counter()
    with pytest.raises(Exception, match="model_type 'llama'.*uni1_core runs only chameleon, qwen2, qwen3"):
        comfy.nodes.loaders.resolve_model_source("someone/llama")
    assert time.perf_counter() - start < 1.0
    assert calls == [("someone/llama", ["config.json"])]
    assert not (comfy.models / "someone" / "llama").exists()   # nothing left to be listed as a model
    assert "someone/llama" not in comfy.nodes.paths.list_models()


def test_an_index_naming_files_outside_the_folder_is_refused(comfy, monkeypatch):
    index = json.dumps({"weight_map": {"model.embed_tokens.weight": "../../evil.safetensors"}})
    calls = fake_hub(monkeypatch, {"someone/odd": {"config.json": json.dumps(CHAMELEON_CONFIG),
                                                   "model.safetensors.index.json": index}})
    with pytest.raises(Exception, match=r"not plain \*\.safetensors file names"):
        comfy.nodes.loaders.resolve_model_source("someone/odd")
    assert len(calls) == 2


# ---------------------------------------------------------------------------------------------
# careless and hostile node inputs (issue 16): a clear message, at once

def quickly(fn, *args, **kwargs):
    """fn's exception, asserting it came well under a second."""
    import time
    start = time.perf_counter()
    with pytest.raises(Exception) as info:
        fn(*args, **kwargs)
    assert time.perf_counter() - start < 1.0
    return info.value


def test_vq_decode_with_no_codes_says_so(comfy):
    vq, decode = managed_vq(comfy), comfy.pack.NODE_CLASS_MAPPINGS["Uni1VQDecode"]()
    err = quickly(comfy.nodes.handles.Tokens, torch.zeros(1, 0, 8, dtype=torch.long))
    assert isinstance(err, ValueError) and "hold no codes" in str(err) and "Uni1 SJD Sampler" in str(err)
    only_condition = comfy.nodes.handles.Tokens(torch.zeros(1, 4, 8, dtype=torch.long), condition_rows=4)
    err = quickly(decode.decode, only_condition, vq, "generated")
    assert isinstance(err, ValueError) and "no codes to decode" in str(err) and "'full'" in str(err)


@pytest.mark.parametrize("shape", [(1, 0, 0, 3), (1, 0, 64, 3), (0, 64, 64, 3)])
def test_vq_encode_with_an_empty_image_says_so(comfy, shape):
    encode = comfy.pack.NODE_CLASS_MAPPINGS["Uni1VQEncode"]()
    err = quickly(encode.encode, torch.zeros(shape), managed_vq(comfy), 64, 32)
    assert isinstance(err, ValueError) and "the image is empty" in str(err)


def test_a_model_name_of_5000_characters_is_a_message_not_an_oserror(comfy):
    comfy.models.mkdir(parents=True, exist_ok=True)
    for cls, arg in (("Uni1ModelLoader", "model_name"), ("Uni1VQLoader", "vq_name")):
        node = comfy.pack.NODE_CLASS_MAPPINGS[cls]
        for name in ("x" * 5000, "a/" + "y" * 300):
            message = node.VALIDATE_INPUTS(**{arg: name})
            assert isinstance(message, str) and "characters" in message and "list" in message
    err = quickly(comfy.nodes.loaders.resolve_model_source, "x" * 5000)
    assert isinstance(err, comfy.nodes.paths.ModelPathError) and "5000 characters" in str(err)


def test_a_weight_file_linked_out_of_the_models_folders_is_refused(comfy, tmp_path):
    """Issue 16: only the folder was checked, so models/uni1/m/model.safetensors -> /anywhere loaded."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "model.safetensors").write_bytes(b"secret")
    folder = make_model_dir(comfy.models / "m")
    os.symlink(outside / "model.safetensors", folder / "model.safetensors")
    message = comfy.pack.NODE_CLASS_MAPPINGS["Uni1ModelLoader"].VALIDATE_INPUTS(model_name="m")
    assert "model.safetensors is a link to" in message and "outside the models folders" in message
    err = quickly(comfy.nodes.loaders.resolve_model_source, "m")
    assert isinstance(err, comfy.nodes.paths.ModelPathError)
    # a link to another registered models folder is fine (extra_model_paths.yaml)
    other = tmp_path / "more_models"
    other.mkdir()
    comfy.fp.folder_names_and_paths["uni1"][0].append(str(other))
    (outside / "model.safetensors").rename(other / "model.safetensors")
    (folder / "model.safetensors").unlink()
    os.symlink(other / "model.safetensors", folder / "model.safetensors")
    assert comfy.nodes.paths.resolve_local("m") == folder.resolve()


def test_importing_the_pack_is_cheap():
    """The pack's import loads no model code, no safetensors and no hub client (a subprocess,
    so this test's own imports do not count)."""
    import subprocess
    code = ("import sys, importlib.util; spec = importlib.util.spec_from_file_location('pack', %r, "
            "submodule_search_locations=[%r]); pack = importlib.util.module_from_spec(spec); "
            "sys.modules['pack'] = pack; spec.loader.exec_module(pack); assert len(pack.NODE_CLASS_MAPPINGS) == 6; "
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('safetensors', 'huggingface_hub', 'einops') "
            "or m.startswith(('pack.uni1_core.model', 'pack.uni1_core.sampler', 'pack.uni1_core.plan'))]; "
            "print(heavy)") % (str(ROOT / "__init__.py"), str(ROOT))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_sampler_reads_what_the_plan_node_shows(comfy, tiny, monkeypatch):
    """One setting: the plan node's choice travels with the plan, the sampler's own wins, and the
    text the plan node shows (with the model connected) is the text the model is conditioned on."""
    seen = []
    original = tiny.model.pipe.sample

    def spy(*args, **kwargs):
        result = original(*args, **kwargs)
        seen.append(result.conditioning)
        return result
    monkeypatch.setattr(tiny.model.pipe, "sample", spy)
    node = tiny.M["Uni1ReasoningPlan"]()
    prompt = "a lamp over two tables"
    for choice in ("auto", "prompt+plan", "prompt", "plan"):
        planned, text, _ = node.plan(prompt, choice, model=tiny.model)["result"]
        run_sampler(tiny, plan=planned)
        assert seen[-1] == text, choice
    assert seen[0] == seen[1] == "a lamp over two tables. Exactly two tables. The lamp is above the tables."
    assert seen[2] == prompt and seen[3] == "A lamp is above two tables."
    planned = node.plan(prompt, "prompt", model=tiny.model)["result"][0]
    run_sampler(tiny, plan=planned, conditioning="plan")                  # the sampler's own choice wins
    assert seen[-1] == "A lamp is above two tables."
    run_sampler(tiny, prompt=prompt, conditioning="prompt")               # no plan node
    assert seen[-1] == prompt
