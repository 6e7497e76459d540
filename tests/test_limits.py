"""Issue 16: every request the sampler cannot serve is a fast, clear error; every seed works.

Each refusal asserts its message and a time bound well under a second (measured in-process, so
Python's and torch's start-up are not counted). The fuzz tests run the command line over its
whole argument space with the sampling loop replaced by a stub of the same shape, so that each
example costs milliseconds; the end-to-end cases at the bottom sample for real.
"""
import json
import re
import time

import pytest
import torch
from PIL import Image

from uni1_core import cli, pipeline
from uni1_core.checkpoint import CheckpointError
from uni1_core.limits import (MAX_BATCH, SEED_MAX, SEED_MIN, RequestError, batch_seeds, clamp_window,
                              is_out_of_memory, resolve_device, seed_to_int64)
from uni1_core.pipeline import Uni1Pipeline
from uni1_core.sampler import SampleResult, SampleStats, sample_codes
from uni1_core.sequence import ImageGrid, PromptTooLong, check_positions, t2i_prompt_ids
# the fake ComfyUI and the tiny model folder of the node tests (fixtures and a helper only)
from tests.test_nodes import comfy, run_sampler, tiny  # noqa: F401

FAST = 0.5     # seconds: the bound on every refusal


class Timer:
    def __init__(self, bound=FAST):
        self.bound = bound

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start
        assert self.seconds < self.bound, f"took {self.seconds:.2f} s (bound {self.bound} s)"


def refused(fn, *args, error=ValueError, match, **kwargs):
    """fn(*args) raises `error` matching `match`, within the time bound."""
    with Timer(), pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.fixture(scope="module")
def folder(tiny_model_folder):
    return tiny_model_folder          # read-only (conftest.py); a test that edits it copies it


@pytest.fixture(scope="module")
def pipe(folder):
    return Uni1Pipeline.from_pretrained(str(folder))


@pytest.fixture(scope="module")
def demo():
    return Uni1Pipeline.from_pretrained("demo")


# ----------------------------------------------------------------------------- seeds

def test_seed_to_int64_is_twos_complement_and_leaves_small_seeds_alone():
    for s in (0, 1, 12345, 2 ** 63 - 1, -5, SEED_MIN):
        assert seed_to_int64(s) == s
    assert seed_to_int64(2 ** 63) == SEED_MIN
    assert seed_to_int64(SEED_MAX) == seed_to_int64(-1) == -1
    assert seed_to_int64(2 ** 64 - 2) == -2
    assert seed_to_int64(7.0) == 7 and seed_to_int64(torch.tensor(9)) == 9
    for bad, words in ((2 ** 64, "out of range"), (SEED_MIN - 1, "out of range"), (1.5, "not a whole number"),
                       ("7", "not a whole number"), (True, "not a whole number")):
        refused(seed_to_int64, bad, match=words)


def test_batch_seeds_count_modulo_2_64_like_the_widget():
    assert batch_seeds(5, 3) == [5, 6, 7]
    assert batch_seeds(SEED_MAX, 2) == [SEED_MAX, 0]
    assert batch_seeds(-1, 2) == [SEED_MAX, 0]
    assert batch_seeds(2 ** 63 - 1, 2) == [2 ** 63 - 1, 2 ** 63]
    refused(batch_seeds, 0, MAX_BATCH + 1, match=f"batch {MAX_BATCH + 1} is out of range: ask for 1 to {MAX_BATCH}")
    refused(batch_seeds, 0, 0, match="batch 0 is out of range")


