"""Model + tokenizer + plan + sampler (+ MoVQ) in one object: the API of the CLI and the nodes.

    pipe = Uni1Pipeline.from_pretrained("demo")
    result = pipe.sample("two red circles to the left of a blue square", seeds=[0])
    images = pipe.load_movq().decode(result.codes)          # (B, 3, H, W) in [-1, 1]

The pipeline holds no state between calls except the loaded weights, so one object serves any
number of requests (and a cancelled request leaves it as it was).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .checkpoint import CheckpointError, resolve_model_dir
from .conditioning import check_conditioning, default_conditioning, model_text
from .limits import check_batch, check_branches, check_regions, clamp_window, resolve_device, seed_to_int64
from .model import ModelConfig, Uni1Model
from .plan import Plan, make_plan
from .policy import PRESETS, SamplingPolicy
from .sampler import MODES, SampleStats, sample_codes
from .sequence import (I2I_SIZES, PIXELS_PER_CODE, PIXELS_PER_GRID_UNIT, ImageGrid, ImageVocab, check_positions,
                       check_size, i2i_prompt_ids, position_limit, supported_sizes, t2i_prompt_ids)
from .tokenizer import TextTokenizer


@dataclass
class Generation:
    codes: torch.Tensor          # (B, rows, cols) long
    stats: SampleStats
    plan: Plan | None
    conditioning: str            # the text the model was conditioned on
    width: int
    height: int


class Uni1Pipeline:
    def __init__(self, model: Uni1Model, tokenizer: TextTokenizer, model_dir: Path):
        self.model, self.tokenizer, self.model_dir = model, tokenizer, Path(model_dir)
        self.kv_cache = "bf16"
        uni1 = check_uni1_section(model.config.raw.get("uni1", {}), Path(model_dir) / "config.json")
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
    def from_pretrained(cls, name_or_path: str = "demo", dtype="auto", device=None, cache_dir=None,
                        quantize: str | None = None, group_size: int = 128, kv_cache: str = "auto"):
        """quantize None | "int8" | "int4": weight-only quantisation, streamed at load (a folder
        written by `python -m uni1_core quantize` loads as quantised by itself). kv_cache "auto"
        (int8 when the weights are quantised), "bf16" (the model dtype) or "int8"."""
        from .quantized_load import load_quantized, resolve_kv_cache
        device = resolve_device(device or "cpu")       # a missing CUDA named as such, before any read
        # a repo id's config.json is fetched and checked before any weight is downloaded
        model_dir = resolve_model_dir(name_or_path, cache_dir=cache_dir, check_config=ModelConfig.from_file)
        # The cheap files first, so that a bad one is reported before gigabytes of weights load.
        _precheck_uni1_section(Path(model_dir) / "config.json")
        tokenizer = TextTokenizer.from_dir(model_dir)
        model = load_quantized(model_dir, quantize, group_size, dtype=dtype, device=device)
        pipe = cls(model, tokenizer, model_dir)
        pipe.kv_cache = resolve_kv_cache(model, kv_cache)          # what the memory estimate assumes
        return pipe

    @property
    def device(self) -> torch.device:
        return self.model.device

    def load_movq(self, path_or_repo_id=None, dtype=None, device=None, cache_dir=None):
        """The image tokenizer that belongs to this model: an explicit path or repo id, else the
        MoVQ weights inside the model folder (the demo ships them), else ai-forever/MoVQGAN."""
        from .movq import MoVQ, default_source
        movq = MoVQ.from_pretrained(path_or_repo_id or default_source(self.model_dir), dtype=dtype or torch.float32,
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
               task: str = "depth", on_progress=None, on_preview=None, should_cancel=None,
               compile: bool | None = None) -> Generation:
        """Plan, build the prompt, sample one code grid per seed.

        `conditioning` ("prompt+plan", "prompt" or "plan"; default: the model's) is what the model
        reads; `use_plan=False` is "prompt". A model that declares grounding gets the plan's
        layout in its prompt as a map, unless `grounded=False` (for comparisons). `condition` (rows_c, cols)
        codes: an Omni image-conditioned request whose upper rows are the given image (forced)
        and whose lower rows the model writes. `compile`: the compiled decode step (None: on for
        CUDA only; see `sample_codes`)."""
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
        # Everything a request can make unbounded is checked here, before the sampler allocates
        # its rows and cache (see limits.py and docs/limits.md).
        seeds = [seed_to_int64(s) for s in seeds]
        check_batch(len(seeds))
        check_branches(branches, self.vocab.num_codes)
        if condition is None:
            grid = ImageGrid(width, height)
        else:
            grid = ImageGrid(width, height, prefix_codes=condition.to("cpu", torch.long))
        window = clamp_window(window, grid.stream_len)
        limit = position_limit(self.model.config)
        room = max(limit - 3 - grid.stream_len, 0)        # prompt tokens that fit beside the image

        def checked(ids, what):
            check_positions(len(ids), grid, limit, what, at_least=len(ids) > room)
            return ids

        if condition is None:
            prompt_ids = checked(t2i_prompt_ids(self.tokenizer, text, width, height, max_tokens=room), "the prompt")
        else:
            prompt_ids = checked(i2i_prompt_ids(self.tokenizer, text, width, height, task, max_tokens=room),
                                 "the prompt")
        regions = None
        if regional:
            boxes = plan.regions()
            check_regions(len(boxes))
            regions = [(checked(t2i_prompt_ids(self.tokenizer, region_text, width, height, max_tokens=room),
                                f"region {k} ({region_text[:40]!r})"), box)
                       for k, (region_text, box) in enumerate(boxes)]
        result = sample_codes(
            self.model, self.vocab, grid, [prompt_ids] * len(seeds), mode=mode,
            policy=policy or self.default_policy, seeds=seeds, window=window, coupling=coupling,
            branches=branches, regions=[regions] * len(seeds) if regions else None,
            on_progress=on_progress, on_preview=on_preview, should_cancel=should_cancel, compile=compile)
        return Generation(result.codes, result.stats, plan, text, width, height)

    def with_policy(self, **changes) -> SamplingPolicy:
        """The default policy with some fields changed (what the sampler node's widgets do)."""
        return dataclasses.replace(self.default_policy, **changes)


def _precheck_uni1_section(config_path: Path) -> None:
    """check_uni1_section on the raw config.json, before the model loads. A file that is not
    readable JSON is left to the model loader, whose message names that problem."""
    try:
        raw = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):
        return
    if isinstance(raw, dict):
        check_uni1_section(raw.get("uni1", {}), config_path)


def check_uni1_section(uni1, source: Path) -> dict:
    """The `uni1` section of a model's config.json (sizes, default preset and policy, image
    vocabulary), refused with a message naming the entry rather than failing later in the
    sampler. Returns it unchanged."""
    def bad(what):
        return CheckpointError(f"{source}: the 'uni1' section's {what}. Fix the entry or delete it "
                               "(every entry has a default).")

    def is_int(v, low=0):
        return type(v) is int and v >= low

    def check_sizes(key):
        sizes = uni1.get(key)
        if sizes is None:
            return
        if not (isinstance(sizes, list) and sizes and all(
                isinstance(wh, list) and len(wh) == 2 and all(is_int(v, 1) and v % PIXELS_PER_GRID_UNIT == 0
                                                              for v in wh) for wh in sizes)):
            raise bad(f"{key!r} must be a non-empty list of [width, height] pairs, each a positive "
                      f"multiple of {PIXELS_PER_GRID_UNIT} pixels; got {str(sizes)[:80]}")

    if not isinstance(uni1, dict):
        raise bad(f"value must be a JSON object, got {type(uni1).__name__}")
    check_sizes("sizes")
    check_sizes("i2i_sizes")
    if "default_size" in uni1:
        size = uni1["default_size"]
        sizes = [tuple(s) for s in uni1.get("sizes", supported_sizes())]
        if not (isinstance(size, list) and len(size) == 2 and tuple(size) in sizes):
            raise bad(f"'default_size' {str(size)[:40]} must be one of its sizes, e.g. "
                      f"{list(sizes[0])}")
    preset = uni1.get("default_preset", "uni1")
    if not (isinstance(preset, str) and preset in PRESETS):
        raise bad(f"'default_preset' {str(preset)[:40]!r} is not a preset; choose one of {', '.join(PRESETS)}")
    policy = uni1.get("default_policy", {})
    fields = {f.name for f in dataclasses.fields(SamplingPolicy)}
    if not isinstance(policy, dict):
        raise bad(f"'default_policy' must be an object of sampling settings, got {type(policy).__name__}")
    unknown = sorted(set(policy) - fields)
    if unknown:
        raise bad(f"'default_policy' has unknown settings {unknown}; known: {', '.join(sorted(fields))}")
    try:
        dataclasses.replace(PRESETS[preset], **policy)
    except (TypeError, ValueError) as err:
        raise bad(f"'default_policy' is invalid: {err}") from None
    for key, low in (("image_token_offset", 0), ("num_image_codes", 1)):
        if key in uni1 and not is_int(uni1[key], low):
            raise bad(f"{key!r} must be a whole number >= {low}, got {str(uni1[key])[:40]}")
    grounding = uni1.get("grounding")
    if grounding is not None and not (isinstance(grounding, dict) and is_int(grounding.get("grid"), 1)):
        raise bad("'grounding' must be an object with a positive whole 'grid' (cells per side)")
    return uni1
