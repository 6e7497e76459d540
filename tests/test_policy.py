"""uni1_core.policy: the one sampling law.

References: transformers' TopK / TopP / Temperature warpers, and a transcription (in this file,
in the reference's own terms: full vocabulary, -inf masks, token counts since the image start)
of Lumina-mGPT 2.0's processors: the plain path's in-place guidance update, the structural
mask and image top-k, and the SJD path's top-n-sigma.
"""
from __future__ import annotations

import math

import pytest
import torch

from uni1_core.policy import (PRESETS, SamplingPolicy, forced_sub_ids, get_policy, image_logits,
                              region_weights, stream_region_weights, sub_vocab_ids)
from uni1_core.sequence import ImageGrid, ImageVocab

VOCAB = ImageVocab(code_offset=30, num_codes=40, image_start=1, image_end=2, row_end=3, turn_end=4,
                   grid_ids={1: 5, 2: 6, 3: 7, 4: 8})
FULL = 80                                     # full vocabulary size
GRID = ImageGrid(64, 32)                      # 4 rows x 8 cols, stream of 37


def logits(n, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, FULL, generator=g, dtype=torch.float64).float() * scale


def law(policy, c_full, u_full, positions, grid=GRID):
    return policy.probs(image_logits(c_full, VOCAB), image_logits(u_full, VOCAB), positions,
                        policy.guidance(grid), forced_sub_ids(grid, VOCAB))


# ---------------------------------------------------------------------------------------------
# The reference, transcribed over the full vocabulary

def reference_guidance(g0, grid, n_positions):
    """inference_solver's CFG processor: before each image token, new_token_num = tokens after
    <racm3:break> (the two grid tokens included); g = max(4, g * (1 - n / (h_lat * w_lat))) with
    h_lat, w_lat = 2 * grid units (H/16, W/16); no update at all when g == 1."""
    h_lat, w_lat = (grid.height // 32) * 2, (grid.width // 32) * 2
    g, out = g0, []
    generated_after_start = 2                # the grid tokens
    for _ in range(n_positions):
        if g != 1.0:
            g = max(4.0, g * (1 - generated_after_start / (h_lat * w_lat)))
        out.append(g)
        generated_after_start += 1
    return out


def reference_law(c, u, g, k, grid, top_k, n_sigma=None):
    """CFG, then MultiModalLogitsProcessor, then top-k (then TopnsigmaLogitsWarper3d), softmax."""
    scores = g * (c - u) + u if g != 1.0 else c.clone()
    w = grid.cols
    if (k + 1) % (w + 1) == 0:
        scores = torch.full_like(scores, -math.inf)
        scores[VOCAB.row_end] = 0
    elif k + 1 == (w + 1) * grid.rows + 1:
        scores = torch.full_like(scores, -math.inf)
        scores[VOCAB.image_end] = 0
    else:
        image = torch.zeros(FULL, dtype=torch.bool)
        image[VOCAB.code_offset: VOCAB.code_offset + VOCAB.num_codes] = True
        scores = torch.where(image, scores, torch.tensor(-math.inf))
        kk = min(top_k, FULL)
        scores = scores.masked_fill(scores < torch.topk(scores, kk).values[-1], -math.inf)
        if n_sigma is not None:
            valid = (scores > -10000) & (scores < math.inf)
            vals = scores[valid]
            sigma = ((vals - vals.mean()) ** 2).mean().sqrt()
            keep = scores >= scores.max() - n_sigma * sigma
            keep[scores.argmax()] = True
            scores = torch.where(keep, scores, torch.tensor(-math.inf))
    return torch.softmax(scores, -1)


def to_full(p_sub):
    full = torch.zeros(p_sub.shape[0], FULL)
    full[:, sub_vocab_ids(VOCAB)] = p_sub
    return full


@pytest.mark.parametrize("g0", [1.0, 2.0, 4.0, 7.5, 40.0])
def test_lumina_decay_schedule_matches_the_reference(g0):
    policy = PRESETS["lumina_ar"].replace(cfg_scale=g0)
    got = policy.guidance(GRID).tolist()
    assert got == reference_guidance(g0, GRID, GRID.stream_len)
    if g0 == 1.0:
        assert set(got) == {1.0}
    else:
        assert min(got) == 4.0               # any g other than 1 ends at (or starts at) the floor


def test_lumina_decay_at_768_reaches_the_floor_within_a_hundred_tokens():
    g = PRESETS["lumina_ar"].replace(cfg_scale=40.0).guidance(ImageGrid(768, 768))
    assert g[0] > 39 and g[100] == 4.0 and (g[1:] <= g[:-1]).all()


@pytest.mark.parametrize("preset,n_sigma", [("lumina_ar", None), ("lumina_sjd", 1.0)])
def test_presets_reproduce_the_reference_law(preset, n_sigma):
    policy = PRESETS[preset].replace(top_k=12, cfg_scale=5.0)
    S = GRID.stream_len
    c, u = logits(S, seed=1), logits(S, seed=2)
    got = to_full(law(policy, c, u, torch.arange(S)))
    gs = reference_guidance(5.0, GRID, S) if policy.cfg_schedule == "lumina_decay" else [5.0] * S
    for k in range(S):
        want = reference_law(c[k], u[k], gs[k], k, GRID, top_k=12, n_sigma=n_sigma)
        torch.testing.assert_close(got[k], want, atol=1e-6, rtol=1e-5)


def test_preset_fields():
    assert PRESETS["lumina_ar"].cfg_schedule == "lumina_decay" and PRESETS["lumina_ar"].top_n_sigma is None
    assert PRESETS["lumina_sjd"].cfg_schedule == "constant" and PRESETS["lumina_sjd"].top_n_sigma == 1.0
    for p in PRESETS.values():
        assert p.top_k == 4096 and p.cfg_scale == 4.0 and p.temperature == 1.0
    assert get_policy(None) is PRESETS["uni1"] and get_policy("lumina_sjd") is PRESETS["lumina_sjd"]
    with pytest.raises(ValueError, match="unknown sampling preset 'x'"):
        get_policy("x")


# ---------------------------------------------------------------------------------------------
# transformers' warpers

@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, 7, None), (0.7, None, 0.8), (1.3, 10, 0.5),
                                                     (1.0, None, None)])