def test_every_seed_works_and_is_reproducible(pipe):
    """Seeds at and past 2^63 sample (they failed with 'Overflow when unpacking long long'), each
    is the same image alone or batched and on a rerun, -1 is 2^64-1, and seeds below 2^63 give
    exactly the images they gave before (the sampler is called with the seed unchanged)."""
    kw = dict(mode="sjd", window=8, use_plan=False)
    big = [2 ** 63 - 1, 2 ** 63, 2 ** 64 - 1]
    batch = pipe.sample("a red circle", 64, 64, seeds=big, **kw).codes
    assert not torch.equal(batch[0], batch[1]) and not torch.equal(batch[1], batch[2])
    for i, s in enumerate(big):
        assert torch.equal(pipe.sample("a red circle", 64, 64, seeds=[s], **kw).codes[0], batch[i])
    assert torch.equal(pipe.sample("a red circle", 64, 64, seeds=[-1], **kw).codes[0], batch[2])
    assert torch.equal(pipe.sample("a red circle", 64, 64, seeds=[2 ** 63], **kw).codes[0],
                       pipe.sample("a red circle", 64, 64, seeds=[SEED_MIN], **kw).codes[0])
    # below 2^63: the pipeline's image is the sampler's for the unchanged seed
    grid = ImageGrid(64, 64)
    ids = t2i_prompt_ids(pipe.tokenizer, "a red circle", 64, 64)
    direct = sample_codes(pipe.model, pipe.vocab, grid, [ids], mode="sjd", window=8, seeds=[2 ** 62 + 7],
                          policy=pipe.default_policy)
    assert torch.equal(pipe.sample("a red circle", 64, 64, seeds=[2 ** 62 + 7], **kw).codes, direct.codes)


# ----------------------------------------------------------------------------- window, branches, batch

def test_window_is_clamped_to_the_stream_and_changes_no_token(pipe, monkeypatch):
    """A window of 100,000 on a 41-token image allocated 100,000 draft slots (2.9 GB, 24 s on the
    demo); it now runs as the stream's length, token for token the same."""
    grid = ImageGrid(32, 64)
    seen = []
    real = pipeline.sample_codes
    monkeypatch.setattr(pipeline, "sample_codes", lambda *a, **k: seen.append(k["window"]) or real(*a, **k))
    kw = dict(mode="sjd", seeds=[3, 4], use_plan=False)
    huge = pipe.sample("a blue square", 32, 64, window=100_000, **kw)
    exact = pipe.sample("a blue square", 32, 64, window=grid.stream_len, **kw)
    assert seen == [grid.stream_len, grid.stream_len] == [41, 41]
    assert torch.equal(huge.codes, exact.codes)
    assert clamp_window(None, 41) is None and clamp_window(5, 41) == 5
    refused(clamp_window, 0, 41, match="window 0 is out of range: a draft window is 1 or more")


def test_pipeline_bounds_batch_branches_and_window(pipe):
    kw = dict(use_plan=False)
    refused(pipe.sample, "x", seeds=range(MAX_BATCH + 1), match=f"batch {MAX_BATCH + 1} is out of range", **kw)
    refused(pipe.sample, "x", branches=100_000, match="branches 100000 is out of range: 0 to ", **kw)
    refused(pipe.sample, "x", branches=-1, match="branches -1 is out of range", **kw)
    refused(pipe.sample, "x", window=-3, match="window -3 is out of range", **kw)
    refused(pipe.sample, "x", seeds=[2 ** 64], match="seed 18446744073709551616 is out of range", **kw)


# ----------------------------------------------------------------------------- prompt length

@pytest.mark.parametrize("prompt", ["x" * 100_000, "a red circle to the left of " * 4000, "<eoss>" * 50_000,
                                    "y" * 10_000_000])
def test_long_prompts_are_refused_before_any_allocation(demo, prompt):
    """100k characters became 36k tokens against the demo's 256 positions and a 10.6 GB
    allocation; now a message after tokenizing only what it takes to know."""
    refused(demo.sample, prompt, use_plan=False, error=PromptTooLong,
            match=r"the prompt is (at least )?\d+ tokens \(template included\) and a 64x64 image takes 76 more, "
                  r"but this model has 256 positions \(max_position_embeddings\): shorten it to at most 180 tokens")


def test_each_region_prompt_is_checked_too(demo, monkeypatch):
    from uni1_core.plan import Plan, make_plan
    plan = make_plan("a red circle")
    monkeypatch.setattr(Plan, "regions", lambda self: [("a red circle", (0, 0, 0.5, 0.5)),
                                                       ("x" * 50_000, (0.5, 0.5, 1, 1))])
    refused(demo.sample, plan, regional=True, error=PromptTooLong,
            match=r"region 1 \('xxxx.*'\) is at least \d+ tokens .* shorten it to at most 180 tokens")


