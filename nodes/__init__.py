"""The Uni1 node classes (ComfyUI V1 node API), keyed by their permanent node ids.

Importing this package stays cheap: it imports torch (which ComfyUI has loaded already) and the
node modules, nothing else. The model, the sampler, the planner, safetensors and the hub client
are imported inside the functions that run a node, so /object_info answers before any model is
loaded. The runtime dependencies are looked up (not imported) up front, so a missing one is
reported at start-up (see ../__init__.py) rather than on the first run.
"""
import importlib.util
import sys

for _dependency in ("torch", "safetensors", "einops", "PIL", "numpy", "huggingface_hub"):
    if importlib.util.find_spec(_dependency) is None:
        raise ImportError(f"No module named {_dependency!r}", name=_dependency)

# ComfyUI imports the pack under its folder name, so uni1_core is `<folder>.uni1_core` here and
# not importable as `uni1_core`. Alias it, so a module of uni1_core that imports itself by absolute
# name finds this copy instead of failing (or finding some other installed version).
from .. import uni1_core as _uni1_core  # noqa: E402

sys.modules.setdefault("uni1_core", _uni1_core)

from . import paths  # noqa: E402
from .loaders import Uni1ModelLoader, Uni1VQLoader  # noqa: E402
from .plan import Uni1ReasoningPlan  # noqa: E402
from .sampler import Uni1SJDSampler  # noqa: E402
from .vq import Uni1VQDecode, Uni1VQEncode  # noqa: E402

paths.register_model_folder()

NODES = {
    "Uni1ModelLoader": Uni1ModelLoader,
    "Uni1VQLoader": Uni1VQLoader,
    "Uni1ReasoningPlan": Uni1ReasoningPlan,
    "Uni1SJDSampler": Uni1SJDSampler,
    "Uni1VQDecode": Uni1VQDecode,
    "Uni1VQEncode": Uni1VQEncode,
}

DISPLAY_NAMES = {
    "Uni1ModelLoader": "Uni1 Model Loader",
    "Uni1VQLoader": "Uni1 VQ Loader (MoVQGAN)",
    "Uni1ReasoningPlan": "Uni1 Reasoning Plan",
    "Uni1SJDSampler": "Uni1 SJD Sampler",
    "Uni1VQDecode": "Uni1 VQ Decode",
    "Uni1VQEncode": "Uni1 VQ Encode",
}
