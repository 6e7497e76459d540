"""One sampling loop for plain AR, exact Speculative Jacobi Decoding and exact coupled SJD.

Read ../shared/specs/sjd.md first. In one line: every forward scores a window
`[last committed token, d_1 .. d_m]` of drafts; draft j is kept with probability
`min(1, p(d_j) / q(d_j))`, where p is the law at that position given the committed prefix and
the kept drafts before it, and q is *exactly* the law d_j was drawn from; the first rejected
draft is replaced by a sample of the residual `max(0, p - q)` (or, if every draft is kept, a
bonus sample of p at the window's end). Each committed token then has the AR law, whatever the
drafts were (the speculative-sampling lemma), so the image has the AR law.

Modes (one loop; `ar` is the window of 1):
  ar           window 1: no drafts, one token per forward.
  sjd          the drafts of the next forward are this forward's fresh samples at the later
               positions (q = p there); new window slots get a uniform random code (q = uniform).
  sjd_coupled  the next drafts are coupled with the old ones so that they change as little as
               possible while their law is still p (Speculative Coupled Decoding / SJD-PAC):
               "maximal": the same keep-or-resample-the-residual test at every later position;
               "gumbel": argmax(log p + G) with Gumbel noise G fixed per absolute position.
Forced stream positions (row ends, end of image, condition rows) are drafted as the forced
token (q one-hot), so they are always kept.

Branches (sjd_coupled, `branches=K`): most forwards reject the very first draft, because it was
drawn given the previous window's guess for the token before it, and image codes depend strongly
on their left neighbour. So the forward also scores K alternatives for that position, each a
one-token branch off the window (tree attention, model.py): the left neighbour's code, the code
above, and the next likeliest codes of the draft's law. When the residual sample that replaces
the rejected draft is one of them, its branch already holds the law of the following position
given the true prefix, and a "bonus" token is drawn from it in the same forward. The branches
only decide which conditional laws get computed, never which token is drawn, so the law of the
image is unchanged (the distribution tests run with and without them).

Batches: each image has its own committed length n_b; its rows in the batched forward carry
n_b's own cache length (the model's per-row lengths) and `n_valid` pads the shorter windows.
The rows of one forward are [cond_0..cond_B-1, region rows, uncond_0..uncond_B-1]: the
unconditional rows hold only the image header, with their own positions from 0. A batched CFG
forward counts as one forward. After every forward each row's cache holds exactly its committed
prefix except the last committed token, which is the next window's first input.

Windows: fewer forwards is the goal on a GPU, where a forward of a large model costs about
the same for 1 or 32 tokens. On a CPU with a tiny model the cost grows with the window, so a
window of 8-16 can be faster in wall time than 32 (see bench/sampling.py).

Random numbers: every draw is a counter-based hash of (seed, absolute stream position,
iteration, purpose) (Gumbel noise: of (seed, position, code)), so an image's tokens do not
depend on its batch mates, and a cancelled run repeated with the same seed is the same run.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, NamedTuple

import torch

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


@dataclass
class SampleResult:
    codes: torch.Tensor            # (B, rows, cols) long code grids
    streams: torch.Tensor          # (B, stream_len) long vocabulary ids: codes, row ends, end of image
    stats: dict = field(default_factory=dict)


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

def residual_law(p: torch.Tensor, q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Unnormalised residual max(0, p - q) and a mask of rows where it is empty or not finite.

    In exact arithmetic a rejection implies positive residual mass; with rounding (p ~ q) it
    can vanish. Those rows fall back to p itself, which never leaves p's support (spec 5.2).
    """
    r = (p - q).clamp_min(0)
    mass = r.sum(-1, keepdim=True)
    bad = ~(mass > 1e-12 * p.sum(-1, keepdim=True))          # also catches NaN
    return torch.where(bad, p, r), bad.squeeze(-1)


class Verdict(NamedTuple):
    accepted: torch.Tensor    # (B,) long: drafts kept before the first rejection (a)
    tokens: torch.Tensor      # (B, T) long: the decided token at every window position
    next_q: torch.Tensor      # (B, T, V') float32: the law of tokens[j] as a next draft (j > a)
    keep: torch.Tensor        # (B, T) bool: the accept test at every position
    fallbacks: torch.Tensor   # (B, T) bool: a residual that fell back to p was used there