def test_the_longest_prompt_that_fits_is_accepted(demo):
    """The limit is exact: the longest prompt that fits is sampled (here: accepted, then
    cancelled at the first check), one word more is refused."""
    from uni1_core.sampler import Cancelled
    n = max(k for k in range(1, 200) if len(t2i_prompt_ids(demo.tokenizer, "a " * k, 64, 64)) <= 180)
    with pytest.raises(Cancelled):
        demo.sample("a " * n, use_plan=False, should_cancel=lambda: True)
    refused(demo.sample, "a " * (n + 1), use_plan=False, error=PromptTooLong, match="181 tokens")
    refused(check_positions, 1, ImageGrid(1024, 1024), 256, error=PromptTooLong, match="no prompt fits")


def test_encode_with_max_tokens_stops_early_but_never_undercounts():
    from tests.tiny_model_folder import build_tokenizer
    tok = build_tokenizer()
    text = "two red circles and a blue square " * 50
    full = tok.encode(text)
    for limit in (0, 5, len(full) - 1):
        assert len(tok.encode(text, max_tokens=limit)) > limit
    assert tok.encode(text, max_tokens=len(full)) == full
    assert tok.encode(text, max_tokens=10 * len(full)) == full


# ----------------------------------------------------------------------------- devices

def test_devices_are_checked_by_name():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(None).type in ("cpu", "cuda")
    refused(resolve_device, "bogus", match="unknown device 'bogus': use cpu, cuda, cuda:N or mps")
    refused(resolve_device, "meta", match="device 'meta' is not available here")
    if not torch.cuda.is_available():
        refused(resolve_device, "cuda", match="device 'cuda': (this PyTorch .* was built without CUDA|PyTorch sees "
                                              "no CUDA GPU)")
        refused(Uni1Pipeline.from_pretrained, "demo", device="cuda", match="device 'cuda'")
    else:
        refused(resolve_device, "cuda:999", match="CUDA GPU")


def test_out_of_memory_is_recognised_in_each_form():
    assert is_out_of_memory(MemoryError())
    assert is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"))
    assert is_out_of_memory(RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't "
                                         "allocate memory: you tried to allocate 21474836480 bytes"))
    assert not is_out_of_memory(RuntimeError("selected index k out of range"))


# ----------------------------------------------------------------------------- config.json "uni1"

@pytest.mark.parametrize("uni1,words", [
    ([], "value must be a JSON object"),
    ({"default_preset": "bogus"}, "'default_preset' 'bogus' is not a preset; choose one of uni1"),
    ({"default_preset": 3}, "'default_preset'"),
    ({"default_policy": {"cfg_scale": "high"}}, "'default_policy' is invalid"),
    ({"default_policy": {"temperature": 0}}, "'default_policy' is invalid: temperature must be > 0"),
    ({"default_policy": {"bogus": 1}}, r"'default_policy' has unknown settings \['bogus'\]"),
    ({"default_policy": [1]}, "'default_policy' must be an object"),
    ({"sizes": "64x64"}, "'sizes' must be a non-empty list of \\[width, height\\] pairs"),
    ({"sizes": []}, "'sizes' must be a non-empty list"),
    ({"sizes": [[0, 64]]}, "'sizes' must be"),
    ({"sizes": [[48, 64]]}, "'sizes' must be .* each a positive multiple of 32 pixels; got \\[\\[48, 64\\]\\]"),
    ({"sizes": [[64, 64]], "default_size": [32, 32]}, "'default_size' \\[32, 32\\] must be one of its sizes"),
    ({"i2i_sizes": [[64]]}, "'i2i_sizes' must be"),
    ({"num_image_codes": -1}, "'num_image_codes' must be a whole number >= 1"),
    ({"image_token_offset": "x"}, "'image_token_offset' must be a whole number"),
    ({"grounding": {"grid": 0}}, "'grounding' must be an object with a positive whole 'grid'"),
])
def test_bad_uni1_section_is_a_message(folder, tmp_path, uni1, words):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    config = json.loads((bad / "config.json").read_text())
    config["uni1"] = uni1 if not isinstance(uni1, dict) else {**config["uni1"], **uni1}
    (bad / "config.json").write_text(json.dumps(config))
    refused(Uni1Pipeline.from_pretrained, str(bad), error=CheckpointError,
            match=r"config.json: the 'uni1' section's " + words)


# ----------------------------------------------------------------------------- the command line

def run_cli(argv, capsys, bound=FAST):
    """(exit code, stderr) of the command line, within the time bound."""
    with Timer(bound):
        try:
            rc = cli.main(argv)
        except SystemExit as e:       # argparse's own refusals
            rc = e.code
    return rc, capsys.readouterr().err


