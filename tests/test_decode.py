"""uni1_core.decode: the static-shape decode step, its host syncs, torch.compile and the fallback.

The static step without torch.compile runs the same code that the compiler traces, so the
exactness checks use it (fast); one test compiles for real (tiny float64 model, one bucket),
and the distribution test (test_sampler_distribution.py) has a compiled variant.
"""
from __future__ import annotations

import contextlib
import logging

import pytest
import torch

from tests.test_sampler import POLICY, PROMPTS, RUNS, TinyGrid, tiny_model
from tests.test_sampler import model, vocab  # noqa: F401  (the same module-scoped fixtures)
from uni1_core import decode
from uni1_core.sampler import sample_codes

# Tensor methods that copy a device value to the host, i.e. wait for the device: on CUDA each
# is a synchronisation. (`x[bool_mask]` and similar C++-side syncs are not seen here; the sampler
# step uses integer indices only, and on CUDA torch.cuda.set_sync_debug_mode sees those too.)
SYNC_METHODS = ("item", "tolist", "__int__", "__float__", "__bool__", "__index__", "nonzero", "cpu", "numpy")


@contextlib.contextmanager
def count_host_syncs():
    """Count calls of SYNC_METHODS on any tensor while the block runs: yields a list [count]."""
    count = [0]
    saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}

    def counting(original):
        def method(*args, **kwargs):
            count[0] += 1
            return original(*args, **kwargs)
        return method
    try:
        for name, original in saved.items():
            setattr(torch.Tensor, name, counting(original))
        yield count
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


@pytest.fixture
def uncompiled_static(monkeypatch):
    """compile=True takes the static step without calling torch.compile (the traced code, run eagerly)."""
    monkeypatch.setattr(decode, "static_forward", lambda model: decode.StaticForward(model, compile=False))


@pytest.mark.parametrize("kv", [None, "int8"])
@pytest.mark.parametrize("tree", [None, [-1, 0, 1, 0, 0, 1]])
@torch.inference_mode()
def test_static_forward_equals_the_model_forward(model, tree, kv):
    """Same logits and the same cache writes as Uni1Model.forward, for ragged rows, padding and a
    tree, with a float cache and with an int8 one."""
    ids = torch.randint(20, 36, (3, 6), generator=torch.Generator().manual_seed(0))
    prompt = torch.randint(7, 20, (3, 5), generator=torch.Generator().manual_seed(1))
    n_valid = torch.tensor([6, 3, 6])
    caches = []
    for forward in (model, decode.StaticForward(model, compile=False)):
        cache = model.new_cache(3, decode.cache_len(20), dtype=kv)
        model(prompt, cache=cache, n_valid=torch.tensor([5, 2, 4]))
        logits = forward(ids, cache=cache, n_valid=n_valid, tree=tree)
        caches.append((logits, cache))
    (want, eager), (got, static) = caches
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)
    assert torch.equal(static.lengths, eager.lengths)
    for b, n in enumerate(eager.lengths.tolist()):
        torch.testing.assert_close(static.k[:, b, :, :n], eager.k[:, b, :, :n], rtol=0, atol=1e-12)


@pytest.mark.parametrize("mode,coupling,window", RUNS)
def test_static_step_gives_the_same_tokens(model, vocab, uncompiled_static, mode, coupling, window):
    """Full windows to the stream's end (static shapes) change no token and no forward count."""
    grid = TinyGrid(4, 5)
    kw = dict(mode=mode, coupling=coupling, window=window, policy=POLICY, seeds=[5, 11, 99])
    eager = sample_codes(model, vocab, grid, PROMPTS, compile=False, **kw)
    static = sample_codes(model, vocab, grid, PROMPTS, compile=True, **kw)
    assert torch.equal(static.codes, eager.codes)
    assert static.stats.forwards == eager.stats.forwards
    assert static.stats.accepted_hist == eager.stats.accepted_hist


def syncs_per_step(model, vocab, **kw) -> list[int]:
    """Host syncs between consecutive on_progress calls (one call per forward)."""
    marks = []
    with count_host_syncs() as count:
        sample_codes(model, vocab, TinyGrid(4, 5), PROMPTS, policy=POLICY, seeds=[1, 2, 3],
                     on_progress=lambda done, total: marks.append(count[0]), **kw)
    return [b - a for a, b in zip(marks, marks[1:])]


