"""uni1_core.sampler: greedy agreement of the modes, cache bookkeeping, batch independence,
cancellation, hooks, regional guidance, statistics and input errors.

The model is a tiny random `Uni1Model` in float64 (the real transformer and its per-row KV
cache), so these tests also check the sampler against the model's call contract.
"""
from __future__ import annotations

import json

import pytest
import torch

from uni1_core import sampler as sampler_mod
from uni1_core.model import ModelConfig, Uni1Model
from uni1_core.policy import SamplingPolicy, region_weights
from uni1_core.sampler import Cancelled, sample_codes
from uni1_core.sequence import ImageGrid, ImageVocab

# tiny vocabulary: 1 image start, 2 image end, 3 row end, 4 turn end, 5/6 grid tokens,
# 7..19 text, 20.. image codes
CODE_OFFSET = 20


def tiny_vocab(num_codes: int) -> ImageVocab:
    return ImageVocab(code_offset=CODE_OFFSET, num_codes=num_codes, image_start=1, image_end=2, row_end=3,
                      turn_end=4, grid_ids={1: 5, 2: 6})


class TinyGrid:
    """The ImageGrid interface for grids smaller than the 32-pixel unit allows (tests only)."""

    def __init__(self, rows: int, cols: int):
        self.rows, self.cols = rows, cols
        self.stream_len = rows * (cols + 1) + 1

    def header_ids(self, vocab):
        return [vocab.image_start, 5, 6]

    def forced_ids(self, vocab):
        forced = torch.full((self.rows, self.cols + 1), -1, dtype=torch.long)
        forced[:, self.cols] = vocab.row_end
        return torch.cat([forced.flatten(), torch.tensor([vocab.image_end])])

    code_positions = ImageGrid.code_positions            # a function of rows and cols only


def tiny_model(num_codes: int = 16, seed: int = 0, scale: float = 0.5, layers: int = 2) -> Uni1Model:
    """A random float64 Uni1Model over a vocabulary of 20 + num_codes ids."""
    cfg = ModelConfig(vocab_size=CODE_OFFSET + num_codes, hidden_size=16, intermediate_size=32,
                      num_hidden_layers=layers, num_attention_heads=2, num_key_value_heads=1,
                      max_position_embeddings=256)
    model = Uni1Model(cfg).to(torch.float64).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.state_dict().items():     # Hugging Face names and order: views, written in place
            noise = torch.randn(p.shape, generator=g, dtype=torch.float64)
            if "norm" in name:
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return model