def verify_window(P, D, Q, m, keys, rule: str, gumbel=None) -> Verdict:
    """Verify one window per image and decide the next drafts.

    P: (B, T, V') the law at window positions j = 0..T-1 (stream positions n_b + j).
    D, Q: (B, T) drafts at those positions and (B, T, V') the laws they were drawn from;
        only j < m_b hold drafts. keys: (B, T) `random_keys` of (seed, position, iteration).
    rule: "sjd", "maximal" or "gumbel"; gumbel: (B, T, V') the positions' noise.

    Committed: tokens[:, :a+1] (a = accepted drafts, then the residual sample or the bonus).
    Next drafts: tokens[:, a+1 : m+1] with law next_q (= P: the rule that keeps it exact).
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
    res_law, res_bad = residual_law(P, Q)
    resid = sample_from(res_law, draw(keys, RESIDUAL))
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
    (committed, or a draft), then the likeliest codes of the draft's own law Q (B, J, V); never
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
    uniform from the law the hit computed: the law given the true prefix, so it has the AR law.
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
    law_self = P.gather(1, (a + 1).clamp_max(P.shape[1] - 1)[:, None, None].expand(B, 1, V)).squeeze(1)
    law_branch = P_branch.gather(1, (slot * K + from_branch.clamp_min(0))[:, None, None].expand(B, 1, V)).squeeze(1)
    law = torch.where((from_branch >= 0)[:, None], law_branch, law_self)
    bonus = sample_from(law, random_uniform(seeds, (n + a + 1)[:, None], it, BONUS).squeeze(1))
    return hit, from_branch, bonus


def move_kv(cache, rows_mask, dst, src) -> None:
    """Copy every layer's key and value at slot src[r] to slot dst[r], for rows where rows_mask."""
    src = torch.where(rows_mask, src, dst)                    # a no-op copy elsewhere: no host sync
    r = torch.arange(len(dst), device=dst.device)
    cache.k[:, r, :, dst] = cache.k[:, r, :, src]
    cache.v[:, r, :, dst] = cache.v[:, r, :, src]


# ---------------------------------------------------------------------------------------------
# The loop

