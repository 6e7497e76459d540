"""Exactness of every sampling mode: the joint law of the sampled code grids equals the exact
autoregressive law, and three known-inexact variants (sjd.md section 5.1) and two branch bugs
fail the same test.

Setup: a tiny random float64 Uni1Model, 4 codes with top-k 3, CFG 1.5 with the batched
unconditional rows, a 1 x 4 code grid (stream: c c c c <row end> <end of image>; windows run
into the forced positions), three prompts of different lengths, and a regional variant (one
region row, a feathered box over the left half). The exact law of all 4^4 code grids is
enumerated with full forwards (no cache) through the same policy.
The model seed was chosen once so that the negative controls' biases are large for this
model (the size of each bias depends on the model); the exact variants pass for any seed.

Samples: one call per variant with a large batch (image i: prompt i % 3, seed SEED0 + i).
Images in a batch are independent by construction (random numbers keyed by seed and position;
`test_sampler.test_batch_independence` checks that an image's tokens are the same alone and
in a batch), so this is the law at batch 1 and at batch 3 as well, and it exercises ragged
per-image progress in one forward far more than batches of 3 would.

Statistic: Pearson chi-square per prompt (cells with expected count < 5 pooled), summed over
the prompts, turned into a z-score with the Wilson-Hilferty approximation. Exact variants must
give z < Z_MAX; the negative controls must give z > Z_MIN_BIAS. A sample in a cell of zero
probability fails at once.
"""
from __future__ import annotations

import itertools
import math

import pytest
import torch

from tests.test_sampler import TinyGrid, tiny_model, tiny_vocab
from uni1_core import sampler as sampler_mod
from uni1_core.policy import SamplingPolicy, forced_sub_ids, image_logits, region_weights, stream_region_weights
from uni1_core.sampler import sample_codes

NUM_CODES = 4
PROMPTS = [[7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]
POLICY = SamplingPolicy(cfg_scale=1.5, top_k=3)
REGIONS = [([17, 18], (0.0, 0.0, 0.5, 1.0))]      # weights along the row: 1, 0.75, 0.25, 0
N = 9000
SEED0 = 1000
Z_MAX = 3.5          # exact variants: a false alarm has probability ~2e-4 per variant
Z_MIN_BIAS = 8.0     # negative controls must be far outside the noise


@pytest.fixture(scope="module")
def setup():
    model = tiny_model(num_codes=NUM_CODES, seed=2, scale=0.8, layers=1)
    vocab = tiny_vocab(NUM_CODES)
    grid = TinyGrid(1, 4)
    return model, vocab, grid, {"plain": exact_laws(model, vocab, grid),
                                "regional": exact_laws(model, vocab, grid, REGIONS)}


def exact_laws(model, vocab, grid, regions=None):
    """(prompts, 4^4) float64: probability of every code grid (cell index = base-4 digits, row-major)."""
    grids = torch.tensor(list(itertools.product(range(NUM_CODES), repeat=grid.rows * grid.cols)))
    K = grids.shape[0]
    body = torch.cat([grids.view(K, grid.rows, grid.cols) + vocab.code_offset,
                      torch.full((K, grid.rows, 1), vocab.row_end)], dim=2).view(K, -1)
    streams = torch.cat([body, torch.full((K, 1), vocab.image_end)], dim=1)      # (K, S)
    S = grid.stream_len
    header = torch.tensor(grid.header_ids(vocab)).expand(K, 3)
    guidance, forced = POLICY.guidance(grid), forced_sub_ids(grid, vocab)
    sub_streams = torch.where(streams == vocab.row_end, NUM_CODES,
                              torch.where(streams == vocab.image_end, NUM_CODES + 1, streams - vocab.code_offset))
    laws = []
    with torch.no_grad():
        # logits predicting stream position k sit at the input before it
        uncond = image_logits(model(torch.cat([header, streams], 1)), vocab)[:, 2: 2 + S]
        def branch(prompt):
            ids = torch.cat([torch.tensor(prompt).expand(K, len(prompt)), header, streams], 1)
            return image_logits(model(ids), vocab)[:, len(prompt) + 2: len(prompt) + 2 + S].reshape(K * S, -1)

        reg_c = reg_w = None
        if regions:
            reg_c = torch.stack([branch(prompt) for prompt, _ in regions], 1)                 # (K*S, R, V')
            w = stream_region_weights(region_weights([box for _, box in regions], grid, POLICY.region_feather), grid)
            reg_w = w.t().repeat(K, 1)                                                          # (K*S, R)
        for prompt in PROMPTS:
            positions = torch.arange(S).repeat(K)
            P = POLICY.probs(branch(prompt), uncond.reshape(K * S, -1), positions, guidance, forced, reg_c, reg_w)
            P = P.view(K, S, -1).double()
            laws.append(P.gather(2, sub_streams[..., None]).squeeze(-1).prod(1))
    laws = torch.stack(laws)
    assert torch.allclose(laws.sum(1), torch.ones(len(PROMPTS), dtype=torch.float64), atol=1e-5)
    return laws


def run(model, vocab, grid, regional=False, **kw):
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(N)]
    if regional:
        kw["regions"] = [REGIONS] * N
    out = sample_codes(model, vocab, grid, prompts, policy=POLICY, seeds=[SEED0 + i for i in range(N)], **kw)
    digits = out.codes.view(N, -1)
    cells = (digits * NUM_CODES ** torch.arange(digits.shape[1] - 1, -1, -1)).sum(1)
    return cells, out.stats


