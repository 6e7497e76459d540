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
from .conditioning import check_conditioning, default_conditioning, model_text
from .model import Uni1Model
from .plan import Plan, make_plan
from .policy import PRESETS, SamplingPolicy
from .sampler import MODES, sample_codes
from .sequence import (I2I_SIZES, PIXELS_PER_CODE, ImageGrid, ImageVocab, check_size, i2i_prompt_ids,
                       supported_sizes, t2i_prompt_ids)
from .tokenizer import TextTokenizer

DEFAULT_MOVQ_REPO = "ai-forever/MoVQGAN"
MAX_REGIONS = 16    # regional guidance adds one batch row per planned box: bounded before allocating
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
        # What the model reads (conditioning.py): "plan" for a model trained on the plan's own
        # captions (grounded: the demo model), "prompt+plan" for one trained on natural captions.
        self.default_conditioning = default_conditioning(uni1)

    @classmethod
    def from_pretrained(cls, name_or_path: str = "demo", dtype="auto", device=None, cache_dir=None):
        model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir)
        model = Uni1Model.from_pretrained(model_dir, dtype=dtype, device=device or "cpu")
        return cls(model, TextTokenizer.from_dir(model_dir), model_dir)

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

    def conditioning(self, plan: str | Plan, grounded: bool = True, *,
                     conditioning: str | None = None) -> tuple[Plan | None, str]:
        """The plan as this model reads it (None for conditioning "prompt") and the text it is
        conditioned on (see conditioning.py; default: the model's). A model that declares
        grounding gets the layout snapped to its grid and the map after the text, unless
        `grounded=False`."""
        choice = check_conditioning(conditioning or self.default_conditioning)
        return model_text(plan, choice, self.grounding if grounded else None)

    def sample(self, prompt: str | Plan, width: int | None = None, height: int | None = None, *,
               mode: str = "sjd_coupled", policy: SamplingPolicy | None = None, seeds=(0,),
               window: int | None = None, coupling: str = "maximal", branches: int | None = None,
               regional: bool = False, conditioning: str | None = None,
               use_plan: bool = True, grounded: bool = True, condition: torch.Tensor | None = None,
               task: str = "depth", on_progress=None, on_preview=None, should_cancel=None) -> Generation:
        """Plan, build the prompt, sample one code grid per seed.

        `conditioning` ("prompt+plan", "prompt" or "plan"; default: the model's) is what the model
        reads; `use_plan=False` is "prompt". A model that declares grounding gets the plan's
        layout in its prompt as a map, unless `grounded=False` (for comparisons). `condition` (rows_c, cols)
        codes: an Omni image-conditioned request whose upper rows are the given image (forced)
        and whose lower rows the model writes."""
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; choose one of {', '.join(MODES)}")
        width, height = width or self.default_size[0], height or self.default_size[1]
        check_size(width, height, self.sizes if condition is None else self.i2i_sizes)
        choice = check_conditioning(conditioning or self.default_conditioning) if use_plan else "prompt"
        if regional and choice == "prompt" and not isinstance(prompt, Plan):
            if not use_plan:
                raise ValueError("regional guidance needs a plan: turn planning on or pass a Plan")
            prompt = make_plan(prompt)      # the boxes come from the plan; the model reads the prompt
        plan, text = self.conditioning(prompt, grounded, conditioning=choice)
        if condition is None:
            grid = ImageGrid(width, height)
            prompt_ids = t2i_prompt_ids(self.tokenizer, text, width, height)
        else:
            grid = ImageGrid(width, height, prefix_codes=condition.to("cpu", torch.long))
            prompt_ids = i2i_prompt_ids(self.tokenizer, text, width, height, task)
        regions = None
        if regional:
            boxes = plan.regions()
            if len(boxes) > MAX_REGIONS:
                raise ValueError(f"regional guidance takes at most {MAX_REGIONS} boxes (one batch row each); this "
                                 f"plan has {len(boxes)}. Lower the counts, or turn regional off")
            regions = [(t2i_prompt_ids(self.tokenizer, region_text, width, height), box)
                       for region_text, box in boxes]
        self.check_length(prompt_ids, [ids for ids, _ in regions or []], grid)
        seeds = [int(s) for s in seeds]
        result = sample_codes(
            self.model, self.vocab, grid, [prompt_ids] * len(seeds), mode=mode,
            policy=policy or self.default_policy, seeds=seeds, window=window, coupling=coupling,
            branches=branches, regions=[regions] * len(seeds) if regions else None,
            on_progress=on_progress, on_preview=on_preview, should_cancel=should_cancel)
        return Generation(result.codes, result.stats, plan, text, width, height)

    def check_length(self, prompt_ids: list[int], region_ids: list[list[int]], grid: ImageGrid) -> None:
        """Refuse, before any allocation, a prompt (or a region's) longer than the model can read.

        When the image's stream fits the positions the model was trained on, the prompt must fit
        in what is left; a model whose config lists fewer positions than the stream (positions
        past it are extrapolated, or stretched by dynamic RoPE) still reads at most that many
        prompt tokens."""
        limit = self.model.config.max_position_embeddings
        room = limit - grid.stream_len if grid.stream_len < limit else limit
        longest = max([len(prompt_ids)] + [len(ids) for ids in region_ids])
        if longest > room:
            raise ValueError(f"the prompt is {longest} tokens, but this model reads at most {room} beside a "
                             f"{grid.width}x{grid.height} image ({limit} positions in all, {grid.stream_len} for the "
                             "image). Shorten the prompt")

    def with_policy(self, **changes) -> SamplingPolicy:
        """The default policy with some fields changed (what the sampler node's widgets do)."""
        return dataclasses.replace(self.default_policy, **changes)
