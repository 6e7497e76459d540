"""Uni1 SJD Sampler: plan (or text) -> image tokens, with progress, live preview and Cancel."""
from __future__ import annotations

import json

import torch

from ..uni1_core.limits import SEED_MAX
from ..uni1_core.sequence import I2I_PANELS, PIXELS_PER_CODE, PIXELS_PER_GRID_UNIT
from . import runtime
from .handles import CATEGORY, UNI1_MODEL, UNI1_PLAN, UNI1_TOKENS, UNI1_VQ, Tokens
from .plan import AUTO, CONDITIONING_TOOLTIP, conditioning_choices
from .preflight import check_memory
from .vq import codes_to_pil

MODES = ["sjd_coupled", "sjd", "ar"]
TASKS = ["depth", "canny", "subject"]
MAX_SEED = SEED_MAX                   # the widget offers every seed the sampler takes
PREVIEW_EVERY_S = 1.0   # at least this long between two live previews (then 10x the decode time)


def format_stats(stats: dict, width: int, height: int, batch: int = 1) -> str:
    """The sampler's statistics as a few readable lines, then the raw dict as JSON."""
    head = f"{stats.get('mode', '?')} {width}x{height}" + (f", batch {batch}" if batch > 1 else "")
    lines = [f"{head}: {stats.get('image_tokens', '?')} image tokens" + (" each" if batch > 1 else "")]
    if "forwards" in stats:
        fpt = stats.get("forwards_per_token")
        lines.append(f"{stats['forwards']} forwards" + (f" ({fpt:.3f} per token)" if fpt is not None else ""))
    if "seconds" in stats:
        lines.append(f"{stats['seconds']:.2f} s")
    return "\n".join(lines) + "\n" + json.dumps(stats, indent=1, sort_keys=True, default=str)


def pick_condition(condition: Tokens | None):
    """The Omni condition grid (rows_c, cols), or None."""
    if condition is None:
        return None
    if condition.kind != "condition":
        raise ValueError("the condition input takes the output of Uni1 VQ Encode, not sampled tokens")
    if condition.codes.shape[0] != 1:
        raise ValueError(f"the condition holds {condition.codes.shape[0]} images; the sampler conditions on "
                         f"one. Pick one image before Uni1 VQ Encode (batch_size there is the number of seeds).")
    return condition.codes[0]


def pick_source(plan, prompt: str, conditioning: str):
    """(the plan or the prompt, the conditioning choice or None for the model's default): the
    sampler's own choice wins; "auto" follows the plan node's."""
    chosen = getattr(plan, "conditioning", AUTO) if conditioning == AUTO else conditioning
    source = getattr(plan, "plan", plan) if plan is not None else prompt
    return source, None if chosen == AUTO else chosen