def law_z(cells, laws):
    """Summed Pearson chi-square over the prompts -> (z, tv, chi2, df)."""
    chi2, df, tv = 0.0, 0, 0.0
    for p, law in enumerate(laws):
        got = torch.bincount(cells[p::len(PROMPTS)], minlength=law.numel()).double()
        n = got.sum()
        expected = law * n
        if bool((got[law == 0] > 0).any()):
            return math.inf, 1.0, math.inf, 0
        tv += 0.5 * float((got / n - law).abs().sum()) / len(laws)
        big = expected >= 5
        o = torch.cat([got[big], got[~big].sum()[None]])
        e = torch.cat([expected[big], expected[~big].sum()[None]])
        keep = e > 0
        chi2 += float(((o - e) ** 2 / e)[keep].sum())
        df += int(keep.sum()) - 1
    z = ((chi2 / df) ** (1 / 3) - (1 - 2 / (9 * df))) / math.sqrt(2 / (9 * df))
    return z, tv, chi2, df


EXACT = {
    "ar": dict(mode="ar"),
    "sjd": dict(mode="sjd", window=4),
    "sjd_w16": dict(mode="sjd"),
    "coupled_maximal": dict(mode="sjd_coupled", coupling="maximal", window=4),        # with 4 branches
    "coupled_gumbel": dict(mode="sjd_coupled", coupling="gumbel", window=4),
    "coupled_maximal_regional": dict(mode="sjd_coupled", coupling="maximal", window=4, regional=True),
    "coupled_maximal_no_branches": dict(mode="sjd_coupled", coupling="maximal", window=4, branches=0),
    "coupled_gumbel_1_branch": dict(mode="sjd_coupled", coupling="gumbel", window=4, branches=1),
    "sjd_2_branches": dict(mode="sjd", window=4, branches=2),
    # the decode step through torch.compile (uni1_core/decode.py): static shapes, full windows
    "coupled_maximal_compiled": dict(mode="sjd_coupled", coupling="maximal", window=4, compile=True),
}


@pytest.mark.parametrize("name", list(EXACT))
def test_mode_has_the_exact_ar_law(setup, name):
    model, vocab, grid, laws = setup
    kw = EXACT[name]
    cells, stats = run(model, vocab, grid, **kw)
    z, tv, chi2, df = law_z(cells, laws["regional" if kw.get("regional") else "plain"])
    assert z < Z_MAX, f"{name}: chi2 {chi2:.0f} on {df} df (z {z:.1f}), TV {tv:.4f}"
    if name != "ar":
        assert stats.forwards_per_token < 1.0
    if stats.branches:                           # the branches were used, not just scored
        assert stats.branch_hits > N // 10, stats.branch_hits
    if kw.get("compile"):
        from uni1_core import decode
        assert decode.static_forward(model).compiled, "torch.compile fell back: nothing was compiled"