@torch.inference_mode()
def sample_codes(model, vocab, grid, cond_prompts: list[list[int]], *, mode: str = "sjd",
                 policy: SamplingPolicy | str | None = None, seeds: list[int] | None = None,
                 window: int | None = None, coupling: str = "maximal", regions=None,
                 branches: int | None = None, on_progress: Callable[[int, int], None] | None = None,
                 on_preview: Callable[[torch.Tensor, torch.Tensor], None] | None = None,
                 should_cancel: Callable[[], bool] | None = None) -> SampleResult:
    """Sample B images' code grids.

    model: callable as `model(ids, cache=cache, n_valid=n)` with `model.new_cache(rows, max_len)`
        and `model.device` (uni1_core.model.Uni1Model). vocab: ImageVocab. grid: ImageGrid.
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
    Returns SampleResult(codes, streams, stats). stats (JSON-ready):
        mode, window, coupling, batch, regions (region rows per image, max)
        forwards            batched forwards after the prefill (a CFG batch counts once)
        prefill_forwards    1 (the prompts and headers, one batched forward)
        image_tokens        stream tokens sampled per image (codes, row ends, end of image;
                            condition rows excluded)
        forwards_per_token  forwards / image_tokens (for the batch: its slowest image)
        per_image_forwards, per_image_forwards_per_token
        accepted_hist       [a] = (image, forward) pairs that kept a drafts, i.e. committed a+1 tokens
                            (a+2 with a branch hit)
        branches, branch_hits  alternatives per forward; forwards whose residual sample hit one
        residual_fallbacks  rejections whose residual was empty or not finite (then p was used)
        seconds, tokens_per_second (all images)
    """
    t0 = time.perf_counter()
    policy = get_policy(policy)
    if mode not in MODES:
        raise ValueError(f"mode {mode!r} is unknown; choose one of {MODES}")
    if coupling not in COUPLINGS:
        raise ValueError(f"coupling {coupling!r} is unknown; choose one of {COUPLINGS}")
    L = DEFAULT_WINDOW[mode] if window is None else int(window)
    if mode == "ar" and L != 1:
        raise ValueError(f"mode 'ar' decodes one token per forward; got window={window} (use sjd for larger windows)")
    if L < 1:
        raise ValueError(f"window must be >= 1, got {window}")
    K = DEFAULT_BRANCHES[mode] if branches is None else int(branches)
    if K < 0 or (K and L == 1):
        raise ValueError(f"branches must be >= 0 and needs a window > 1 (no drafts in plain AR), got {branches}")
    rule = "sjd" if mode != "sjd_coupled" else coupling
    B = len(cond_prompts)
    if B == 0:
        raise ValueError("cond_prompts is empty: give one list of prompt token ids per image")
    seeds = list(range(B)) if seeds is None else [int(s) for s in seeds]
    if len(seeds) != B:
        raise ValueError(f"{len(seeds)} seeds for {B} prompts: give one seed per image")
    if regions is not None:
        if len(regions) != B:
            raise ValueError(f"regions has {len(regions)} entries for {B} images: give one (or None) per image")
        for b, image_regions in enumerate(regions):
            for region in image_regions or []:
                if not (isinstance(region, (tuple, list)) and len(region) == 2
                        and isinstance(region[1], (tuple, list)) and len(region[1]) == 4):
                    raise ValueError(f"regions[{b}] holds {region!r}: each region must be "
                                     "(prompt_ids, (x0, y0, x1, y1)) with the box normalised to 0..1")

    device = model.device
    S, C = grid.stream_len, vocab.num_codes
    V = C + 2
    sub_ids = sub_vocab_ids(vocab).to(device)
    forced = forced_sub_ids(grid, vocab).to(device)
    guidance = policy.guidance(grid).to(device)
    use_cfg = bool((guidance != 1.0).any())
    guidance = guidance.float() if use_cfg else None                  # the fp32 values probs uses
    # A leading run of forced positions (the condition rows of an image-conditioned request)
    # is committed up front and prefilled with the header, as the reference prefills it.
    free = (forced < 0).nonzero()
    n0 = int(free[0]) if len(free) else S
    header = list(grid.header_ids(vocab)) + sub_ids[forced[:n0]].tolist()

    # ---- rows of the batched forward: cond, regions, uncond --------------------------------
    row_ids = [list(p) + header for p in cond_prompts]
    row_image = list(range(B))
    R = max((len(r) for r in regions if r), default=0) if regions is not None else 0
    region_rows = torch.arange(B)[:, None].repeat(1, R)                 # padding: the cond row, weight 0
    region_w = torch.zeros(B, R, S)
    for b in range(B):
        for r, (prompt, box) in enumerate((regions[b] or []) if regions is not None else []):
            region_rows[b, r] = len(row_ids)
            row_ids.append(list(prompt) + header)
            row_image.append(b)
        if R and regions[b]:
            w = region_weights([box for _, box in regions[b]], grid, policy.region_feather)
            region_w[b, : len(regions[b])] = stream_region_weights(w, grid)
    if use_cfg:
        row_ids += [list(header) for _ in range(B)]
        row_image += list(range(B))
    region_rows, region_w = region_rows.to(device), region_w.to(device)
    row_image = torch.tensor(row_image, device=device)
    one_row_per_image = len(row_ids) == B                           # no CFG, no regions

    def per_row(x):
        """An image's value for each of its forward rows (no index copy for one row per image)."""
        return x if one_row_per_image else x[row_image]
    # Everything but the last header (or forced) token is prefilled; that token is the first window input.
    base = torch.tensor([len(r) - 1 for r in row_ids], device=device)

    seeds_t = torch.tensor(seeds, dtype=torch.long, device=device)
    n = torch.full((B,), n0, dtype=torch.long, device=device)          # committed stream tokens
    it = torch.zeros(B, dtype=torch.long, device=device)               # forwards seen by each image
    last = torch.full((B,), header[-1], dtype=torch.long, device=device)
    last_sub = torch.full((B,), -1, dtype=torch.long, device=device)    # the header: no code to its left
    D = torch.zeros(B, L, dtype=torch.long, device=device)             # drafts at n .. n+L-2 (slot L-1: pad)
    Q = torch.zeros(B, L, V, dtype=torch.float32, device=device)
    G = gumbel_noise(seeds_t, n0 + torch.arange(L, device=device)[None].expand(B, L), V) if rule == "gumbel" else None
    if L == 1:
        # Plain AR draws one FRESH uniform per forward, at iteration n - n0 (every forward commits
        # one token); drawn here for the whole stream at once instead of hashing every step.
        k = torch.arange(S + 1, device=device)[None].expand(B, S + 1)
        ar_uniforms = draw(random_keys(seeds_t, k, k - n0), FRESH)    # (B, S + 1): [b, n_b]
    stream = torch.zeros(B, S + L, dtype=torch.long, device=device)
    stream[:, :n0] = forced[:n0]
    uniform_q = torch.zeros(V, device=device)
    uniform_q[:C] = 1.0 / C
    steps = torch.arange(L, device=device)
    code_pos = grid.code_positions().to(device)

    stats = {"mode": mode, "window": L, "coupling": coupling if mode == "sjd_coupled" else None,
             "batch": B, "forwards": 0, "prefill_forwards": 0, "image_tokens": S - n0,
             "regions": R, "branches": K}
    per_image_forwards = torch.zeros(B, dtype=torch.long, device=device)
    accepted_hist = torch.zeros(L, dtype=torch.long, device=device)
    fallbacks = torch.zeros((), dtype=torch.long, device=device)
    branch_hits = torch.zeros((), dtype=torch.long, device=device)

    def check_cancel():
        if should_cancel is not None and should_cancel():
            raise Cancelled(f"sampling cancelled after {int(n.sum())} of {B * S} image tokens "
                            f"({stats['forwards']} forwards); the model is unchanged and can be used again")

    def init_slots(D, Q, first_new):
        """Draft slots s >= first_new[b] (positions n_b + s): the forced token (q one-hot) or a
        uniform random code (q uniform; in gumbel mode the argmax of the position's noise,
        which is also uniform, so that later Gumbel drafts stay coupled with it)."""
        new = steps[None, :] >= first_new[:, None]
        pos = (n[:, None] + steps[None, :]).clamp_max(S - 1)
        f = forced[pos]
        if G is not None:
            rand_tok = G[..., :C].argmax(-1)
        else:
            rand_tok = (random_uniform(seeds_t, pos, it, INIT) * C).long().clamp_max(C - 1)
        tok = torch.where(f >= 0, f, rand_tok)
        law = uniform_q.expand(B, L, V).clone()
        law = torch.where((f >= 0)[..., None], torch.zeros_like(law).scatter_(-1, f.clamp_min(0)[..., None], 1.0), law)
        return torch.where(new, tok, D), torch.where(new[..., None], law, Q)

    if L > 1:
        D, Q = init_slots(D, Q, torch.zeros(B, dtype=torch.long, device=device))
    no_drafts_kept = torch.zeros(B, dtype=torch.long, device=device)

    cache = None
    try:
        check_cancel()
        cache = model.new_cache(len(row_ids), int(base.max()) + S + L + 1 + K * BRANCH_SLOTS)
        prefill = torch.full((len(row_ids), int(base.max())), header[0], dtype=torch.long, device=device)
        for i, r in enumerate(row_ids):
            prefill[i, : len(r) - 1] = torch.tensor(r[:-1], dtype=torch.long)
        if int(base.max()) > 0:
            model(prefill, cache=cache, n_valid=base)
            stats["prefill_forwards"] = 1

        while True:
            left = S - int(n.min())                                           # the one host sync
            if left == 0:
                break
            active = n < S
            step = active.long()
            n_valid = (S - n).clamp_max(L)                   # window inputs: 0 for a finished image
            m = (n_valid - 1).clamp_min(0)                   # drafts used
            T = min(L, left)
            window_ids = last[:, None] if T == 1 else torch.cat([last[:, None], sub_ids[D[:, : T - 1]]], dim=1)
            at = n[:, None] + steps[None, :T]                # (B, T) stream positions of the window
            J = min(BRANCH_SLOTS, T - 1) if K else 0
            tree = None
            if J:
                cand = branch_candidates(D, Q[:, :J], last_sub, stream, n, grid.cols + 1, K, C)
                window_ids = torch.cat([window_ids, sub_ids[cand.reshape(B, J * K)]], dim=1)
                tree = [-1, *range(T - 1)] + [j for j in range(J) for _ in range(K)]
                # a branch off window input j is an alternative for stream position n+j; its
                # logits are the law at n+j+1
                at = torch.cat([at, (n[:, None] + 1 + torch.arange(J, device=device).repeat_interleave(K))], dim=1)
            check_cancel()
            logits = model(per_row(window_ids), cache=cache, n_valid=per_row(n_valid), tree=tree)
            stats["forwards"] += 1
            per_image_forwards += step

            TE = at.shape[1]
            sub = logits.index_select(-1, sub_ids)          # (rows, T+E, V) = image_logits(logits, vocab)
            pos = at.clamp_max(S - 1)
            # rows are [cond, regions, uncond]: slices, not index copies
            cond = sub[:B].reshape(B * TE, V)
            uncond = sub[-B:].reshape(B * TE, V) if use_cfg else None
            reg_c = reg_w = None
            if R:
                reg_c = sub[region_rows].permute(0, 2, 1, 3).reshape(B * TE, R, V)
                reg_w = region_w.gather(2, pos[:, None, :].expand(B, R, TE)).permute(0, 2, 1).reshape(B * TE, R)
            P = policy.probs(cond, uncond, pos.reshape(-1), guidance, forced, reg_c, reg_w).view(B, TE, V)
            P, P_branch, at, pos = P[:, :T], P[:, T:], at[:, :T], pos[:, :T]

            if L == 1:
                # plain AR: no drafts, nothing to verify; verify_window would return exactly
                # this fresh sample (with its uniform drawn up front), a = 0 and no fallback.
                tokens = sample_from(P, ar_uniforms.gather(1, n[:, None]))
                a = no_drafts_kept
            else:
                verdict = verify_window(P, D[:, :T], Q[:, :T], m, random_keys(seeds_t, pos, it), rule,
                                        None if G is None else G[:, :T])
                a = torch.where(active, verdict.accepted, torch.zeros_like(n))
                tokens = verdict.tokens
                fallbacks += (verdict.fallbacks & active[:, None]).sum()

            committed = a + 1
            if J:
                # a branch hit: the token after the residual sample is drawn now (the bonus), in
                # place of its draft, and the cache gets the key and value that the hit branch
                # computed for the residual sample, in that position's slot
                hit, from_branch, bonus = take_branch(tokens, a, m, D, cand, P, P_branch, n, S, seeds_t, it, active)
                kv_from = base + per_row(n - n0 + T + a * K + from_branch.clamp_min(0))
                move_kv(cache, per_row(from_branch >= 0), base + per_row(n - n0 + a + 1), kv_from)
                tokens = torch.where(hit[:, None] & (steps[None, :T] == a[:, None] + 1), bonus[:, None], tokens)
                committed = committed + hit.long()
                branch_hits += hit.sum()
            # commit tokens[:committed] at n.. (writes past that are overwritten by later commits;
            # a finished image, n = S, writes only into the padding columns S..S+L-1)
            stream.scatter_(1, at, tokens)
            last_sub = tokens.gather(1, (committed - 1)[:, None]).squeeze(1)
            last = sub_ids[last_sub]                                         # (unused once finished)
            accepted_hist.index_add_(0, a, step)
            n = n + committed * step
            cache.lengths = base + per_row(n - n0)                           # exactly the committed prefix

            # next drafts: slot s <- window position committed+s while it had a draft or was the last
            if L > 1:
                it = it + step                                 # (plain AR's draws were keyed up front)
                src = committed[:, None] + steps[None, :]
                carried = (src <= m[:, None]) & active[:, None]
                srcc = src.clamp_max(T - 1)
                D = torch.where(carried, tokens.gather(1, srcc), D)
                Q = torch.where(carried[..., None], verdict.next_q.gather(1, srcc[..., None].expand(B, L, V)), Q)
                if G is not None:
                    keep_g = (src < L) & active[:, None]
                    fresh_from = int(torch.where(active, L - committed, torch.full_like(a, L)).min())
                    shifted = G.gather(1, src.clamp_max(L - 1)[..., None].expand(B, L, V))
                    if fresh_from < L:
                        gpos = n[:, None] + steps[None, fresh_from:]
                        newg = torch.cat([shifted[:, :fresh_from], gumbel_noise(seeds_t, gpos, V)], dim=1)
                        shifted = torch.where(keep_g[..., None], shifted, newg)
                    G = torch.where(active[:, None, None], shifted, G)
                first_new = torch.where(active, carried.sum(1), torch.full_like(n, L))
                D, Q = init_slots(D, Q, first_new)

            if on_progress is not None:
                on_progress(int(n.sum()), B * S)
            if on_preview is not None:
                on_preview(*_partial_grid(stream, n, code_pos, grid))
    finally:
        del cache

    streams = sub_ids[stream[:, :S]]
    codes = stream[:, code_pos].view(B, grid.rows, grid.cols)
    if not bool(((stream[:, code_pos] < C)).all()):
        raise RuntimeError("internal error: a structural token was sampled inside a row")
    stats["accepted_hist"] = accepted_hist.tolist()
    stats["residual_fallbacks"] = int(fallbacks)
    stats["branch_hits"] = int(branch_hits)
    stats["per_image_forwards"] = per_image_forwards.tolist()
    tokens = max(S - n0, 1)
    stats["forwards_per_token"] = stats["forwards"] / tokens
    stats["per_image_forwards_per_token"] = [f / tokens for f in stats["per_image_forwards"]]
    stats["seconds"] = time.perf_counter() - t0
    stats["tokens_per_second"] = B * (S - n0) / max(stats["seconds"], 1e-9)
    return SampleResult(codes=codes, streams=streams, stats=stats)


def _partial_grid(stream, n, code_pos, grid):
    B = stream.shape[0]
    done = code_pos[None, :] < n[:, None]
    codes = torch.where(done, stream[:, code_pos], torch.zeros_like(stream[:, code_pos]))
    return codes.view(B, grid.rows, grid.cols), done.view(B, grid.rows, grid.cols)
