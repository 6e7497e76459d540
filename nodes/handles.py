"""The objects that travel between Uni1 nodes (ComfyUI custom socket types).

Each is a small dataclass around uni1_core objects. They live in ComfyUI's node output cache,
which owns them: no module keeps a model in a global, so ComfyUI frees them when the graph changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..uni1_core.sequence import PIXELS_PER_CODE
from .runtime import Managed

UNI1_MODEL = "UNI1_MODEL"
UNI1_VQ = "UNI1_VQ"
UNI1_PLAN = "UNI1_PLAN"       # a uni1_core.plan.Plan
UNI1_TOKENS = "UNI1_TOKENS"
CATEGORY = "Uni1"


@dataclass
class ModelHandle:
    """A loaded Uni1Pipeline whose transformer is registered with ComfyUI's memory manager."""
    pipe: object                 # uni1_core.pipeline.Uni1Pipeline
    managed: Managed
    name: str

    def ready(self):
        """The pipeline with its weights on the compute device (reloaded if ComfyUI offloaded them)."""
        self.managed.load()
        return self.pipe


@dataclass
class VQHandle:
    """A MoVQGAN image tokenizer registered with ComfyUI's memory manager."""
    movq: object                 # uni1_core.movq.MoVQ
    managed: Managed
    name: str

    def ready(self):
        self.managed.load()
        return self.movq

    @property
    def device(self) -> torch.device:
        return next(self.movq.parameters()).device


@dataclass
class Tokens:
    """A batch of MoVQ code grids.

    `codes` is (B, rows, cols) long on the CPU; one code covers PIXELS_PER_CODE^2 pixels. For an Omni
    image-conditioned result the first `condition_rows` rows are the given image (the upper panel)
    and the rest were generated; for a VQ Encode output `kind` is "condition"."""
    codes: torch.Tensor
    kind: str = "generated"      # "generated" | "condition"
    condition_rows: int = 0

    def __post_init__(self):
        if self.codes.dim() != 3:
            raise ValueError(f"tokens must be (batch, rows, cols), got shape {tuple(self.codes.shape)}")
        if self.codes.numel() == 0:
            raise ValueError(f"the tokens hold no codes (shape {tuple(self.codes.shape)}): connect the tokens "
                             f"of a Uni1 SJD Sampler or a Uni1 VQ Encode")
        self.codes = self.codes.to("cpu", torch.long)

    @property
    def width(self) -> int:
        return self.codes.shape[2] * PIXELS_PER_CODE

    @property
    def height(self) -> int:
        return self.codes.shape[1] * PIXELS_PER_CODE