def test_regional_law_is_a_different_law(setup):
    """Otherwise the regional variant above would not test the regional blend at all."""
    laws = setup[3]
    tv = 0.5 * (laws["plain"] - laws["regional"]).abs().sum(1)
    assert (tv > 0.3).all(), tv


# ---------------------------------------------------------------------------------------------
# Negative controls: the same test must reject the three inexact rules of sjd.md 5.1, and two
# branch bugs of our own

def lumina2_residual(p, q):
    """Lumina-mGPT 2.0's get_reject_sampling_logits: the residual only when p and q are almost
    disjoint, otherwise resample from p."""
    d = (p - q.clamp_max(0.99)).clamp_min(0)
    mass = d.sum(-1, keepdim=True)
    use = mass + 1e-7 > 1
    return torch.where(use, d, p), torch.zeros(p.shape[:-1], dtype=torch.bool)


def old_q_for_kept_drafts(original):
    """Released SCD-MC bookkeeping: a draft kept after the first rejection keeps its old q."""
    def verify(P, D, Q, m, *args, **kw):
        v = original(P, D, Q, m, *args, **kw)
        j = torch.arange(P.shape[1])[None, :]
        stale = v.keep & (j > v.accepted[:, None])
        return v._replace(next_q=torch.where(stale[..., None], Q, v.next_q))
    return verify


def batch_min_commit(original, group=3):
    """SJD repo, batch > 1: every image of a batch (here: each group of 3 consecutive images)
    commits the batch's minimum accepted length + 1; the longer images' accepted drafts go back
    into the window with their old q, their residual sample with q = p."""
    def verify(P, D, Q, m, *args, **kw):
        v = original(P, D, Q, m, *args, **kw)
        a = v.accepted
        a_min = a.view(-1, group).min(1).values.repeat_interleave(group)
        j = torch.arange(P.shape[1])[None, :]
        relabel = (j > a_min[:, None]) & (j < a[:, None])
        return v._replace(accepted=a_min, next_q=torch.where(relabel[..., None], Q, v.next_q))
    return verify


def bonus_after_the_draft(original):
    """A branch bug: after every rejection, the bonus is drawn from the law the window computed
    after the rejected draft, as if the residual sample were the draft."""
    def take(tokens, a, m, D, cand, P, P_branch, n, S, seeds, it, active):
        hit, from_branch, bonus = original(tokens, a, m, D, cand, P, P_branch, n, S, seeds, it, active)
        wrong = active & (a < m) & (n + a + 1 < S) & ~hit
        law = P.gather(1, (a + 1).clamp_max(P.shape[1] - 1)[:, None, None].expand(-1, 1, P.shape[-1])).squeeze(1)
        stale = sampler_mod.sample_from(law, sampler_mod.random_uniform(seeds, (n + a + 1)[:, None], it, 6).squeeze(1))
        return hit | wrong, torch.where(wrong, -1, from_branch), torch.where(wrong, stale, bonus)
    return take


NEGATIVE = {
    "lumina2_residual": (dict(mode="sjd", window=4), "residual_distribution", lambda orig: lumina2_residual),
    "old_q_labels": (dict(mode="sjd_coupled", coupling="maximal", window=4, branches=0), "verify_window",
                     old_q_for_kept_drafts),
    "batch_min": (dict(mode="sjd", window=4), "verify_window", batch_min_commit),
    "bonus_after_the_draft": (dict(mode="sjd_coupled", coupling="maximal", window=4), "take_branch",
                              bonus_after_the_draft),
    # a hit branch's key and value left out of the cache: later laws see the rejected draft
    "branch_kv_not_moved": (dict(mode="sjd_coupled", coupling="maximal", window=4), "move_kv",
                            lambda orig: lambda *args: None),
}


@pytest.mark.parametrize("name", list(NEGATIVE))
def test_inexact_rule_fails_the_same_test(setup, monkeypatch, name):
    model, vocab, grid, laws = setup
    kw, attr, make = NEGATIVE[name]
    monkeypatch.setattr(sampler_mod, attr, make(getattr(sampler_mod, attr)))
    cells, _ = run(model, vocab, grid, **kw)
    z, tv, chi2, df = law_z(cells, laws["plain"])
    assert z > Z_MIN_BIAS, f"{name} was not detected: chi2 {chi2:.0f} on {df} df (z {z:.1f}), TV {tv:.4f}"