PROMPTS = [[7, 8, 9], [10, 11], [12, 13, 14, 15, 16]]
POLICY = SamplingPolicy(cfg_scale=2.5, top_k=8)
RUNS = [("ar", "maximal", None), ("sjd", "maximal", None), ("sjd", "maximal", 4),
        ("sjd_coupled", "maximal", None), ("sjd_coupled", "gumbel", None), ("sjd_coupled", "maximal", 7)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def vocab():
    return tiny_vocab(16)


@pytest.fixture(scope="module")
def grid():
    return ImageGrid(32, 32)        # 4 x 4 codes, stream of 21 tokens


def greedy_by_full_forwards(model, vocab, grid, prompt, policy):
    """Reference decode: every token from full, uncached forwards of the cond and uncond rows."""
    from uni1_core.policy import forced_sub_ids, image_logits, sub_vocab_ids
    header, sub = grid.header_ids(vocab), sub_vocab_ids(vocab)
    g, forced, stream = policy.guidance(grid), forced_sub_ids(grid, vocab), []
    with torch.no_grad():
        for k in range(grid.stream_len):
            c = image_logits(model(torch.tensor([prompt + header + stream]))[:, -1], vocab)
            u = image_logits(model(torch.tensor([header + stream]))[:, -1], vocab)
            stream.append(int(sub[policy.probs(c, u, torch.tensor([k]), g, forced).argmax(-1)]))
    return grid.codes_from_stream(torch.tensor(stream), vocab)


@pytest.mark.parametrize("conditioned", [False, True])
def test_greedy_ar_equals_uncached_decoding(model, vocab, conditioned):
    cond = torch.randint(0, vocab.num_codes, (2, 4), generator=torch.Generator().manual_seed(1))
    grid = ImageGrid(32, 32, prefix_codes=cond if conditioned else None)
    greedy = POLICY.replace(top_k=1)
    ar = sample_codes(model, vocab, grid, PROMPTS, mode="ar", policy=greedy, seeds=[0, 1, 2])
    for b in range(3):
        assert torch.equal(ar.codes[b], greedy_by_full_forwards(model, vocab, grid, PROMPTS[b], greedy))


def test_greedy_modes_equal_ar(model, vocab, grid):
    greedy = POLICY.replace(top_k=1)
    ar = sample_codes(model, vocab, grid, PROMPTS, mode="ar", policy=greedy, seeds=[0, 1, 2])
    for mode, coupling, window in RUNS[1:]:
        out = sample_codes(model, vocab, grid, PROMPTS, mode=mode, coupling=coupling, window=window,
                           policy=greedy, seeds=[5, 6, 7])
        assert torch.equal(out.codes, ar.codes), (mode, coupling, window)
        assert out.stats.forwards < ar.stats.forwards, "greedy drafts should be accepted in runs"


def test_codes_and_streams_follow_the_grid(model, vocab, grid):
    out = sample_codes(model, vocab, grid, PROMPTS, mode="sjd_coupled", policy=POLICY, seeds=[3, 4, 5])
    assert out.codes.shape == (3, grid.rows, grid.cols) and out.codes.dtype == torch.long
    assert out.streams.shape == (3, grid.stream_len)
    for b in range(3):
        assert torch.equal(grid.codes_from_stream(out.streams[b], vocab), out.codes[b])
    # top-k 8 of 16: only codes in the top 8 at their position can appear; at least check range
    assert int(out.codes.min()) >= 0 and int(out.codes.max()) < vocab.num_codes


@pytest.mark.parametrize("mode,coupling,window", RUNS)
def test_batch_independence(model, vocab, grid, mode, coupling, window):
    """An image's tokens depend on its own seed and prompt only, not on its batch mates."""
    kw = dict(mode=mode, coupling=coupling, window=window, policy=POLICY)
    batch = sample_codes(model, vocab, grid, PROMPTS, seeds=[11, 12, 13], **kw)
    alone = sample_codes(model, vocab, grid, [PROMPTS[1]], seeds=[12], **kw)
    assert torch.equal(alone.codes[0], batch.codes[1])
    mates = sample_codes(model, vocab, grid, [PROMPTS[2], PROMPTS[1]], seeds=[99, 12], **kw)
    assert torch.equal(mates.codes[1], batch.codes[1])
    other_seed = sample_codes(model, vocab, grid, [PROMPTS[1]], seeds=[13], **kw)
    assert not torch.equal(other_seed.codes[0], batch.codes[1])


class RecordingModel(torch.nn.Module):
    """Wraps the model and records the cache lengths, n_valid and ids of every call."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []
        self.new_cache = inner.new_cache

    @property
    def device(self):
        return self.inner.device

    def forward(self, ids, cache=None, n_valid=None, tree=None):
        self.calls.append((cache.lengths.clone(), n_valid.clone(), ids.clone()))
        return self.inner(ids, cache=cache, n_valid=n_valid, tree=tree)


def test_cache_holds_exactly_the_committed_prefix(model, vocab, grid):
    """Before every window forward, each row's cache holds its prompt, the header and the
    committed stream tokens except the last one, which is the window's first input."""
    header, S = grid.header_ids(vocab), grid.stream_len
    rec = RecordingModel(model)
    out = sample_codes(rec, vocab, grid, PROMPTS, mode="sjd_coupled", policy=POLICY, seeds=[1, 2, 3], window=6)
    base = torch.tensor([len(p) + 3 for p in PROMPTS] + [3, 3, 3]) - 1      # cond rows, uncond rows
    lengths0, n0, _ = rec.calls[0]
    assert lengths0.tolist() == [0] * 6 and n0.tolist() == base.tolist()     # the prefill
    committed = [lengths - base for lengths, _, _ in rec.calls[1:]]
    for (lengths, n_valid, ids), done in zip(rec.calls[1:], committed):
        assert torch.equal(done[:3], done[3:])                                 # cond and uncond rows agree
        for b in range(3):
            k = int(done[b])
            if k < S:
                assert int(ids[b, 0]) == (header[-1] if k == 0 else int(out.streams[b, k - 1]))
                assert torch.equal(ids[b, :n_valid[b]], ids[b + 3, :n_valid[b]])
                assert int(n_valid[b]) == min(6, S - k)
            else:
                assert int(n_valid[b]) == 0
    assert committed[0].tolist() == [0] * 6
    for before, after in zip(committed, committed[1:]):
        step = (after - before)[:3]
        active = before[:3] < S
        assert ((step >= 1) & (step <= 6))[active].all() and (step[~active] == 0).all()
    assert out.stats.forwards == len(rec.calls) - 1 and out.stats.prefill_forwards == 1
    hist = out.stats.accepted_hist               # a branch hit commits one token more
    assert sum((a + 1) * c for a, c in enumerate(hist)) + out.stats.branch_hits == 3 * S


def test_cancel_then_rerun_equals_clean_run(model, vocab, grid):
    clean = sample_codes(model, vocab, grid, PROMPTS, mode="sjd", policy=POLICY, seeds=[7, 8, 9])
    calls = []

    def cancel_on_fourth():
        calls.append(1)
        return len(calls) == 4

    with pytest.raises(Cancelled, match="cancelled after"):
        sample_codes(model, vocab, grid, PROMPTS, mode="sjd", policy=POLICY, seeds=[7, 8, 9],
                     should_cancel=cancel_on_fourth)
    assert len(calls) == 4                       # stopped before the 4th forward (prefill + 2 windows)
    again = sample_codes(model, vocab, grid, PROMPTS, mode="sjd", policy=POLICY, seeds=[7, 8, 9])
    assert torch.equal(again.codes, clean.codes)


def test_condition_rows_are_prefilled_and_kept(model, vocab):
    """Image-conditioned requests: the condition's rows are forced; they are committed with the
    prefill (no forward each), and every mode agrees with ar on the rest under greedy decoding."""
    cond = torch.randint(0, vocab.num_codes, (2, 4), generator=torch.Generator().manual_seed(1))
    grid = ImageGrid(32, 32, prefix_codes=cond)
    greedy = POLICY.replace(top_k=1)
    ar = sample_codes(model, vocab, grid, PROMPTS[:2], mode="ar", policy=greedy, seeds=[0, 1])
    assert torch.equal(ar.codes[:, :2], cond.expand(2, 2, 4))
    free = grid.stream_len - 2 * (grid.cols + 1)
    assert ar.stats.forwards == free and ar.stats.image_tokens == free
    for mode, coupling, window in RUNS[1:]:
        out = sample_codes(model, vocab, grid, PROMPTS[:2], mode=mode, coupling=coupling, window=window,
                           policy=greedy, seeds=[0, 1])
        assert torch.equal(out.codes, ar.codes), (mode, coupling, window)
    sampled = sample_codes(model, vocab, grid, PROMPTS[:2], mode="sjd_coupled", policy=POLICY, seeds=[0, 1])
    assert torch.equal(sampled.codes[:, :2], cond.expand(2, 2, 4))


def test_progress_and_preview(model, vocab, grid):
    progress, previews = [], []
    out = sample_codes(model, vocab, grid, PROMPTS[:2], mode="sjd_coupled", policy=POLICY, seeds=[1, 2],
                       on_progress=lambda done, total: progress.append((done, total)),
                       on_preview=lambda codes, done: previews.append((codes.clone(), done.clone())))
    total = 2 * grid.stream_len
    assert progress[-1] == (total, total) and all(t == total for _, t in progress)
    assert [d for d, _ in progress] == sorted(d for d, _ in progress) and len(progress) == out.stats.forwards
    codes, done = previews[-1]
    assert done.all() and torch.equal(codes, out.codes)
    for codes, done in previews:                   # drawn cells already hold their final code
        assert torch.equal(codes[done], out.codes[done]) and (codes[~done] == 0).all()


def test_statistics(model, vocab, grid):
    ar = sample_codes(model, vocab, grid, PROMPTS, mode="ar", policy=POLICY, seeds=[0, 1, 2])
    s = ar.stats
    assert s.mode == "ar" and s.forwards == grid.stream_len and s.forwards_per_token == 1.0
    assert s.image_tokens == grid.stream_len and s.accepted_hist == [3 * grid.stream_len]
    assert s.residual_fallbacks == 0 and s.seconds > 0 and s.per_image_forwards == [grid.stream_len] * 3
    sjd = sample_codes(model, vocab, grid, PROMPTS, mode="sjd", policy=POLICY, seeds=[0, 1, 2]).stats
    assert len(sjd.accepted_hist) == 16 and sjd.forwards == max(sjd.per_image_forwards)
    assert sjd.forwards_per_token < 1.0
    # the JSON of --stats-json: every field, in a fixed order, and nothing that json cannot write
    assert list(json.loads(json.dumps(sjd.to_dict()))) == [
        "mode", "window", "coupling", "batch", "forwards", "prefill_forwards", "image_tokens", "regions",
        "branches", "accepted_hist", "residual_fallbacks", "branch_hits", "per_image_forwards",
        "forwards_per_token", "per_image_forwards_per_token", "seconds", "tokens_per_second"]


def test_no_cfg_skips_the_unconditional_rows(model, vocab, grid):
    rec = RecordingModel(model)
    sample_codes(rec, vocab, grid, PROMPTS, mode="sjd", policy=POLICY.replace(cfg_scale=1.0), seeds=[0, 1, 2])
    assert all(ids.shape[0] == 3 for _, _, ids in rec.calls)


def test_residual_fallback_is_counted_and_stays_in_support():
    p = torch.tensor([[0.5, 0.5, 0.0], [0.2, 0.3, 0.5]])
    q = torch.tensor([[0.5, 0.5, 0.0], [0.1, 0.3, 0.6]])
    law, bad = sampler_mod.residual_distribution(p, q)
    assert bad.tolist() == [True, False]
    assert torch.equal(law[0], p[0])                                   # fell back to p, zero stays zero
    torch.testing.assert_close(law[1], torch.tensor([0.1, 0.0, 0.0]))
    nan = torch.tensor([[float("nan"), 0.5, 0.5]])
    assert sampler_mod.residual_distribution(nan, nan)[1].tolist() == [True]


def test_sample_from_never_picks_zero_weight():
    w = torch.tensor([0.0, 0.3, 0.0, 0.7, 0.0]).expand(5, 5)
    u = torch.tensor([0.0, 0.299999, 0.3001, 0.9999999999, 1 - 2.0 ** -53], dtype=torch.float64)
    assert sampler_mod.sample_from(w, u).tolist() == [1, 1, 3, 3, 3]


def test_random_numbers_are_keyed_not_streamed():
    seeds = torch.tensor([3, 4])
    pos = torch.tensor([[0, 1, 2], [0, 1, 2]])
    u = sampler_mod.random_uniform(seeds, pos, torch.tensor([0, 0]), sampler_mod.ACCEPT)
    again = sampler_mod.random_uniform(seeds[1:], pos[1:], torch.tensor([0]), sampler_mod.ACCEPT)
    assert torch.equal(u[1], again[0]) and not torch.equal(u[0], u[1])
    assert ((u >= 0) & (u < 1)).all()
    other = sampler_mod.random_uniform(seeds, pos, torch.tensor([1, 1]), sampler_mod.ACCEPT)
    assert not torch.equal(u, other)
    many = sampler_mod.random_uniform(torch.tensor([0]), torch.arange(20000)[None], 0, 1)
    assert abs(float(many.mean()) - 0.5) < 0.01 and abs(float(many.var()) - 1 / 12) < 0.005


# ---------------------------------------------------------------------------------------------
# Regional guidance

def test_region_weights_geometry():
    g = TinyGrid(4, 8)
    w = region_weights([(0.0, 0.0, 0.5, 1.0), (0.25, 0.25, 0.75, 0.75)], g, feather=0)
    assert w.shape == (2, 4, 8)
    assert w[0, :, :4].eq(1).all() and w[0, :, 4:].eq(0).all()
    assert w[1, 1:3, 2:6].eq(1).all() and w[1].sum() == 8
    soft = region_weights([(0.0, 0.0, 0.5, 1.0)], g, feather=2.0)
    assert soft[0, 0, 3] == 0.75 and soft[0, 0, 4] == 0.25 and soft[0, 0, 0] == 1 and soft[0, 0, 7] == 0
    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 1"):
        region_weights([(0.5, 0.0, 0.2, 1.0)], g)


def region_model(vocab):
    """A Uni1Model whose branch decides the code set: the row's first token 7 -> codes 0..3,
    8 -> codes 4..7, 9 (global) -> codes 8..11. Built by hand: the embedding of the first token
    is carried to every position through attention (keys favour slot 0), and the head reads it."""
    cfg = ModelConfig(vocab_size=CODE_OFFSET + vocab.num_codes, hidden_size=8, intermediate_size=8,
                      num_hidden_layers=1, num_attention_heads=1, num_key_value_heads=1, max_position_embeddings=64)
    m = Uni1Model(cfg).to(torch.float64).eval()
    with torch.no_grad():
        for p in m.parameters():
            p.zero_()
        emb = m.model.embed_tokens.weight
        emb[:, 7] = 1.0                                     # a constant channel for every token
        for tok, ch in [(7, 0), (8, 1), (9, 2)]:
            emb[tok, ch] = 4.0
        layer = {k.removeprefix("model.layers.0."): v for k, v in m.state_dict().items()}   # views: written in place
        layer["input_layernorm.weight"].fill_(1.0)
        layer["post_attention_layernorm.weight"].fill_(1.0)
        # attention: values copy channels 0..2; every query attends mostly to the branch token
        layer["self_attn.v_proj.weight"][:3, :3] = torch.eye(3)
        layer["self_attn.o_proj.weight"][:3, :3] = torch.eye(3) * 8
        # keys large where a branch channel is set; dimension 3 is the slowest RoPE frequency,
        # so the match barely depends on the distance
        layer["self_attn.k_proj.weight"][3, :3] = 4.0
        layer["self_attn.q_proj.weight"][3, 7] = 4.0
        layer["self_attn.q_norm.weight"].fill_(1.0)
        layer["self_attn.k_norm.weight"].fill_(1.0)
        m.model.norm.weight.fill_(1.0)
        head = m.lm_head.weight
        for ch, codes in [(0, range(0, 4)), (1, range(4, 8)), (2, range(8, 12))]:
            for c in codes:
                head[CODE_OFFSET + c, ch] = 5.0
    return m


def test_tokens_inside_a_box_follow_its_branch():
    vocab = tiny_vocab(12)
    model = region_model(vocab)
    grid = TinyGrid(4, 8)
    policy = SamplingPolicy(cfg_scale=1.0, top_k=None, region_feather=0.0)
    regions = [[([7], (0.0, 0.0, 0.5, 1.0)), ([8], (0.5, 0.5, 1.0, 1.0))]]
    for mode, coupling in [("ar", "maximal"), ("sjd", "maximal"), ("sjd_coupled", "gumbel")]:
        out = sample_codes(model, vocab, grid, [[9]], mode=mode, coupling=coupling, policy=policy, seeds=[3],
                           regions=regions).codes[0]
        left, bottom_right, top_right = out[:, :4], out[2:, 4:], out[:2, 4:]
        assert (left < 4).all(), (mode, out)
        assert ((bottom_right >= 4) & (bottom_right < 8)).all(), (mode, out)
        assert (top_right >= 8).all(), (mode, out)
        plain = sample_codes(model, vocab, grid, [[9]], mode=mode, coupling=coupling, policy=policy,
                             seeds=[3]).codes[0]
        assert (plain >= 8).all()


# ---------------------------------------------------------------------------------------------
# Input errors

def test_bad_inputs_are_clear_errors(model, vocab, grid):
    with pytest.raises(ValueError, match="mode 'fast' is unknown"):
        sample_codes(model, vocab, grid, PROMPTS, mode="fast")
    with pytest.raises(ValueError, match="one seed per image"):
        sample_codes(model, vocab, grid, PROMPTS, seeds=[1])
    with pytest.raises(ValueError, match="one token per forward"):
        sample_codes(model, vocab, grid, PROMPTS, mode="ar", window=4)
    with pytest.raises(ValueError, match="unknown sampling preset"):
        sample_codes(model, vocab, grid, PROMPTS, policy="best")
    with pytest.raises(ValueError, match=r"each region must be \(prompt_ids, \(x0, y0, x1, y1\)\)"):
        sample_codes(model, vocab, grid, PROMPTS[:1], regions=[[[7, 8]]])
    with pytest.raises(ValueError, match="0 <= x0 < x1 <= 1"):
        sample_codes(model, vocab, grid, PROMPTS[:1], regions=[[([7], (0.5, 0, 0.2, 1))]])
    with pytest.raises(ValueError, match=r"one \(or None\) per image"):
        sample_codes(model, vocab, grid, PROMPTS[:2], regions=[None])
    with pytest.raises(ValueError, match="coupling 'x' is unknown"):
        sample_codes(model, vocab, grid, PROMPTS, mode="sjd_coupled", coupling="x")


def test_direct_callers_get_the_request_limits(model, vocab, grid):
    """sample_codes itself (not only the pipeline) maps every widget seed to its int64 twin,
    clamps an oversized window and refuses a prompt longer than the model's positions."""
    from uni1_core.sequence import PromptTooLong
    run = lambda **kw: sample_codes(model, vocab, grid, [[7, 8]], mode="sjd", policy=SamplingPolicy(cfg_scale=1.0), **kw)
    top = run(seeds=[2**64 - 1])
    assert torch.equal(top.codes, run(seeds=[-1]).codes)
    assert torch.equal(run(seeds=[0], window=10**6).codes, run(seeds=[0], window=grid.stream_len).codes)
    too_long = [7] * model.config.max_position_embeddings
    with pytest.raises(PromptTooLong, match="prompt"):
        sample_codes(model, vocab, grid, [too_long], mode="ar", policy=SamplingPolicy(cfg_scale=1.0))