class Uni1SJDSampler:
    DESCRIPTION = ("Draws the image tokens of one or more images, row by row, with speculative Jacobi decoding: "
                   "sjd_coupled (fastest, exact), sjd, or plain ar. Shows progress and, with a VQ connected, "
                   "the picture appearing as rows complete. Cancel stops it and leaves the model ready.")
    CATEGORY = CATEGORY
    RETURN_TYPES = (UNI1_TOKENS, "STRING")
    RETURN_NAMES = ("tokens", "stats")
    OUTPUT_TOOLTIPS = ("The sampled code grids; connect to Uni1 VQ Decode.",
                       "Sampling statistics: forwards per token, accepted draft lengths, time.")
    FUNCTION = "sample"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": (UNI1_MODEL, {"tooltip": "From Uni1 Model Loader."}),
                "width": ("INT", {"default": 0, "min": 0, "max": 2048, "step": PIXELS_PER_GRID_UNIT,
                                  "tooltip": "Image width in pixels, one of the model's sizes (a wrong one fails "
                                             "with the nearest listed). 0: the model's default size (Lumina-mGPT "
                                             "2.0: 768x768, which has 72 siblings of the same area; demo: 64x64)."}),
                "height": ("INT", {"default": 0, "min": 0, "max": 2048, "step": PIXELS_PER_GRID_UNIT,
                                   "tooltip": "Image height in pixels (see width; 0 for either means the model's "
                                              "default size). Ignored with a condition: the output is then twice "
                                              "the condition's height."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": MAX_SEED, "control_after_generate": True,
                                 "tooltip": "Random seed; image i of the batch uses seed + i. The same seed and "
                                            "settings give the same image again."}),
                "mode": (MODES, {"default": "sjd_coupled",
                                 "tooltip": "sjd_coupled: speculative Jacobi decoding with coupled drafts (fewest "
                                            "forwards). sjd: the original SJD. ar: one token per forward (the "
                                            "reference). All three sample the same distribution."}),
                "cfg": ("FLOAT", {"default": 4.0, "min": 1.0, "max": 20.0, "step": 0.1,
                                  "tooltip": "Classifier-free guidance scale; 1 turns guidance off (half the "
                                             "compute). Lumina-mGPT 2.0 uses 4."}),
                "temperature": ("FLOAT", {"default": 1.0, "min": 0.05, "max": 3.0, "step": 0.05,
                                          "tooltip": "Softmax temperature of the image-token distribution."}),
                "top_k": ("INT", {"default": 4096, "min": 0, "max": 65536,
                                  "tooltip": "Keep the k most likely image tokens (0 = all). Lumina-mGPT 2.0: 4096."}),
                "top_p": ("FLOAT", {"default": 1.0, "min": 0.01, "max": 1.0, "step": 0.01,
                                    "tooltip": "Nucleus sampling: keep the smallest set of tokens with this total "
                                               "probability (1 = off)."}),
                "window": ("INT", {"default": 0, "min": 0, "max": 256,
                                   "tooltip": "Draft window of SJD in tokens (0 = the mode's default). Ignored "
                                              "by ar."}),
                "regional": ("BOOLEAN", {"default": False,
                                         "tooltip": "Plan-guided regional guidance: each planned object also "
                                                    "guides its own box. Needs a plan (not raw text)."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 16,
                                       "tooltip": "Images per run (seeds seed .. seed + batch_size - 1)."}),
                "compile": ("BOOLEAN", {"default": True,
                                        "tooltip": "On an NVIDIA GPU, compile the decode step with torch.compile "
                                                   "(CUDA graphs): the first run of a size compiles for a while, "
                                                   "later runs are faster. Off, or on a CPU, where it is slower: "
                                                   "the plain model. Same images either way."}),
            },
            "optional": {
                "plan": (UNI1_PLAN, {"tooltip": "From Uni1 Reasoning Plan (with its conditioning choice). Wins over "
                                                "the prompt below."}),
                "prompt": ("STRING", {"multiline": True, "dynamicPrompts": True, "default": "",
                                      "tooltip": "Used when no plan is connected; it is planned automatically."}),
                "vq": (UNI1_VQ, {"tooltip": "Optional: the VQ used for the live preview of finished rows."}),
                "condition": (UNI1_TOKENS, {"tooltip": "Omni model only: an image from Uni1 VQ Encode. The "
                                                       "output is a two-panel image whose upper half is it."}),
                "task": (TASKS, {"default": "depth",
                                 "tooltip": "Omni image-conditioned task (used only with a condition)."}),
                "conditioning": (conditioning_choices(), {
                    "default": AUTO, "tooltip": CONDITIONING_TOOLTIP + " Here, auto follows the plan node's "
                                                "choice when a plan is connected."}),
            },
        }

    def sample(self, model, width, height, seed, mode, cfg, temperature, top_k, top_p, window, regional,
               batch_size, compile=True, plan=None, prompt="", vq=None, condition=None, task="depth",
               conditioning=AUTO):
        from ..uni1_core.limits import batch_seeds
        from ..uni1_core.sampler import DEFAULT_BRANCHES, DEFAULT_WINDOW, Cancelled
        if plan is None and not (prompt and prompt.strip()):
            raise ValueError("nothing to draw: connect a Uni1 Reasoning Plan to 'plan' or type a prompt")
        # Any seed the widget allows (0 .. 2^64-1, -1 from an API workflow wraps) and a bounded
        # batch, checked before the model is touched.
        seeds = batch_seeds(int(seed), int(batch_size))
        cond = pick_condition(condition)
        if cond is not None:
            width, height = cond.shape[1] * PIXELS_PER_CODE, cond.shape[0] * PIXELS_PER_CODE * I2I_PANELS

        source, choice = pick_source(plan, prompt, conditioning)
        if cond is None and not (width and height):
            width, height = model.pipe.default_size
        pipe = check_memory(model, width, height, int(batch_size), float(cfg) != 1.0,
                            int(window) or DEFAULT_WINDOW[mode], DEFAULT_BRANCHES[mode])
        policy = pipe.with_policy(cfg_scale=float(cfg), temperature=float(temperature),
                                  top_k=int(top_k) or None, top_p=float(top_p) if top_p < 1 else None)
        movq = vq.ready() if vq is not None else None
        rows, cols = height // PIXELS_PER_CODE, width // PIXELS_PER_CODE
        total = len(seeds) * (rows * (cols + 1) + 1)     # stream tokens over the batch, as on_progress counts
        progress = runtime.Progress(total, preview_fn=_previewer(movq, rows) if movq else None,
                                    preview_every=PREVIEW_EVERY_S)
        try:
            with torch.inference_mode():
                result = pipe.sample(
                    source, width, height, mode=mode, policy=policy, conditioning=choice,
                    seeds=seeds, window=int(window) or None, regional=bool(regional),
                    condition=cond, task=task, on_progress=progress.on_progress,
                    on_preview=progress.on_preview if movq is not None else None,
                    should_cancel=runtime.interrupted, compile=None if compile else False)
        except Cancelled:
            runtime.raise_interrupt()
        finally:
            runtime.free_cache()
        stats = dict(result.stats.to_dict(), previews=progress.previews)
        text = format_stats(stats, result.width, result.height, len(seeds))
        tokens = Tokens(result.codes, condition_rows=0 if cond is None else cond.shape[0])
        return {"ui": {"uni1_stats": [text]}, "result": (tokens, text)}


def finished_rows(done_mask: torch.Tensor) -> int:
    """How many leading rows of the first image are complete, from the sampler's (B, rows, cols)
    mask of drawn cells (SJD drafts run ahead, so later cells may be drawn before a row completes)."""
    complete = done_mask[0].all(dim=1).long()
    return int(complete.cumprod(0).sum())


def _previewer(movq, rows: int):
    """preview_fn for runtime.Progress: the sampler's on_preview(codes, done_mask) -> the finished
    rows of the first image, decoded and padded to the full size."""
    def preview(codes, done_mask):
        done = min(finished_rows(done_mask), rows)
        if done <= 0:
            return None
        return codes_to_pil(movq, codes[:1, :done].to("cpu", torch.long), full_rows=rows)
    return preview