def _no_sampling(*args, **kwargs):
    raise AssertionError("sampled although the request should have been refused first")


@pytest.mark.parametrize("extra,words", [
    (["--preset", "bogus"], "unknown preset 'bogus': choose one of uni1, lumina_ar, lumina_sjd"),
    (["--device", "bogus"], "unknown device 'bogus'"),
    (["--device", "meta"], "device 'meta' is not available"),
    (["--branches", "100000"], "branches 100000 is out of range: 0 to 64"),
    (["--branches", "-1"], "branches -1 is out of range"),
    (["--batch", "10000"], "batch 10000 is out of range: ask for 1 to 64"),
    (["--batch", "0"], "batch 0 is out of range"),
    (["--window", "0"], "window 0 is out of range"),
    (["--seed", str(2 ** 64)], "seed 18446744073709551616 is out of range"),
    (["--seed", str(SEED_MIN - 1)], "is out of range"),
    (["--cfg", "nan"], "cfg_scale must be a finite number"),
    (["--temperature", "0"], "temperature must be > 0"),
    (["--top-p", "2"], "top_p must be in"),
    (["--top-k", "0"], "top_k must be >= 1"),
    (["--regional", "--no-plan"], "--regional guides each planned object's box, so it needs the plan"),
    (["--prompt", ""], "the prompt is empty: say what to draw"),
    (["--prompt", " \n\t "], "the prompt is empty"),
    (["--out", "{tmp}"], "is a folder; give a file name"),
    (["--out", "{tmp}/a_file/x.png"], "a_file is a file, so no folder can be made there"),
    (["--out", "{tmp}/x.txt"], "cannot save a .txt image; end the name in .png"),
    (["--out", "{tmp}/x"], "cannot save a extension-less image"),
    (["--stats-json", "{tmp}"], "--stats-json .* is a folder"),
    (["--movq", "{tmp}/missing.safetensors"], "--movq file .*missing.safetensors does not exist"),
    (["--movq", "{tmp}"], "--movq .* is a folder; give the weights file"),
    (["--movq", "{tmp}/a_file"], "^error: .*a_file"),          # the loader's own message, before sampling
    (["--size", "0x0"], "size '0x0' has a side of 0 or less"),
    (["--size=-64x64"], "has a side of 0 or less"),
    (["--size", "64"], "size must look like 768x768"),
] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "device 'cuda': .*CUDA")]))
def test_cli_refuses_bad_arguments_before_sampling(folder, tmp_path, capsys, monkeypatch, extra, words):
    (tmp_path / "a_file").write_text("not weights")
    monkeypatch.setattr(pipeline, "sample_codes", _no_sampling)
    extra = [e.replace("{tmp}", str(tmp_path)) for e in extra]
    argv = ["generate", "--prompt", "a red circle", "--out", str(tmp_path / "x.png"), "--model", str(folder),
            "--quiet", *extra]
    # a --movq file that exists is only found unreadable when loaded, after the model (demo: ~0.2 s)
    rc, err = run_cli(argv, capsys, bound=5.0 if extra[-1].endswith("a_file") else FAST)
    assert rc == 2
    assert re.search(words, err), err
    assert "Traceback" not in err


def test_cli_plan_refuses_a_blank_prompt(capsys):
    rc, err = run_cli(["plan", "--prompt", "   "], capsys)
    assert rc == 2 and "the prompt is empty" in err


@pytest.mark.parametrize("src,dst,words", [
    ("{tmp}/missing.ckpt", "{tmp}/out.safetensors", "convert-movq: .*missing.ckpt is not a file"),
    ("{tmp}", "{tmp}/out.safetensors", "is not a file"),
    ("{tmp}/a_file", "{tmp}", "convert-movq destination .* is a folder"),
    ("{tmp}/a_file", "{tmp}/a_file/out.safetensors", "a_file is a file, so no folder can be made there"),
])
def test_cli_convert_movq_checks_its_paths_first(tmp_path, capsys, src, dst, words):
    (tmp_path / "a_file").write_text("x")
    rc, err = run_cli(["convert-movq", src.replace("{tmp}", str(tmp_path)), dst.replace("{tmp}", str(tmp_path))],
                      capsys)
    assert rc == 2 and re.search(words, err), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]          # nothing written