def test_matches_transformers_warpers(temperature, top_k, top_p):
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    policy = SamplingPolicy(cfg_scale=3.0, temperature=temperature, top_k=top_k, top_p=top_p)
    c, u = logits(16, seed=3), logits(16, seed=4)
    positions = torch.tensor([k for k in range(GRID.stream_len) if k % 9 != 8][:16])
    got = law(policy, c, u, positions)
    mixed = image_logits(u + 3.0 * (c - u), VOCAB)
    mixed[:, VOCAB.num_codes:] = -math.inf
    scores = TemperatureLogitsWarper(temperature)(None, mixed)
    if top_k:
        scores = TopKLogitsWarper(top_k)(None, scores)
    if top_p:
        scores = TopPLogitsWarper(top_p)(None, scores)
    torch.testing.assert_close(got, torch.softmax(scores, -1), atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# Structure, CFG and masks

def test_forced_positions_are_one_hot_and_free_positions_codes_only():
    policy = SamplingPolicy(cfg_scale=4.0, top_k=None)
    S = GRID.stream_len
    p = law(policy, logits(S), logits(S, seed=9), torch.arange(S))
    forced = forced_sub_ids(GRID, VOCAB)
    assert p.dtype == torch.float32 and p.shape == (S, VOCAB.num_codes + 2)
    for k in range(S):
        if forced[k] >= 0:
            assert p[k, forced[k]] == 1 and p[k].sum() == 1
        else:
            assert (p[k, VOCAB.num_codes:] == 0).all() and (p[k, :VOCAB.num_codes] > 0).all()
    assert forced.tolist().count(VOCAB.num_codes) == GRID.rows and forced[-1] == VOCAB.num_codes + 1


def test_condition_rows_are_forced_codes():
    cond = torch.randint(0, VOCAB.num_codes, (2, GRID.cols), generator=torch.Generator().manual_seed(0))
    grid = ImageGrid(64, 32, prefix_codes=cond)
    p = law(SamplingPolicy(), logits(GRID.cols), logits(GRID.cols, seed=1), torch.arange(GRID.cols), grid)
    assert torch.equal(p.argmax(-1), cond[0]) and (p.max(-1).values == 1).all()


def test_masks_come_after_the_cfg_mix():
    """A huge structural logit in u must not leak (and must not overflow) through the mix."""
    c, u = logits(1), logits(1, seed=1)
    u[0, VOCAB.row_end] = -3e38
    c[0, VOCAB.row_end] = 3e38
    p = law(SamplingPolicy(cfg_scale=8.0, top_k=None), c, u, torch.tensor([0]))
    assert torch.isfinite(p).all() and p[0, VOCAB.num_codes] == 0 and abs(float(p.sum()) - 1) < 1e-6


def test_guidance_one_uses_the_conditional_logits_exactly():
    c, u = logits(4), logits(4, seed=1)
    with_u = law(SamplingPolicy(cfg_scale=1.0, top_k=None), c, u, torch.arange(4))
    without = SamplingPolicy(cfg_scale=1.0, top_k=None).probs(image_logits(c, VOCAB), None, torch.arange(4),
                                                              torch.ones(GRID.stream_len, dtype=torch.float64),
                                                              forced_sub_ids(GRID, VOCAB))
    assert torch.equal(with_u, without)
    with pytest.raises(ValueError, match="no unconditional logits"):
        SamplingPolicy(cfg_scale=3.0).probs(image_logits(c, VOCAB), None, torch.arange(4),
                                            SamplingPolicy(cfg_scale=3.0).guidance(GRID), forced_sub_ids(GRID, VOCAB))


def test_cfg_free_tokens():
    policy = SamplingPolicy(cfg_scale=3.0, cfg_free_tokens=5, top_k=None)
    g = policy.guidance(GRID)
    assert g[:5].eq(1).all() and g[5:].eq(3).all()
    c, u = logits(6), logits(6, seed=1)
    p = law(policy, c, u, torch.arange(6))
    plain = law(SamplingPolicy(cfg_scale=1.0, top_k=None), c, u, torch.arange(6))
    assert torch.equal(p[:5], plain[:5]) and not torch.allclose(p[5], plain[5])


def test_top_k_keeps_ties():
    c = torch.zeros(1, FULL)
    c[0, VOCAB.code_offset: VOCAB.code_offset + 3] = 5.0          # three tied best codes
    p = law(SamplingPolicy(cfg_scale=1.0, top_k=2), c, c, torch.tensor([0]))
    assert int((p > 0).sum()) == 3


def test_top_k_one_is_greedy():
    c, u = logits(5), logits(5, seed=1)
    p = law(SamplingPolicy(cfg_scale=2.0, top_k=1), c, u, torch.arange(5))
    assert (p.max(-1).values == 1).all()


def test_bad_policies_are_clear_errors():
    for kwargs, msg in [(dict(cfg_schedule="cosine"), "cfg_schedule 'cosine' is unknown"),
                        (dict(temperature=0.0), "temperature must be > 0"),
                        (dict(top_k=0), "top_k must be >= 1"),
                        (dict(top_p=1.5), "top_p must be in"),
                        (dict(top_n_sigma=-1.0), "top_n_sigma must be >= 0"),
                        (dict(cfg_scale=float("nan")), "cfg_scale must be a finite number")]:
        with pytest.raises(ValueError, match=msg):
            SamplingPolicy(**kwargs)


# ---------------------------------------------------------------------------------------------
# Regional blending

def test_region_blend():
    c, u, r1, r2 = (logits(3, seed=s) for s in range(4))
    sub = lambda x: image_logits(x, VOCAB)
    policy = SamplingPolicy(cfg_scale=3.0, top_k=None)
    g, forced, pos = policy.guidance(GRID), forced_sub_ids(GRID, VOCAB), torch.arange(3)
    regions = torch.stack([sub(r1), sub(r2)], 1)
    # weight 1 on region 1: the law of region 1's logits in place of the global ones
    full = policy.probs(sub(c), sub(u), pos, g, forced, regions, torch.tensor([[1.0, 0.0]] * 3))
    torch.testing.assert_close(full, policy.probs(sub(r1), sub(u), pos, g, forced))
    # weight 0: the global law
    none = policy.probs(sub(c), sub(u), pos, g, forced, regions, torch.zeros(3, 2))
    torch.testing.assert_close(none, policy.probs(sub(c), sub(u), pos, g, forced))
    # overlapping full weights are normalised: the mean of the two regions' logits
    both = policy.probs(sub(c), sub(u), pos, g, forced, regions, torch.ones(3, 2))
    torch.testing.assert_close(both, policy.probs((sub(r1) + sub(r2)) / 2, sub(u), pos, g, forced))
    # half weight: the logit midpoint of region and global
    half = policy.probs(sub(c), sub(u), pos, g, forced, regions[:, :1], torch.full((3, 1), 0.5))
    torch.testing.assert_close(half, policy.probs((sub(c) + sub(r1)) / 2, sub(u), pos, g, forced))


def test_region_weights_by_stream_position():
    w = region_weights([(0.0, 0.0, 1.0, 1.0), (0.5, 0.5, 1.0, 1.0)], GRID, feather=0)
    assert w[0].eq(1).all()                          # the whole canvas: no feathering at image edges
    s = stream_region_weights(w, GRID)
    assert s.shape == (2, GRID.stream_len)
    forced = forced_sub_ids(GRID, VOCAB)
    assert s[:, forced >= 0].eq(0).all() and s[0, forced < 0].eq(1).all()
    assert s[1].sum() == (GRID.rows // 2) * (GRID.cols // 2)
