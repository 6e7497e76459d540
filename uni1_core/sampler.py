"""One sampling loop for plain AR, exact Speculative Jacobi Decoding and exact coupled SJD.

docs/sampling.md derives why every mode here draws from exactly the autoregressive (AR)
distribution; read it first. In one paragraph: every forward scores a *window*
`[last committed token, d_1 .. d_m]` of drafts. Draft j is kept with probability
`min(1, p(d_j) / q(d_j))`, where p is the distribution at that position given the committed
prefix and the kept drafts before it, and q is *exactly* the distribution d_j was drawn from.
The first rejected draft is replaced by a sample of the residual distribution `max(0, p - q)`
(or, if every draft is kept, a bonus sample of p at the window's end). Each committed token then
has the AR distribution, whatever the drafts were, so the image has the AR distribution.

Modes (one loop; `ar` is the window of 1):
  ar           window 1: no drafts, one token per forward.
  sjd          the drafts of the next forward are this forward's fresh samples at the later
               positions (q = p there); new window slots get a uniform random code (q = uniform).
  sjd_coupled  the next drafts are coupled with the old ones so that they change as little as
               possible while their distribution is still p: "maximal" applies the same
               keep-or-resample-the-residual test at every later position; "gumbel" takes
               argmax(log p + G) with Gumbel noise G fixed per stream position.
Forced stream positions (row ends, end of image, condition rows) are drafted as the forced
token (q one-hot), so they are always kept.

Branches (`branches=K`, default for sjd_coupled): the forward also scores K alternatives for the
window's first draft, each a one-token branch off the window (tree attention, model.py). When
the residual sample that replaces a rejected first draft is one of them (a *hit*), its branch
already holds the distribution of the next position given the true prefix, and a *bonus* token
is drawn from it in the same forward. Branches only decide which conditional distributions get
computed, never which token is drawn, so the image's distribution is unchanged.

The code follows gpt-fast's split of `generate`: `setup` (checks, forward rows, random keys),
`prefill`, `decode_step` (build the window, forward, probabilities, verify, branches, commit)
and `next_drafts`; `sample_codes` is the loop. The facts fixed for a call live in
`SamplerSetup`, what changes from forward to forward in `DecodeState`.

Batches: each image has its own committed length; its rows in the batched forward carry their
own cache length and `n_valid` pads the shorter windows. The rows of one forward are
[cond_0..cond_B-1, region rows, uncond_0..uncond_B-1]: the unconditional rows hold only the
image header. A batched CFG forward counts as one forward. After every forward each row's cache
holds exactly its committed prefix except the last committed token, the next window's first input.

Random numbers: every draw is a counter-based hash of (seed, stream position, iteration,
purpose) (Gumbel noise: of (seed, position, code)), so an image's tokens do not depend on its
batch mates, and a cancelled run repeated with the same seed is the same run.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

from . import decode
from .limits import clamp_window, seed_to_int64
from .sequence import check_positions, position_limit
from .policy import (SamplingPolicy, forced_sub_ids, get_policy, region_weights,
                     stream_region_weights, sub_vocab_ids)

MODES = ("ar", "sjd", "sjd_coupled")
COUPLINGS = ("maximal", "gumbel")
DEFAULT_WINDOW = {"ar": 1, "sjd": 16, "sjd_coupled": 32}
DEFAULT_BRANCHES = {"ar": 0, "sjd": 0, "sjd_coupled": 4}
BRANCH_SLOTS = 1            # window slots that get branches: where most rejections happen (slot 0)

# purposes of the random numbers (part of the hash key)
ACCEPT, RESIDUAL, FRESH, INIT, GUMBEL, BONUS = 1, 2, 3, 4, 5, 6


class Cancelled(RuntimeError):
    """Raised when `should_cancel()` returned True; the model is untouched and reusable."""


# ---------------------------------------------------------------------------------------------
# Counter-based random numbers (splitmix64 finaliser on int64 tensors; multiplication wraps)

def _signed(c: int) -> int:
    return c - (1 << 64) if c >= 1 << 63 else c


_GOLDEN = _signed(0x9E3779B97F4A7C15)
_MUL1 = _signed(0xBF58476D1CE4E5B9)
_MUL2 = _signed(0x94D049BB133111EB)


def _shr(x: torch.Tensor, s: int) -> torch.Tensor:
    """Logical right shift of int64 (torch's >> is arithmetic)."""
    return (x >> s) & ((1 << (64 - s)) - 1)


def _mix(x: torch.Tensor) -> torch.Tensor:
    x = x ^ _shr(x, 30)
    x = x * _MUL1
    x = x ^ _shr(x, 27)
    x = x * _MUL2
    return x ^ _shr(x, 31)


def random_keys(seeds: torch.Tensor, positions: torch.Tensor, iterations: torch.Tensor | int) -> torch.Tensor:
    """int64 hash of (seed, position, iteration); seeds (B,), positions (B, T), iterations (B,),
    (B, T) or an int. `draw(keys, purpose)` turns it into the uniforms of one purpose."""
    h = _mix(seeds[:, None] + _GOLDEN)
    h = _mix(h + positions * _GOLDEN)
    iterations = torch.as_tensor(iterations, device=seeds.device)
    return _mix(h + (iterations if iterations.dim() == 2 else iterations.reshape(-1, 1)) * _GOLDEN)


def draw(keys: torch.Tensor, purpose: int) -> torch.Tensor:
    """float64 uniforms in [0, 1) from 53 bits of the hash of (keys, purpose)."""
    return _shr(_mix(keys + _signed(purpose * _GOLDEN % (1 << 64))), 11).double() * 2.0 ** -53


def random_uniform(seeds, positions, iterations, purpose: int) -> torch.Tensor:
    """Uniforms in [0, 1) keyed by (seed, position, iteration, purpose)."""
    return draw(random_keys(seeds, positions, iterations), purpose)


def gumbel_noise(seeds: torch.Tensor, positions: torch.Tensor, size: int) -> torch.Tensor:
    """(B, T, size) float32 standard Gumbel noise, a function of (seed, position, code) only."""
    base = _mix(random_keys(seeds, positions, 0) + _signed(GUMBEL * _GOLDEN % (1 << 64)))
    h = _mix(base[..., None] + torch.arange(1, size + 1, device=seeds.device) * _GOLDEN)
    u = (_shr(h, 11).double() + 0.5) * 2.0 ** -53                  # strictly inside (0, 1)
    return (-torch.log(-torch.log(u))).float()


def sample_from(weights: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
    """Index drawn from unnormalised weights (..., V) by inverse CDF with uniforms u (...)."""
    cdf = weights.double().cumsum(-1)
    total = cdf[..., -1:]
    x = torch.minimum(u[..., None] * total, torch.nextafter(total, torch.zeros_like(total)))
    # right=True: a zero-weight index never has cdf[i] > x >= cdf[i-1]
    idx = torch.searchsorted(cdf, x, right=True).squeeze(-1)
    return idx.clamp_max(weights.shape[-1] - 1)


# ---------------------------------------------------------------------------------------------
# The exactness-critical step

def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised residual max(0, p - q) and a mask of rows where it is empty or not finite.

    In exact arithmetic a rejection implies positive residual mass; with rounding (p ~ q) it
    can vanish. Those rows fall back to p itself, which never leaves p's support (docs/sampling.md, "Rounding").
    """
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    bad = ~(mass > 1e-12 * p.sum(-1, keepdim=True))          # also catches NaN
    return torch.where(bad, p, r), bad.squeeze(-1)


class Verdict(NamedTuple):
    accepted: torch.Tensor    # (B,) long: drafts kept before the first rejection (a)
    tokens: torch.Tensor      # (B, T) long: the decided token at every window position
    next_q: torch.Tensor      # (B, T, V') float32: the distribution of tokens[j] as a next draft (j > a)
    keep: torch.Tensor        # (B, T) bool: the accept test at every position
    fallbacks: torch.Tensor   # (B, T) bool: a residual that fell back to p was used there


def verify_window(P, D, Q, m, keys, rule: str, gumbel=None) -> Verdict:
    """Verify one window per image and decide the next drafts.

    P: (B, T, V') the distribution at window positions j = 0..T-1 (stream positions n_b + j).
    D, Q: (B, T) drafts at those positions and (B, T, V') the distributions they were drawn from;
        only j < m_b hold drafts. keys: (B, T) `random_keys` of (seed, position, iteration).
    rule: "sjd", "maximal" or "gumbel"; gumbel: (B, T, V') the positions' noise.

    Committed: tokens[:, :a+1] (a = accepted drafts, then the residual sample or the bonus).
    Next drafts: tokens[:, a+1 : m+1] with distribution next_q (= P: the rule that keeps it exact).
    """
    B, T, V = P.shape
    fresh = sample_from(P, draw(keys, FRESH))
    if T == 1:                                                   # plain AR: nothing to verify
        none = torch.zeros(B, 1, dtype=torch.bool, device=P.device)
        return Verdict(torch.zeros(B, dtype=torch.long, device=P.device), fresh, P, none, none)
    j = torch.arange(T, device=P.device)[None, :]
    has_draft = j < m[:, None]
    p_d = P.gather(-1, D[..., None]).squeeze(-1).double()
    q_d = Q.gather(-1, D[..., None]).squeeze(-1).double()
    keep = (draw(keys, ACCEPT) * q_d < p_d) & has_draft         # u < p/q without dividing
    a = torch.cumprod(keep.long(), dim=1).sum(1)                 # leading run of kept drafts
    res_dist, res_bad = residual_distribution(P, Q)
    resid = sample_from(res_dist, draw(keys, RESIDUAL))
    at_a = j == a[:, None]
    rejected_at_a = at_a & (a < m)[:, None]
    if rule == "maximal":
        # the accept-or-residual test at every position: kept drafts stay, the others move to
        # the residual; the last position (no draft) gets a fresh sample.
        tokens = torch.where(keep, D, resid)
        tokens = torch.where(has_draft, tokens, fresh)
        used_residual = has_draft & ~keep & (j >= a[:, None])
    else:
        later = fresh
        if rule == "gumbel":
            later = (torch.log(P) + gumbel).argmax(-1)
        elif rule != "sjd":
            raise ValueError(f"unknown verification rule {rule!r}")
        tokens = torch.where(j < a[:, None], D, later)
        tokens = torch.where(rejected_at_a, resid, tokens)
        tokens = torch.where(at_a & ~rejected_at_a, fresh, tokens)    # the bonus token
        used_residual = rejected_at_a
    return Verdict(a, tokens, P, keep, res_bad & used_residual)


# ---------------------------------------------------------------------------------------------
# Branches: alternatives for the first draft, scored in the same forward

def branch_candidates(D, Q, left, stream, n, row_len: int, K: int, C: int) -> torch.Tensor:
    """(B, J, K) codes to try at window slots 0..J-1 (positions n+j) instead of the drafts D there.

    Chosen before the forward from what is known then: the code to the left, the code above
    (committed, or a draft), then the likeliest codes of the draft's own distribution Q (B, J, V); never
    the draft itself (the window already scores it) nor a structural token.
    """
    B, J, V = Q.shape
    score = Q.clone()
    score[..., C:] = -1.0
    j = torch.arange(J, device=Q.device)
    lefts = torch.cat([left[:, None], D[:, : J - 1]], dim=1)               # (B, J): code at n+j-1
    above_at = n[:, None] + j[None, :] - row_len
    in_window = above_at >= n[:, None]
    above = torch.where(in_window, D.gather(1, (above_at - n[:, None]).clamp(0, D.shape[1] - 1)),
                        stream.gather(1, above_at.clamp_min(0)))
    for code, ok, weight in ((lefts, lefts >= 0, 3.0), (above, above_at >= 0, 2.0)):
        ok = ok & (code < C)
        score.scatter_add_(-1, code.clamp(0, C - 1)[..., None], (ok.float() * weight)[..., None])
    score.scatter_(-1, D[:, :J, None], -2.0)
    return score.topk(K, dim=-1).indices


def take_branch(tokens, a, m, D, cand, P, P_branch, n, S: int, seeds, it, active):
    """Whether the residual sample tokens[a] is the draft itself (the window scored the position
    after it already) or a branch (a < J), and if so the bonus token after it, drawn with a fresh
    uniform from the distribution the hit computed: the one given the true prefix, so it has the
    AR distribution.
    Returns hit (B,), from_branch (B,) the hit branch k or -1, bonus (B,)."""
    B, J, K = cand.shape
    x = tokens.gather(1, a[:, None]).squeeze(1)
    usable = active & (a < m) & (n + a + 1 < S)             # a rejection, with a position after it
    slot = a.clamp_max(J - 1)
    is_branch = cand.gather(1, slot[:, None, None].expand(B, 1, K)).squeeze(1) == x[:, None]   # (B, K)
    is_self = D.gather(1, a.clamp_max(D.shape[1] - 1)[:, None]).squeeze(1) == x
    from_branch = torch.where(usable & (a < J) & is_branch.any(1), is_branch.long().argmax(1),
                              torch.full_like(a, -1))
    hit = (from_branch >= 0) | (usable & is_self)
    V = P.shape[-1]
    dist_self = P.gather(1, (a + 1).clamp_max(P.shape[1] - 1)[:, None, None].expand(B, 1, V)).squeeze(1)
    dist_branch = P_branch.gather(1, (slot * K + from_branch.clamp_min(0))[:, None, None].expand(B, 1, V)).squeeze(1)
    dist = torch.where((from_branch >= 0)[:, None], dist_branch, dist_self)
    bonus = sample_from(dist, random_uniform(seeds, (n + a + 1)[:, None], it, BONUS).squeeze(1))
    return hit, from_branch, bonus


def move_kv(cache, rows_mask, dst, src) -> None:
    """Copy every layer's key and value at slot src[r] to slot dst[r], for rows where rows_mask
    (the cache moves an int8 cache's scales with them; no host sync)."""
    cache.move_slots(rows_mask, dst, src)


# ---------------------------------------------------------------------------------------------
# The statistics

@dataclass(kw_only=True)
class SampleStats:
    """What one `sample_codes` call did; `to_dict()` is the JSON of `--stats-json`.

    forwards            batched forwards after the prefill (a CFG batch counts once)
    prefill_forwards    1 (the prompts and headers, one batched forward), or 0 without a prompt
    image_tokens        stream tokens sampled per image (codes, row ends, end of image;
                        condition rows excluded)
    forwards_per_token  forwards / image_tokens (for the batch: its slowest image)
    accepted_hist       [a] = (image, forward) pairs that kept a drafts, i.e. committed a+1 tokens
                        (a+2 with a branch hit)
    branches, branch_hits  alternatives per forward; forwards whose residual sample hit one
    residual_fallbacks  rejections whose residual was empty or not finite (then p was used)
    regions             region rows per image (the most of any image)
    seconds, tokens_per_second (all images)
    """
    mode: str
    window: int
    coupling: str | None
    batch: int
    forwards: int = 0
    prefill_forwards: int = 0
    image_tokens: int
    regions: int
    branches: int
    accepted_hist: list[int] = field(default_factory=list)
    residual_fallbacks: int = 0
    branch_hits: int = 0
    per_image_forwards: list[int] = field(default_factory=list)
    forwards_per_token: float = 0.0
    per_image_forwards_per_token: list[float] = field(default_factory=list)
    seconds: float = 0.0
    tokens_per_second: float = 0.0

    def to_dict(self) -> dict:
        """JSON-ready, keys in the order above."""
        return dataclasses.asdict(self)


@dataclass
class SampleResult:
    codes: torch.Tensor            # (B, rows, cols) long code grids
    streams: torch.Tensor          # (B, stream_len) long vocabulary ids: codes, row ends, end of image
    stats: SampleStats


# ---------------------------------------------------------------------------------------------
# Setup: what one call fixes before the first forward

@dataclass
class SamplerSetup:
    """The facts of one call; nothing here changes while decoding. Sub-vocabulary indices
    (codes, then row end and end of image) are what the sampler draws; `sub_ids` maps them to
    vocabulary ids."""
    mode: str
    rule: str                       # verification rule: "sjd", "maximal" or "gumbel"
    window: int                     # inputs per forward: the last committed token and window-1 drafts
    branches: int                   # alternatives scored per branch slot (0: none)
    policy: SamplingPolicy
    seeds: torch.Tensor             # (B,) long
    stream_len: int
    row_len: int                    # stream tokens per code row: the codes and the row end
    num_codes: int
    sub_ids: torch.Tensor           # (num_codes + 2,) vocabulary id of each sub-vocabulary index
    forced: torch.Tensor            # (stream_len,) sub-vocabulary index forced at each position, -1 if free
    guidance: torch.Tensor | None   # (stream_len,) fp32 CFG scale; None when no position is guided
    start: int                      # stream tokens committed up front (the leading forced run)
    header: list[int]               # vocabulary ids between the prompt and the first sampled token
    row_ids: list[list[int]]        # prompt and header of each forward row: cond, regions, uncond
    row_image: torch.Tensor         # (rows,) the image each forward row belongs to
    prefix_len: torch.Tensor        # (rows,) cache slots before the stream: the row's ids but the last
    region_rows: torch.Tensor       # (B, R) forward row of each image's regions (padding: its cond row)
    region_weights: torch.Tensor    # (B, R, stream_len) weight of each region at each position
    code_positions: torch.Tensor    # (rows * cols,) stream position of each code cell
    window_slots: torch.Tensor      # (window,) 0 .. window-1
    uniform_dist: torch.Tensor      # (V',) the uniform distribution over the codes
    ar_uniforms: torch.Tensor | None  # (B, stream_len + 1) plain AR's uniforms, by position

    @property
    def batch(self) -> int:
        return len(self.seeds)

    @property
    def dist_size(self) -> int:
        """V': the size of a distribution over the sub-vocabulary."""
        return self.num_codes + 2

    @property
    def num_regions(self) -> int:
        return self.region_rows.shape[1]

    def per_row(self, x: torch.Tensor) -> torch.Tensor:
        """An image's value for each of its forward rows (no index copy for one row per image)."""
        return x if len(self.row_ids) == self.batch else x[self.row_image]


def check_request(mode, coupling, window, branches, cond_prompts, seeds, regions) -> tuple[int, int, list[int]]:
    """Fast, clear errors for a bad request; returns the window, the branches and the seeds."""
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; choose one of {MODES}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling {coupling!r} is unknown; choose one of {COUPLINGS}")
    size = DEFAULT_WINDOW[mode] if window is None else int(window)
    if mode == "ar" and size != 1:
        raise ValueError(f"mode 'ar' decodes one token per forward; got window={window} (use sjd for larger windows)")
    if size < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    num_branches = DEFAULT_BRANCHES[mode] if branches is None else int(branches)
    if num_branches < 0 or (num_branches and size == 1):
        raise ValueError(f"branches must be >= 0 and needs a window > 1 (no drafts in plain AR), got {branches}")
    batch = len(cond_prompts)
    if batch == 0:
        raise ValueError("cond_prompts is empty: give one list of prompt token ids per image")
    # any seed of -2^63 .. 2^64-1 (the node's widget range), hashed as its int64 twin
    seeds = list(range(batch)) if seeds is None else [seed_to_int64(s) for s in seeds]
    if len(seeds) != batch:
        raise ValueError(f"{len(seeds)} seeds for {batch} prompts: give one seed per image")
    if regions is not None:
        if len(regions) != batch:
            raise ValueError(f"regions has {len(regions)} entries for {batch} images: give one (or None) per image")
        for b, image_regions in enumerate(regions):
            for region in image_regions or []:
                if not (isinstance(region, (tuple, list)) and len(region) == 2
                        and isinstance(region[1], (tuple, list)) and len(region[1]) == 4):
                    raise ValueError(f"regions[{b}] holds {region!r}: each region must be "
                                     "(prompt_ids, (x0, y0, x1, y1)) with the box normalised to 0..1")
    return size, num_branches, seeds


def check_prompt_positions(model, grid, cond_prompts, regions) -> None:
    """Refuse a prompt (or region prompt) that with the image needs more positions than the model
    has, before the cache is sized by it."""
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "max_position_embeddings"):
        return
    limit = position_limit(config)
    for p in cond_prompts:
        check_positions(len(p), grid, limit)
    for image_regions in regions or []:
        for prompt, _ in image_regions or []:
            check_positions(len(prompt), grid, limit, what="a region prompt")


def make_setup(device, vocab, grid, cond_prompts, policy: SamplingPolicy, mode: str, rule: str, window: int,
          branches: int, seeds: list[int], regions) -> SamplerSetup:
    """The forward rows (cond, regions, uncond), the forced tokens, the guidance and the keys."""
    S, C = grid.stream_len, vocab.num_codes
    batch = len(cond_prompts)
    sub_ids = sub_vocab_ids(vocab).to(device)
    forced = forced_sub_ids(grid, vocab).to(device)
    guidance = policy.guidance(grid).to(device)
    use_cfg = bool((guidance != 1.0).any())
    # A leading run of forced positions (the condition rows of an image-conditioned request)
    # is committed up front and prefilled with the header, as the reference prefills it.
    free = (forced < 0).nonzero()
    start = int(free[0]) if len(free) else S
    header = list(grid.header_ids(vocab)) + sub_ids[forced[:start]].tolist()

    row_ids = [list(p) + header for p in cond_prompts]
    row_image = list(range(batch))
    num_regions = max((len(r) for r in regions if r), default=0) if regions is not None else 0
    region_rows = torch.arange(batch)[:, None].repeat(1, num_regions)   # padding: the cond row, weight 0
    region_w = torch.zeros(batch, num_regions, S)
    for b in range(batch):
        for r, (prompt, box) in enumerate((regions[b] or []) if regions is not None else []):
            region_rows[b, r] = len(row_ids)
            row_ids.append(list(prompt) + header)
            row_image.append(b)
        if num_regions and regions[b]:
            w = region_weights([box for _, box in regions[b]], grid, policy.region_feather)
            region_w[b, : len(regions[b])] = stream_region_weights(w, grid)
    if use_cfg:
        row_ids += [list(header) for _ in range(batch)]
        row_image += list(range(batch))

    seeds_t = torch.tensor(seeds, dtype=torch.long, device=device)
    ar_uniforms = None
    if window == 1:
        # Plain AR draws one FRESH uniform per forward, at iteration n - start (every forward
        # commits one token); drawn here for the whole stream at once instead of every step.
        k = torch.arange(S + 1, device=device)[None].expand(batch, S + 1)
        ar_uniforms = draw(random_keys(seeds_t, k, k - start), FRESH)
    uniform_dist = torch.zeros(C + 2, device=device)
    uniform_dist[:C] = 1.0 / C
    return SamplerSetup(
        mode=mode, rule=rule, window=window, branches=branches, policy=policy, seeds=seeds_t,
        stream_len=S, row_len=grid.cols + 1, num_codes=C, sub_ids=sub_ids, forced=forced,
        guidance=guidance.float() if use_cfg else None,              # the fp32 values probs uses
        start=start, header=header, row_ids=row_ids, row_image=torch.tensor(row_image, device=device),
        # everything but the last header (or forced) token is prefilled: it is the first window input
        prefix_len=torch.tensor([len(r) - 1 for r in row_ids], device=device),
        region_rows=region_rows.to(device), region_weights=region_w.to(device),
        code_positions=grid.code_positions().to(device), window_slots=torch.arange(window, device=device),
        uniform_dist=uniform_dist, ar_uniforms=ar_uniforms)


# ---------------------------------------------------------------------------------------------
# Decoding state: what changes from forward to forward

@dataclass
class DecodeState:
    """Per image (B rows). The window of the next forward is [last_token, drafts[:window-1]]."""
    committed: torch.Tensor         # (B,) stream tokens committed (n): positions 0 .. n-1 are final
    iteration: torch.Tensor         # (B,) forwards seen by the image: part of its random keys
    last_token: torch.Tensor        # (B,) vocabulary id of the last committed token
    last_code: torch.Tensor         # (B,) its sub-vocabulary index (-1: the header, no code)
    drafts: torch.Tensor            # (B, window) sub-vocabulary drafts at positions n .. n+window-2
    draft_dists: torch.Tensor       # (B, window, V') q: the distribution each draft was drawn from
    gumbel: torch.Tensor | None     # (B, window, V') Gumbel noise at the window's positions
    stream: torch.Tensor            # (B, stream_len + window) sub-vocabulary tokens; final below n
    # tallies for SampleStats, kept on the device (no host sync per step)
    forwards_per_image: torch.Tensor
    accepted_hist: torch.Tensor
    fallbacks: torch.Tensor
    branch_hits: torch.Tensor


def initial_state(setup: SamplerSetup) -> DecodeState:
    B, L, V, S, device = setup.batch, setup.window, setup.dist_size, setup.stream_len, setup.seeds.device
    committed = torch.full((B,), setup.start, dtype=torch.long, device=device)
    gumbel = None
    if setup.rule == "gumbel":
        gumbel = gumbel_noise(setup.seeds, committed[:, None] + setup.window_slots[None, :], V)
    stream = torch.zeros(B, S + L, dtype=torch.long, device=device)
    stream[:, : setup.start] = setup.forced[: setup.start]
    zeros = torch.zeros(B, dtype=torch.long, device=device)
    state = DecodeState(
        committed=committed, iteration=zeros.clone(),
        last_token=torch.full((B,), setup.header[-1], dtype=torch.long, device=device),
        last_code=torch.full_like(zeros, -1),
        drafts=torch.zeros(B, L, dtype=torch.long, device=device),
        draft_dists=torch.zeros(B, L, V, dtype=torch.float32, device=device), gumbel=gumbel, stream=stream,
        forwards_per_image=zeros.clone(), accepted_hist=torch.zeros(L, dtype=torch.long, device=device),
        fallbacks=torch.zeros((), dtype=torch.long, device=device),
        branch_hits=torch.zeros((), dtype=torch.long, device=device))
    if L > 1:
        fill_new_slots(setup, state, zeros)
    return state


def fill_new_slots(setup: SamplerSetup, state: DecodeState, first_new: torch.Tensor) -> None:
    """Draft slots s >= first_new[b] (positions n_b + s) get the forced token (q one-hot) or a
    uniform random code (q uniform; in gumbel mode the argmax of the position's noise, which is
    also uniform, so that later Gumbel drafts stay coupled with it)."""
    B, L, V, C = setup.batch, setup.window, setup.dist_size, setup.num_codes
    slots = setup.window_slots[None, :]
    new = slots >= first_new[:, None]
    pos = (state.committed[:, None] + slots).clamp_max(setup.stream_len - 1)
    forced = setup.forced[pos]
    if state.gumbel is not None:
        random_code = state.gumbel[..., :C].argmax(-1)
    else:
        u = random_uniform(setup.seeds, pos, state.iteration, INIT)
        random_code = (u * C).long().clamp_max(C - 1)
    token = torch.where(forced >= 0, forced, random_code)
    dist = setup.uniform_dist.expand(B, L, V).clone()
    one_hot = torch.zeros_like(dist).scatter_(-1, forced.clamp_min(0)[..., None], 1.0)
    dist = torch.where((forced >= 0)[..., None], one_hot, dist)
    state.drafts = torch.where(new, token, state.drafts)
    state.draft_dists = torch.where(new[..., None], dist, state.draft_dists)


def prefill(model, setup: SamplerSetup, cache) -> int:
    """Every row's prompt and header but the last token, in one batched forward; returns the
    number of forwards (0 when no row has anything to prefill)."""
    longest = int(setup.prefix_len.max())
    if longest == 0:
        return 0
    ids = torch.full((len(setup.row_ids), longest), setup.header[0], dtype=torch.long,
                     device=setup.prefix_len.device)
    for i, row in enumerate(setup.row_ids):
        ids[i, : len(row) - 1] = torch.tensor(row[:-1], dtype=torch.long)
    model(ids, cache=cache, n_valid=setup.prefix_len)
    return 1


# ---------------------------------------------------------------------------------------------
# One decode step

class Window(NamedTuple):
    """The inputs of one forward: a chain of `size` tokens, then `branch_slots * K` branches."""
    ids: torch.Tensor             # (B, size + branch_slots * K) vocabulary ids
    positions: torch.Tensor       # (B, same) the stream position whose distribution each output gives
    size: int                     # chain length T: the last committed token and T-1 drafts
    active: torch.Tensor          # (B,) bool: the image is not finished
    n_valid: torch.Tensor         # (B,) chain inputs that hold something (0 for a finished image)
    num_drafts: torch.Tensor      # (B,) drafts in the chain (m)
    branch_slots: int             # J: chain slots that get branches (0: none)
    candidates: torch.Tensor | None  # (B, J, K) sub-vocabulary codes of the branches
    tree: list[int] | None        # parent index of every input (None: a plain chain)


def build_window(setup: SamplerSetup, state: DecodeState, size: int) -> Window:
    """The chain [last committed token, size-1 drafts], and with branches the alternatives for
    the first draft. size: at most the window, and at most the stream tokens the least advanced
    image has left (static shapes keep the full window: see sample_codes)."""
    B, L, K, S = setup.batch, setup.window, setup.branches, setup.stream_len
    n = state.committed
    n_valid = (S - n).clamp_max(L)
    ids = state.last_token[:, None]
    if size > 1:
        ids = torch.cat([ids, setup.sub_ids[state.drafts[:, : size - 1]]], dim=1)
    positions = n[:, None] + setup.window_slots[None, :size]
    J = min(BRANCH_SLOTS, size - 1) if K else 0
    candidates = tree = None
    if J:
        candidates = branch_candidates(state.drafts, state.draft_dists[:, :J], state.last_code, state.stream,
                                       n, setup.row_len, K, setup.num_codes)
        ids = torch.cat([ids, setup.sub_ids[candidates.reshape(B, J * K)]], dim=1)
        tree = [-1, *range(size - 1)] + [j for j in range(J) for _ in range(K)]
        # a branch off chain input j is an alternative for stream position n+j; its output is
        # the distribution at n+j+1
        branch_at = n[:, None] + 1 + torch.arange(J, device=n.device).repeat_interleave(K)
        positions = torch.cat([positions, branch_at], dim=1)
    return Window(ids, positions, size, n < S, n_valid, (n_valid - 1).clamp_min(0), J, candidates, tree)


def window_distributions(setup: SamplerSetup, logits: torch.Tensor, window: Window):
    """The policy's distributions at the chain's positions (B, T, V') and at the branches'
    (B, J*K, V'), from the logits of every forward row."""
    B, V, S = setup.batch, setup.dist_size, setup.stream_len
    width = window.positions.shape[1]
    sub = logits.index_select(-1, setup.sub_ids)            # (rows, width, V') = image_logits(logits, vocab)
    pos = window.positions.clamp_max(S - 1)
    # rows are [cond, regions, uncond]: slices, not index copies
    cond = sub[:B].reshape(B * width, V)
    uncond = sub[-B:].reshape(B * width, V) if setup.guidance is not None else None
    region_cond = region_weight = None
    R = setup.num_regions
    if R:
        region_cond = sub[setup.region_rows].permute(0, 2, 1, 3).reshape(B * width, R, V)
        region_weight = setup.region_weights.gather(2, pos[:, None, :].expand(B, R, width))
        region_weight = region_weight.permute(0, 2, 1).reshape(B * width, R)
    dists = setup.policy.probs(cond, uncond, pos.reshape(-1), setup.guidance, setup.forced,
                               region_cond, region_weight).view(B, width, V)
    return dists[:, : window.size], dists[:, window.size:]


def decode_step(model, cache, setup: SamplerSetup, state: DecodeState, size: int) -> None:
    """One forward: score the window, verify its drafts, use a branch hit, commit the decided
    tokens and draft the next window. size: the chain's length (see `build_window`)."""
    window = build_window(setup, state, size)
    logits = model(setup.per_row(window.ids), cache=cache, n_valid=setup.per_row(window.n_valid), tree=window.tree)
    active = window.active
    state.forwards_per_image += active.long()
    dists, branch_dists = window_distributions(setup, logits, window)
    T = window.size
    if setup.window == 1:
        # plain AR: no drafts, nothing to verify; verify_window would return exactly this fresh
        # sample (with its uniform drawn up front), accepted 0 and no fallback.
        tokens = sample_from(dists, setup.ar_uniforms.gather(1, state.committed[:, None]))
        accepted = torch.zeros_like(state.committed)
        next_dists = None
    else:
        keys = random_keys(setup.seeds, window.positions[:, :T].clamp_max(setup.stream_len - 1), state.iteration)
        verdict = verify_window(dists, state.drafts[:, :T], state.draft_dists[:, :T], window.num_drafts, keys,
                                setup.rule, None if state.gumbel is None else state.gumbel[:, :T])
        accepted = torch.where(active, verdict.accepted, torch.zeros_like(state.committed))
        tokens, next_dists = verdict.tokens, verdict.next_q
        state.fallbacks += (verdict.fallbacks & active[:, None]).sum()
    advance = accepted + 1
    if window.branch_slots:
        tokens, advance = use_branch_hit(cache, setup, state, window, tokens, accepted, dists, branch_dists)
    commit(cache, setup, state, window, tokens, accepted, advance)
    if setup.window > 1:
        next_drafts(setup, state, window, tokens, advance, next_dists)


def use_branch_hit(cache, setup, state, window, tokens, accepted, dists, branch_dists):
    """On a hit, the token after the residual sample is drawn now (the bonus), in place of its
    draft, and the cache gets the key and value that the hit branch computed for the residual
    sample, in that position's slot. Returns the tokens and how many of them to commit."""
    n, start, T, K = state.committed, setup.start, window.size, setup.branches
    hit, from_branch, bonus = take_branch(tokens, accepted, window.num_drafts, state.drafts, window.candidates,
                                          dists, branch_dists, n, setup.stream_len, setup.seeds,
                                          state.iteration, window.active)
    kv_from = setup.prefix_len + setup.per_row(n - start + T + accepted * K + from_branch.clamp_min(0))
    move_kv(cache, setup.per_row(from_branch >= 0), setup.prefix_len + setup.per_row(n - start + accepted + 1), kv_from)
    after_residual = setup.window_slots[None, :T] == accepted[:, None] + 1
    tokens = torch.where(hit[:, None] & after_residual, bonus[:, None], tokens)
    state.branch_hits += hit.sum()
    return tokens, accepted + 1 + hit.long()


def commit(cache, setup: SamplerSetup, state: DecodeState, window: Window, tokens, accepted, advance) -> None:
    """Commit tokens[:advance] at positions n.. . Writes past that are overwritten by later
    commits; a finished image (n = S) writes only into the padding columns S..S+L-1."""
    step = window.active.long()
    state.stream.scatter_(1, window.positions[:, : window.size], tokens)
    state.last_code = tokens.gather(1, (advance - 1)[:, None]).squeeze(1)
    state.last_token = setup.sub_ids[state.last_code]                   # (unused once finished)
    state.accepted_hist.index_add_(0, accepted, step)
    state.committed = state.committed + advance * step
    # the committed prefix; written in place (the setter's range check would read it on the host)
    cache.lengths.copy_(setup.prefix_len + setup.per_row(state.committed - setup.start))


def next_drafts(setup: SamplerSetup, state: DecodeState, window: Window, tokens, advance, next_dists) -> None:
    """Slot s of the next window gets chain position advance+s while that held a draft or was
    the chain's last (its token has the distribution next_dists there, the rule that keeps the
    sampler exact); the remaining slots get new drafts (`fill_new_slots`)."""
    B, L, V, T = setup.batch, setup.window, setup.dist_size, window.size
    active = window.active
    state.iteration = state.iteration + active.long()      # (plain AR's draws were keyed up front)
    source = advance[:, None] + setup.window_slots[None, :]
    carried = (source <= window.num_drafts[:, None]) & active[:, None]
    from_slot = source.clamp_max(T - 1)
    state.drafts = torch.where(carried, tokens.gather(1, from_slot), state.drafts)
    state.draft_dists = torch.where(carried[..., None], next_dists.gather(1, from_slot[..., None].expand(B, L, V)),
                                    state.draft_dists)
    if state.gumbel is not None:
        state.gumbel = shift_gumbel(setup, state, active, source, advance)
    first_new = torch.where(active, carried.sum(1), torch.full_like(advance, L))
    fill_new_slots(setup, state, first_new)


def shift_gumbel(setup: SamplerSetup, state: DecodeState, active, source, advance) -> torch.Tensor:
    """The Gumbel noise moves with its positions (noise is a function of the position, so a
    coupled draft keeps its noise); positions new to the window get theirs."""
    B, L, V = setup.batch, setup.window, setup.dist_size
    noise = state.gumbel
    still_in_window = (source < L) & active[:, None]
    shifted = noise.gather(1, source.clamp_max(L - 1)[..., None].expand(B, L, V))
    # the noise of every window position, though only those new to the window are used: which
    # ones those are is known on the device only, and reading it would cost a host sync
    new = gumbel_noise(setup.seeds, state.committed[:, None] + setup.window_slots[None, :], V)
    shifted = torch.where(still_in_window[..., None], shifted, new)
    return torch.where(active[:, None, None], shifted, noise)


# ---------------------------------------------------------------------------------------------
# The loop

@torch.inference_mode()
def sample_codes(model, vocab, grid, cond_prompts: list[list[int]], *, mode: str = "sjd",
                 policy: SamplingPolicy | str | None = None, seeds: list[int] | None = None,
                 window: int | None = None, coupling: str = "maximal", regions=None,
                 branches: int | None = None, on_progress: Callable[[int, int], None] | None = None,
                 on_preview: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None, compile: bool | None = None) -> SampleResult:
    """Sample B images' code grids.

    model: callable as `model(ids, cache=cache, n_valid=n, tree=tree)` with
        `model.new_cache(rows, max_len)` and `model.device` (uni1_core.model.Uni1Model).
        vocab: ImageVocab. grid: ImageGrid.
    cond_prompts: one list of token ids per image, up to and excluding the image header.
    mode: "ar", "sjd" or "sjd_coupled" (coupling "maximal" or "gumbel").
    policy: a SamplingPolicy or a preset name of policy.PRESETS (None: "uni1").
    seeds: one int per image (default 0, 1, ...). window: inputs per forward (default 1 / 16 / 32).
    branches: alternatives scored for the first draft (see "Branches" above; default 4 for
        sjd_coupled, 0 otherwise).
    regions: None, or per image None or a list of (prompt_ids, (x0, y0, x1, y1)) boxes
        normalised to 0..1: plan-guided sampling, one extra conditional row per region.
    on_progress(done, total): image tokens committed over the batch. on_preview(codes, done):
        (B, rows, cols) partial codes (0 where not yet drawn) and a bool mask.
    should_cancel(): checked before every forward; True raises Cancelled.
    compile: run the decode windows through `decode.StaticForward` with torch.compile (static
        shapes, CUDA graphs on CUDA, one host sync per step); None: on for CUDA only. Where it
        cannot work the eager forward runs, with a log line.
    Returns SampleResult(codes, streams, stats), stats a SampleStats.
    """
    t0 = time.perf_counter()
    policy = get_policy(policy)
    window, branches, seeds = check_request(mode, coupling, window, branches, cond_prompts, seeds, regions)
    window = clamp_window(window, grid.stream_len)   # a longer one only allocates slots no draft can use
    check_prompt_positions(model, grid, cond_prompts, regions)
    rule = "sjd" if mode != "sjd_coupled" else coupling
    setup = make_setup(model.device, vocab, grid, cond_prompts, policy, mode, rule, window, branches, seeds, regions)
    B, S = setup.batch, setup.stream_len
    stats = SampleStats(mode=mode, window=window, coupling=coupling if mode == "sjd_coupled" else None,
                        batch=B, image_tokens=S - setup.start, regions=setup.num_regions, branches=branches)
    state = initial_state(setup)
    static = decode.default_compile(model.device) if compile is None else bool(compile)
    forward = decode.static_forward(model) if static else None
    static = forward is not None

    def check_cancel():
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"sampling cancelled after {int(state.committed.sum())} of {B * S} image tokens "
                            f"({stats.forwards} forwards); the model is unchanged and can be used again")

    cache = None
    try:
        check_cancel()
        longest_prefix = int(setup.prefix_len.max())
        slots = longest_prefix + S + window + 1 + branches * BRANCH_SLOTS
        cache = forward.new_cache(len(setup.row_ids), slots) if static else model.new_cache(len(setup.row_ids), slots)
        stats.prefill_forwards = prefill(model, setup, cache)
        while True:
            least, done = torch.stack([state.committed.min(), state.committed.sum()]).tolist()   # the one host sync
            if stats.forwards:                                   # the hooks see the previous step
                if on_progress is not None:
                    on_progress(done, B * S)
                if on_preview is not None:
                    on_preview(*_partial_grid(state.stream, state.committed, setup.code_positions, grid))
            if least == S:
                break
            check_cancel()
            # static shapes keep the whole window to the stream's end (the positions past it are
            # padding, never committed); eager shortens the last windows instead
            decode_step(forward or model, cache, setup, state, window if static else min(window, S - least))
            stats.forwards += 1
    finally:
        del cache
    return finish(setup, state, stats, grid, t0)


def finish(setup: SamplerSetup, state: DecodeState, stats: SampleStats, grid, t0: float) -> SampleResult:
    """The code grids, the vocabulary streams and the statistics."""
    B, S, code_pos = setup.batch, setup.stream_len, setup.code_positions
    streams = setup.sub_ids[state.stream[:, :S]]
    codes = state.stream[:, code_pos].view(B, grid.rows, grid.cols)
    if not bool((state.stream[:, code_pos] < setup.num_codes).all()):
        raise RuntimeError("internal error: a structural token was sampled inside a row")
    stats.accepted_hist = state.accepted_hist.tolist()
    stats.residual_fallbacks = int(state.fallbacks)
    stats.branch_hits = int(state.branch_hits)
    stats.per_image_forwards = state.forwards_per_image.tolist()
    tokens = max(S - setup.start, 1)
    stats.forwards_per_token = stats.forwards / tokens
    stats.per_image_forwards_per_token = [f / tokens for f in stats.per_image_forwards]
    stats.seconds = time.perf_counter() - t0
    stats.tokens_per_second = B * (S - setup.start) / max(stats.seconds, 1e-9)
    return SampleResult(codes=codes, streams=streams, stats=stats)


def _partial_grid(stream, n, code_pos, grid):
    B = stream.shape[0]
    done = code_pos[None, :] < n[:, None]
    codes = torch.where(done, stream[:, code_pos], torch.zeros_like(stream[:, code_pos]))
    return codes.view(B, grid.rows, grid.cols), done.view(B, grid.rows, grid.cols)