def test_cli_long_prompt_is_a_message(capsys, tmp_path):
    """Refused once the tokenizer is loaded (with the model: the bound allows the demo's load;
    the refusal itself is timed in test_long_prompts_are_refused_before_any_allocation)."""
    rc, err = run_cli(["generate", "--no-plan", "--prompt", "x" * 100_000, "--out", str(tmp_path / "x.png"),
                       "--quiet"], capsys, bound=5.0)
    assert rc == 2 and "shorten it to at most 180 tokens" in err and not (tmp_path / "x.png").exists()


@pytest.mark.parametrize("error", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB"),
                                   MemoryError(),
                                   RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                                                "allocate 21474836480 bytes")])
def test_cli_out_of_memory_is_a_message(folder, tmp_path, capsys, monkeypatch, error):
    def oom(*args, **kwargs):
        raise error
    monkeypatch.setattr(pipeline, "sample_codes", oom)
    rc, err = run_cli(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "x.png"),
                       "--model", str(folder), "--quiet"], capsys, bound=5.0)     # a model load, then OOM
    assert rc == 2 and err.startswith("error: out of memory") and "smaller --batch" in err


def test_cli_other_runtime_errors_still_raise(folder, tmp_path, monkeypatch):
    def bug(*args, **kwargs):
        raise RuntimeError("an internal bug")
    monkeypatch.setattr(pipeline, "sample_codes", bug)
    with pytest.raises(RuntimeError, match="an internal bug"):
        cli.main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "x.png"), "--model", str(folder),
                  "--quiet"])


def test_cli_big_seeds_end_to_end(tmp_path, capsys):
    """The issue's command line: --seed 9223372036854775807 --batch 2 (the second image's seed is
    2^63). Then -1 and 2^64-1 draw the same image."""
    out = tmp_path / "big.png"
    rc = cli.main(["generate", "--prompt", "a red circle", "--out", str(out), "--seed", "9223372036854775807",
                   "--batch", "2", "--mode", "sjd", "--window", "8", "--quiet"])
    assert rc == 0
    first, second = (Image.open(tmp_path / f"big_{i}.png") for i in range(2))
    assert first.size == second.size == (64, 64) and first.tobytes() != second.tobytes()
    images = []
    for seed in ("-1", str(SEED_MAX)):
        path = tmp_path / f"s{seed}.png"
        assert cli.main(["generate", "--prompt", "a red circle", "--out", str(path), "--seed", seed,
                         "--mode", "sjd", "--window", "8", "--quiet"]) == 0
        images.append(Image.open(path).tobytes())
    assert images[0] == images[1]
    assert "wrote" in capsys.readouterr().out


# ----------------------------------------------------------------------------- the sampler node

def test_node_takes_every_widget_seed_and_bounds_the_batch(comfy, tiny):
    """The widget offers 0 .. 2^64-1 (2^63 and up failed with 'Overflow when unpacking long
    long'); -1 from an API workflow wraps to 2^64-1; batch image i is seed + i modulo 2^64."""
    def codes(**changes):
        return run_sampler(tiny, prompt="a red circle", mode="sjd", window=8, **changes)["result"][0].codes
    last = codes(seed=SEED_MAX, batch_size=2)
    for seed, index in ((-1, 0), (0, 1)):
        assert torch.equal(codes(seed=seed)[0], last[index])
    assert codes(seed=2 ** 63).shape == (1, 8, 8)
    with Timer(), pytest.raises(ValueError, match=f"batch {MAX_BATCH + 1} is out of range"):
        run_sampler(tiny, prompt="a red circle", batch_size=MAX_BATCH + 1)
    with Timer(), pytest.raises(ValueError, match="seed 18446744073709551616 is out of range"):
        run_sampler(tiny, prompt="a red circle", seed=2 ** 64)


# ----------------------------------------------------------------------------- fuzz

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies


def _fake_sample_codes(model, vocab, grid, cond_prompts, **kwargs):
    """The sampler's result shape for this request, at once (the fuzz checks what comes before
    and after sampling: arguments, model, plan, prompt, limits, decode, files)."""
    B = len(cond_prompts)
    codes = torch.zeros(B, grid.rows, grid.cols, dtype=torch.long)
    stats = SampleStats(mode=kwargs.get("mode"), window=kwargs.get("window") or 1, coupling=None, batch=B,
                        image_tokens=grid.stream_len, regions=0, branches=0, forwards=1,
                        forwards_per_token=1 / grid.stream_len)
    return SampleResult(codes=codes, streams=torch.zeros(B, grid.stream_len, dtype=torch.long), stats=stats)


