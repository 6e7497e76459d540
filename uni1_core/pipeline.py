"""Model + tokenizer + plan + sampler (+ MoVQ) in one object: the API of the CLI and the nodes.

    pipe = Uni1Pipeline.from_pretrained("demo")
    result = pipe.sample("two red circles to the left of a blue square", seeds=[0])
    images = pipe.load_movq().decode(result.codes)          # (B, 3, H, W) in [-1, 1]

The pipeline holds no state between calls except the loaded weights, so one object serves any
number of requests (and a cancelled request leaves it as it was).
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import resolve_model_dir
from .model import Uni1Model
from .plan import Plan, make_plan
from .policy import PRESETS, SamplingPolicy
from .sampler import MODES, sample_codes
from .sequence import (I2I_SIZES, PIXELS_PER_CODE, ImageGrid, ImageVocab, check_size, i2i_prompt_ids,
                       supported_sizes, t2i_prompt_ids)
from .tokenizer import TextTokenizer

DEFAULT_MOVQ_REPO = "ai-forever/MoVQGAN"
MOVQ_FILES = ("movq.safetensors", "movqgan_270M.safetensors", "movqgan_270M.ckpt")


@dataclass
class Generation:
    codes: torch.Tensor          # (B, rows, cols) long
    stats: dict
    plan: Plan | None
    conditioning: str            # the text the model was conditioned on
    width: int
    height: int


class Uni1Pipeline:
    def __init__(self, model: Uni1Model, tokenizer: TextTokenizer, model_dir: Path):
        self.model, self.tokenizer, self.model_dir = model, tokenizer, Path(model_dir)
        self.kv_cache = "bf16"
        uni1 = model.config.raw.get("uni1", {})
        self.vocab = ImageVocab.from_tokenizer(tokenizer, model.config.vocab_size, uni1)
        self.sizes = [tuple(s) for s in uni1.get("sizes", supported_sizes())]
        # Image-conditioned (two-panel) sizes: the folder's own list, else the Omni reference's
        # panel; a folder that lists its sizes but no panel sizes uses the same list for both.
        self.i2i_sizes = [tuple(s) for s in uni1.get("i2i_sizes", uni1.get("sizes", I2I_SIZES))]
        self.default_size = tuple(uni1.get("default_size", (768, 768) if (768, 768) in self.sizes
                                           else self.sizes[0]))
        # A folder may recommend its own sampling settings (the demo model does: a lower CFG).
        self.default_policy = dataclasses.replace(PRESETS[uni1.get("default_preset", "uni1")],
                                                  **uni1.get("default_policy", {}))
        # A model trained on grounded captions (the demo model) declares its cell grid, the
        # object sizes it knows and its map symbols: {"grid": 8, "min_cells": 2, "max_cells": 4,
        # "symbols": {"red circle": "A", ...}}. The plan's layout is then snapped to that grid
        # and written into the prompt as a map (Plan.grounding_text).
        self.grounding = uni1.get("grounding")

    @classmethod
    def from_pretrained(cls, name_or_path: str = "demo", dtype="auto", device=None, cache_dir=None,
                        quantize: str | None = None, group_size: int = 128, kv_cache: str = "auto"):
        """quantize None | "int8" | "int4": weight-only quantisation, streamed at load (a folder
        written by `python -m uni1_core quantize` loads as quantised by itself). kv_cache "auto"
        (int8 when the weights are quantised), "bf16" (the model dtype) or "int8"."""
        from .quantized_load import load_quantized, resolve_kv_cache
        model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir)
        model = load_quantized(model_dir, quantize, group_size, dtype=dtype, device=device or "cpu")
        pipe = cls(model, TextTokenizer.from_dir(model_dir), model_dir)
        pipe.kv_cache = resolve_kv_cache(model, kv_cache)          # what the memory estimate assumes
        return pipe

    @property
    def device(self) -> torch.device:
        return self.model.device

    def load_movq(self, path_or_repo_id=None, dtype=None, device=None, cache_dir=None):
        """The image tokenizer that belongs to this model: an explicit path or repo id, else the
        MoVQ weights inside the model folder (the demo ships them), else ai-forever/MoVQGAN."""
        from .movq import MoVQ
        if path_or_repo_id is None:
            local = [self.model_dir / f for f in MOVQ_FILES if (self.model_dir / f).is_file()]
            path_or_repo_id = str(local[0]) if local else DEFAULT_MOVQ_REPO
        movq = MoVQ.from_pretrained(path_or_repo_id, dtype=dtype or torch.float32,
                                    device=device or self.device, cache_dir=cache_dir)
        movq.check_compatible(self.vocab.num_codes, downsample_factor=PIXELS_PER_CODE)
        return movq

    def plan(self, prompt: str) -> Plan:
        return make_plan(prompt)

    def conditioning(self, plan: Plan, grounded: bool = True) -> tuple[Plan, str]:
        """The plan as this model reads it and the text it is conditioned on: for a model that
        declares grounding, the layout snapped to its grid and the map after the sentence."""
        g = self.grounding
        if not (g and grounded):
            return plan, plan.conditioning_text()
        plan = plan.on_grid(g["grid"], g.get("min_cells", 1), g.get("max_cells"))
        return plan, plan.conditioning_text(grounding=g["grid"], symbols=g.get("symbols"))

    def sample(self, prompt: str | Plan, width: int | None = None, height: int | None = None, *,
               mode: str = "sjd_coupled", policy: SamplingPolicy | None = None, seeds=(0,),
               window: int | None = None, coupling: str = "maximal", branches: int | None = None,
               regional: bool = False,
               use_plan: bool = True, grounded: bool = True, condition: torch.Tensor | None = None,
               task: str = "depth", on_progress=None, on_preview=None, should_cancel=None) -> Generation:
        """Plan (unless `use_plan=False`), build the prompt, sample one code grid per seed.

        A model that declares grounding gets the plan's layout in its prompt as a map, unless
        `grounded=False` (the plan's sentence only: for comparisons). `condition` (rows_c, cols)
        codes: an Omni image-conditioned request whose upper rows are the given image (forced)
        and whose lower rows the model writes."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        width, height = width or self.default_size[0], height or self.default_size[1]
        check_size(width, height, self.sizes if condition is None else self.i2i_sizes)
        plan = prompt if isinstance(prompt, Plan) else (make_plan(prompt) if use_plan else None)
        plan, text = self.conditioning(plan, grounded) if plan is not None else (None, prompt)
        if regional and plan is None:
            raise ValueError("regional guidance needs a plan: turn planning on or pass a Plan")
        if condition is None:
            grid = ImageGrid(width, height)
            prompt_ids = t2i_prompt_ids(self.tokenizer, text, width, height)
        else:
            grid = ImageGrid(width, height, prefix_codes=condition.to("cpu", torch.long))
            prompt_ids = i2i_prompt_ids(self.tokenizer, text, width, height, task)
        regions = None
        if regional:
            regions = [(t2i_prompt_ids(self.tokenizer, region_text, width, height), box)
                       for region_text, box in plan.regions()]
        seeds = [int(s) for s in seeds]
        result = sample_codes(
            self.model, self.vocab, grid, [prompt_ids] * len(seeds), mode=mode,
            policy=policy or self.default_policy, seeds=seeds, window=window, coupling=coupling,
            branches=branches, regions=[regions] * len(seeds) if regions else None,
            on_progress=on_progress, on_preview=on_preview, should_cancel=should_cancel)
        return Generation(result.codes, result.stats, plan, text, width, height)

    def with_policy(self, **changes) -> SamplingPolicy:
        """The default policy with some fields changed (what the sampler node's widgets do)."""
        return dataclasses.replace(self.default_policy, **changes)