@pytest.mark.parametrize("mode,coupling", [("ar", "maximal"), ("sjd", "maximal"), ("sjd_coupled", "maximal"),
                                           ("sjd_coupled", "gumbel")])
def test_one_host_sync_per_step(model, vocab, uncompiled_static, mode, coupling):
    steps = syncs_per_step(model, vocab, mode=mode, coupling=coupling, compile=True)
    assert len(steps) > 3 and max(steps) <= 1, steps
    # the counter sees syncs: the eager model forward reads its cache plan on the host
    eager = syncs_per_step(model, vocab, mode=mode, coupling=coupling, compile=False)
    assert min(eager) >= 2, eager


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA's sync debug mode needs a GPU")
def test_one_device_sync_per_step_on_cuda(vocab):
    """On CUDA, torch's own sync detector (which also sees syncs inside C++ ops) between steps."""
    import warnings
    model = tiny_model().to("cuda")
    marks = []

    def syncs(caught):
        return sum("synchroniz" in str(w.message) for w in caught)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            sample_codes(model, vocab, TinyGrid(4, 5), PROMPTS, mode="sjd_coupled", policy=POLICY, seeds=[1, 2, 3],
                         compile=True, on_progress=lambda done, total: marks.append(syncs(caught)))
        finally:
            torch.cuda.set_sync_debug_mode(0)
    steps = [b - a for a, b in zip(marks, marks[1:])]
    assert len(steps) > 3 and max(steps) <= 1, steps


def test_compiled_step_gives_the_same_tokens(model, vocab):
    """torch.compile for real (one bucket: sjd_coupled, window 6 + 4 branches): greedy and sampled."""
    grid = TinyGrid(4, 5)
    kw = dict(mode="sjd_coupled", window=6, seeds=[5, 11, 99])
    for policy in (POLICY.replace(top_k=1), POLICY):
        eager = sample_codes(model, vocab, grid, PROMPTS, policy=policy, compile=False, **kw)
        compiled = sample_codes(model, vocab, grid, PROMPTS, policy=policy, compile=True, **kw)
        assert torch.equal(compiled.codes, eager.codes)
    assert decode.static_forward(model).compiled, "torch.compile fell back: the test compiled nothing"
    steps = syncs_per_step(model, vocab, compile=True, mode="sjd_coupled", window=6)
    assert max(steps) <= 1, steps


def test_a_failing_compiler_falls_back_with_one_log_line(model, vocab, monkeypatch, caplog):
    def broken_compile(fn, **kwargs):
        def run(*args):
            raise RuntimeError("no C compiler found\nmore details")
        return run
    monkeypatch.setattr(decode.torch, "compile", broken_compile)
    monkeypatch.setattr(decode, "_FORWARDS", decode.weakref.WeakKeyDictionary())
    grid = TinyGrid(4, 5)
    kw = dict(mode="sjd_coupled", policy=POLICY, seeds=[0, 1, 2])
    with caplog.at_level(logging.WARNING, logger="uni1"):
        out = sample_codes(model, vocab, grid, PROMPTS, compile=True, **kw)
        again = sample_codes(model, vocab, grid, PROMPTS, compile=True, **kw)
    lines = [r.getMessage() for r in caplog.records if r.name == "uni1"]
    assert len(lines) == 1 and "no C compiler found" in lines[0] and "uncompiled" in lines[0], lines
    eager = sample_codes(model, vocab, grid, PROMPTS, compile=False, **kw)
    assert torch.equal(out.codes, eager.codes) and torch.equal(again.codes, eager.codes)


def test_compile_is_on_by_default_for_cuda_only():
    assert decode.default_compile(torch.device("cuda")) and not decode.default_compile(torch.device("cpu"))


def test_a_model_that_is_not_a_uni1model_runs_eagerly(model, vocab, caplog):
    from tests.test_sampler import RecordingModel
    rec = RecordingModel(model)
    with caplog.at_level(logging.WARNING, logger="uni1"):
        out = sample_codes(rec, vocab, TinyGrid(2, 3), PROMPTS, mode="sjd", policy=POLICY, compile=True)
    assert out.stats.forwards == len(rec.calls) - 1 and "not a Uni1Model" in caplog.text