def _number_text(values):
    return st.one_of(st.sampled_from(values), st.integers(-10 ** 20, 10 ** 20).map(str),
                     st.floats(allow_nan=True, allow_infinity=True).map(repr), st.text(max_size=6))


ARGS = {
    "--seed": _number_text(["0", "-1", str(SEED_MAX), str(2 ** 63), str(2 ** 64)]),
    "--batch": _number_text(["1", "2", "0", "64", "65", "10000"]),
    "--mode": st.sampled_from(["ar", "sjd", "sjd_coupled", "bogus"]),
    "--window": _number_text(["1", "8", "0", "100000"]),
    "--coupling": st.sampled_from(["maximal", "gumbel", "x"]),
    "--branches": _number_text(["0", "4", "63", "64", "100000"]),
    "--preset": st.sampled_from(["uni1", "lumina_ar", "lumina_sjd", "bogus", ""]),
    "--cfg": _number_text(["1", "2.5", "-1", "nan", "inf"]),
    "--temperature": _number_text(["1", "0", "0.5", "-1"]),
    "--top-k": _number_text(["1", "0", "4096", str(10 ** 12)]),
    "--top-p": _number_text(["0.9", "0", "1", "2"]),
    "--size": st.one_of(st.sampled_from(["64x64", "0x0", "32x64", "768x768", "64X64", "x", "-64x64",
                                         "99999999999x1"]), st.text(max_size=8)),
    "--device": st.sampled_from(["cpu", "cuda", "cuda:7", "mps", "meta", "bogus", ""]),
    "--dtype": st.sampled_from(["auto", "float32", "bfloat16", "int8"]),
    "--out": st.sampled_from(["x.png", "sub/dir/x.png", "x.jpg", "x.txt", "", ".", "a_file/x.png"]),
    "--movq": st.sampled_from(["{demo}/movq.safetensors", "missing.safetensors", ".", "a_file"]),
    "--prompt": st.one_of(st.sampled_from(["a red circle", "two blue squares above a green triangle", "", " ",
                                           "x" * 3000]), st.text(max_size=40)),
}
FLAGS = ["--no-plan", "--regional", "--quiet"]


@st.composite
def command_lines(draw):
    if draw(st.integers(0, 9)) == 0:                   # now and then the plan command
        return ["plan", "--prompt", draw(ARGS["--prompt"])]
    chosen = draw(st.lists(st.sampled_from(sorted(ARGS)), unique=True, max_size=8))
    argv = ["generate"]
    for name in chosen:
        argv += [name, draw(ARGS[name])]
    if "--prompt" not in chosen:
        argv += ["--prompt", "a red circle"]
    if "--out" not in chosen:
        argv += ["--out", "x.png"]
    return argv + draw(st.lists(st.sampled_from(FLAGS), unique=True))


@hypothesis.settings(max_examples=150, deadline=None, database=None,
                     suppress_health_check=list(hypothesis.HealthCheck))
@hypothesis.given(argv=command_lines())
def test_fuzz_cli_arguments_never_traceback(demo, tmp_path_factory, monkeypatch_session, argv):
    """Any command line ends in an image (exit 0) or a message (exit 2): never a traceback."""
    work = tmp_path_factory.mktemp("fuzz")
    (work / "a_file").write_text("not weights")
    demo_dir = str(demo.model_dir)
    argv = [a.replace("{demo}", demo_dir) if a.startswith("{demo}") else
            (str(work / a) if i and argv[i - 1] in ("--out", "--movq") and a and a != "." else a)
            for i, a in enumerate(argv)]
    try:
        rc = cli.main(argv)
    except SystemExit as e:        # argparse: a usage message and exit 2
        rc = e.code
    hypothesis.event(f"exit {rc}")
    assert rc in (0, 2), argv


@pytest.fixture(scope="module")
def monkeypatch_session(demo):
    """Sampling stubbed (see _fake_sample_codes) and the demo model loaded once for the fuzz."""
    mp = pytest.MonkeyPatch()
    mp.setattr(pipeline, "sample_codes", _fake_sample_codes)
    mp.setattr(pipeline.Uni1Pipeline, "from_pretrained", classmethod(lambda cls, *a, **k: demo))
    yield mp
    mp.undo()
