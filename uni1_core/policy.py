"""The sampling distribution: one function from model logits to the probabilities every mode samples.

Plain AR, the drafts of speculative Jacobi decoding and their verification must all use the
*same* distribution, or the speculative modes stop being exact (see docs/sampling.md, "One
distribution function"). So it lives here, as a pure function of the logits and the stream position, and the
sampler never computes a probability any other way.

Everything is over the *image sub-vocabulary*: the `num_codes` code tokens followed by the two
structural tokens, row end and end of image (`V' = num_codes + 2` columns, see `image_logits`).
For a stream position k (0-based, counted after the image header) the distribution is:

    c      = global conditional logits, blended with regional branches (plan-guided sampling)
    l      = u + g_k * (c - u)                 CFG mix first (g_k = 1: c itself, no u needed)
    l      = -inf on the structural columns    masks after the mix (no overflow from g * -inf)
    l      = l / temperature
    l      = top-k, then top-n-sigma, then top-p
    p      = softmax(l)                        all in fp32
    p      = one-hot where the grid forces a token (row end, end of image, condition rows)
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

CFG_SCHEDULES = ("constant", "lumina_decay")


@dataclass(frozen=True)
class SamplingPolicy:
    """How logits become probabilities. Frozen: one policy object describes one distribution.

    cfg_scale: classifier-free guidance `u + g (c - u)`; 1.0 turns CFG (and its forward rows) off.
    cfg_schedule: "constant", or "lumina_decay": the reference's plain-AR path, which before
        every image token updates g in place: `g = max(cfg_decay_floor, g * (1 - n / A))` with
        n = tokens since the image start (k + 2 at stream position k) and A = (H/16)(W/16),
        a quarter of the code count. It depends on the position only, so every mode can use it.
    cfg_free_tokens: the first stream positions use the conditional logits alone. (The
        reference's SJD path skips CFG for its first 3 steps; those are the header tokens, which
        we force, so its preset uses 0 here.)
    temperature: > 0. top_k: keep the k largest (ties kept), None = off. top_p: nucleus, None =
        off. top_n_sigma: keep logits >= max - n * std (std over the finite logits), None = off.
    region_feather: width in code cells of the linear ramp at a region box's border.
    region_strength: weight of a region branch well inside its box (1 = the region's logits
        replace the global conditional logits there).
    """
    cfg_scale: float = 4.0
    cfg_schedule: str = "constant"
    cfg_decay_floor: float = 4.0
    cfg_free_tokens: int = 0
    temperature: float = 1.0
    top_k: int | None = 4096
    top_p: float | None = None
    top_n_sigma: float | None = None
    region_feather: float = 2.0
    region_strength: float = 1.0

    def __post_init__(self):
        if self.cfg_schedule not in CFG_SCHEDULES:
            raise ValueError(f"cfg_schedule {self.cfg_schedule!r} is unknown; choose one of {CFG_SCHEDULES}")
        if not (math.isfinite(self.cfg_scale) and self.cfg_scale >= 0):
            raise ValueError(f"cfg_scale must be a finite number >= 0 (1.0 = no guidance), got {self.cfg_scale}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise ValueError(f"temperature must be > 0, got {self.temperature}; for greedy decoding use top_k=1")
        if self.top_k is not None and self.top_k < 1:
            raise ValueError(f"top_k must be >= 1 or None (off), got {self.top_k}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None (off), got {self.top_p}")
        if self.top_n_sigma is not None and not self.top_n_sigma >= 0:
            raise ValueError(f"top_n_sigma must be >= 0 or None (off), got {self.top_n_sigma}")
        if self.cfg_free_tokens < 0:
            raise ValueError(f"cfg_free_tokens must be >= 0, got {self.cfg_free_tokens}")
        if not self.region_feather >= 0 or not 0 <= self.region_strength <= 1:
            raise ValueError("region_feather must be >= 0 and region_strength in [0, 1], got "
                             f"{self.region_feather} and {self.region_strength}")

    @property
    def uses_cfg(self) -> bool:
        """False when no position mixes in the unconditional branch (its rows are then skipped)."""
        return self.cfg_scale != 1.0

    def replace(self, **changes) -> "SamplingPolicy":
        return replace(self, **changes)

    def guidance(self, grid) -> torch.Tensor:
        """(stream_len,) float64: the guidance scale g_k at every stream position (1.0 = cond only)."""
        n = grid.stream_len
        g = torch.full((n,), float(self.cfg_scale), dtype=torch.float64)
        if self.cfg_schedule == "lumina_decay" and self.cfg_scale != 1.0:
            # The reference mutates g before every image token, in Python floats; so do we.
            area = (grid.rows / 2) * (grid.cols / 2)
            scale = float(self.cfg_scale)
            for k in range(n):
                scale = max(self.cfg_decay_floor, scale * (1 - (k + 2) / area))
                g[k] = scale
        g[: self.cfg_free_tokens] = 1.0
        return g

    def probs(self, cond: torch.Tensor, uncond: torch.Tensor | None, positions: torch.Tensor,
              guidance: torch.Tensor, forced: torch.Tensor, region_cond: torch.Tensor | None = None,
              region_weight: torch.Tensor | None = None) -> torch.Tensor:
        """The distribution at N stream positions, (N, V') float32.

        cond, uncond: (N, V') sub-vocabulary logits (`image_logits`); uncond may be None when
            every g at these positions is 1.
        positions: (N,) long stream positions k. guidance: (stream_len,) from `guidance(grid)`
            (pass it as float32 on the logits' device to save two conversions per call), or None
            when uncond is None and no position is guided.
        forced: (stream_len,) long sub-vocabulary index forced at each position, -1 where free
            (`forced_sub_ids`).
        region_cond: (N, R, V') logits of the regional conditional rows; region_weight: (N, R)
            their weights at these positions (`region_weights`, zeros for padding regions).
        """
        c = cond.float()
        if region_cond is not None and region_cond.shape[1] > 0:
            w = region_weight.float() * self.region_strength
            total = w.sum(-1, keepdim=True)
            w = torch.where(total > 1, w / total.clamp_min(1e-30), w)          # never more than the region
            c = c + (w[..., None] * (region_cond.float() - c[:, None, :])).sum(1)
        if uncond is not None:
            g = guidance.to(c.device).index_select(0, positions).float()[:, None]
            u = uncond.float()
            l = torch.where(g == 1.0, c, u + g * (c - u))
        else:
            # guidance None: the caller knows that no position is guided (saves a check per step)
            if guidance is not None and bool((guidance.to(c.device)[positions] != 1.0).any()):
                raise ValueError("these positions use classifier-free guidance but no unconditional logits were given")
            l = c
        num_codes = l.shape[-1] - 2
        if l is cond:
            l = l.clone()                                                      # never write into the caller's logits
        l[:, num_codes:] = -math.inf                                           # codes only, unless forced
        if self.temperature != 1.0:
            l = l / self.temperature
        if self.top_k is not None and self.top_k < num_codes:
            # the k-th largest value (selection, cheaper than topk's partial sort on CPU)
            kth = l.kthvalue(l.shape[-1] - self.top_k + 1, dim=-1, keepdim=True).values
            l.masked_fill_(l < kth, -math.inf)                                # ties at the k-th value stay
        if self.top_n_sigma is not None:
            l = _top_n_sigma(l, self.top_n_sigma)
        p = torch.softmax(l, dim=-1)
        if self.top_p is not None and self.top_p < 1:
            p = _top_p(p, self.top_p)
        f = forced.to(c.device).index_select(0, positions)
        one_hot = torch.zeros_like(p).scatter_(1, f.clamp_min(0)[:, None], 1.0)
        return torch.where((f >= 0)[:, None], one_hot, p)


def _top_n_sigma(l: torch.Tensor, n: float) -> torch.Tensor:
    """Keep logits >= max - n * std, the (population) std taken over the finite logits only,
    as the reference's TopnsigmaLogitsWarper3d (which counts logits > -10000 as finite)."""
    valid = l > -1e4
    count = valid.sum(-1, keepdim=True).clamp_min(1)
    x = torch.where(valid, l, torch.zeros_like(l))
    mean = x.sum(-1, keepdim=True) / count
    var = (torch.where(valid, l - mean, torch.zeros_like(l)) ** 2).sum(-1, keepdim=True) / count
    top = l.max(-1, keepdim=True).values
    return l.masked_fill(l < top - n * var.sqrt(), -math.inf)


def _top_p(p: torch.Tensor, top_p: float) -> torch.Tensor:
    """Smallest set of most likely tokens whose mass reaches top_p (the first token always stays)."""
    sorted_p, order = torch.sort(p, dim=-1, descending=True)
    mass_before = torch.cumsum(sorted_p, dim=-1) - sorted_p
    drop_sorted = mass_before >= top_p
    drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
    p = p.masked_fill(drop, 0.0)
    return p / p.sum(-1, keepdim=True)


# ---------------------------------------------------------------------------------------------
# The image sub-vocabulary and the grid's structure

def sub_vocab_ids(vocab) -> torch.Tensor:
    """(num_codes + 2,) vocabulary ids of the sub-vocabulary: codes, row end, end of image."""
    codes = torch.arange(vocab.num_codes, dtype=torch.long) + vocab.code_offset
    return torch.cat([codes, torch.tensor([vocab.row_end, vocab.image_end], dtype=torch.long)])


def image_logits(logits: torch.Tensor, vocab) -> torch.Tensor:
    """(..., vocab_size) model logits -> (..., num_codes + 2) sub-vocabulary logits (a copy)."""
    codes = logits[..., vocab.code_offset: vocab.code_offset + vocab.num_codes]
    return torch.cat([codes, logits[..., [vocab.row_end, vocab.image_end]]], dim=-1)


def forced_sub_ids(grid, vocab) -> torch.Tensor:
    """(stream_len,) long: the sub-vocabulary index the grid forces at each stream position, -1 if free."""
    ids = grid.forced_ids(vocab)
    sub = torch.full_like(ids, -1)
    is_code = (ids >= vocab.code_offset) & (ids < vocab.code_offset + vocab.num_codes)
    sub[is_code] = ids[is_code] - vocab.code_offset
    sub[ids == vocab.row_end] = vocab.num_codes
    sub[ids == vocab.image_end] = vocab.num_codes + 1
    return sub


def region_weights(boxes, grid, feather: float = 2.0) -> torch.Tensor:
    """(R, rows, cols) float32 weights in [0, 1] of R boxes (x0, y0, x1, y1), normalised to 0..1.

    A code cell's weight is 1 well inside its box and 0 outside, with a linear ramp `feather`
    cells wide centred on the border (feather 0: a hard edge). Measured at cell centres; box
    edges on the image border are not feathered.
    """
    out = torch.zeros(len(boxes), grid.rows, grid.cols, dtype=torch.float32)
    y = (torch.arange(grid.rows, dtype=torch.float64) + 0.5) / grid.rows
    x = (torch.arange(grid.cols, dtype=torch.float64) + 0.5) / grid.cols
    for i, box in enumerate(boxes):
        if len(box) != 4:
            raise ValueError(f"region box {i} must be (x0, y0, x1, y1), got {box!r}")
        x0, y0, x1, y1 = (float(v) for v in box)
        if not (0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1):
            raise ValueError(f"region box {i} = {box!r} must satisfy 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1 "
                             "(normalised to the image)")
        # signed distance to the box border in cells; an edge on the canvas border is no border
        far_x, far_y = torch.full_like(x, float("inf")), torch.full_like(y, float("inf"))
        dx = torch.minimum(x - x0 if x0 > 0 else far_x, x1 - x if x1 < 1 else far_x) * grid.cols
        dy = torch.minimum(y - y0 if y0 > 0 else far_y, y1 - y if y1 < 1 else far_y) * grid.rows
        d = torch.minimum(dy[:, None], dx[None, :])
        w = (d > 0).double() if feather == 0 else (0.5 + d / feather).clamp(0, 1)
        out[i] = w.float()
    return out


def stream_region_weights(weights: torch.Tensor, grid) -> torch.Tensor:
    """(R, rows, cols) cell weights -> (R, stream_len) weights by stream position (0 at row ends)."""
    R = weights.shape[0]
    per_row = torch.cat([weights, torch.zeros(R, grid.rows, 1, dtype=weights.dtype)], dim=2)
    return torch.cat([per_row.reshape(R, -1), torch.zeros(R, 1, dtype=weights.dtype)], dim=1)


# ---------------------------------------------------------------------------------------------
# Presets

PRESETS = {
    # Our defaults: constant guidance (it is a function of nothing, so every mode shares it),
    # the release's image top-k, plain temperature 1.
    "uni1": SamplingPolicy(cfg_scale=4.0, cfg_schedule="constant", temperature=1.0, top_k=4096),
    # The reference's plain path (inference_solver.py): in-place decaying guidance, structural
    # mask, top-k 4096, temperature softmax.
    "lumina_ar": SamplingPolicy(cfg_scale=4.0, cfg_schedule="lumina_decay", cfg_decay_floor=4.0,
                                temperature=1.0, top_k=4096),
    # The reference's SJD path (jacobi_utils_static.py): constant guidance, top-k 4096 then
    # top-n-sigma with n = 1; its 3 guidance-free steps are the (forced) header tokens.
    "lumina_sjd": SamplingPolicy(cfg_scale=4.0, cfg_schedule="constant", cfg_free_tokens=0,
                                 temperature=1.0, top_k=4096, top_n_sigma=1.0),
}


def get_policy(policy) -> SamplingPolicy:
    """A SamplingPolicy, a preset name, or None (the "uni1" preset)."""
    if policy is None:
        return PRESETS["uni1"]
    if isinstance(policy, SamplingPolicy):
        return policy
    if isinstance(policy, str):
        if policy not in PRESETS:
            raise ValueError(f"unknown sampling preset {policy!r}; choose one of {sorted(PRESETS)}")
        return PRESETS[policy]
    raise TypeError(f"policy must be a SamplingPolicy or a preset name, got {type(policy).__name__}")
