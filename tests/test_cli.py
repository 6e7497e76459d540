"""The command line and the pipeline on a complete tiny model folder (the same files as a release)."""
import json

import pytest
import torch
from PIL import Image

from tests.tiny_model_folder import build
from uni1_core.cli import main
from uni1_core.pipeline import Uni1Pipeline

STATS_KEYS = {"mode", "forwards", "image_tokens", "forwards_per_token", "seconds", "residual_fallbacks"}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return build(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def pipe(folder):
    return Uni1Pipeline.from_pretrained(str(folder))


@pytest.mark.parametrize("mode", ["ar", "sjd", "sjd_coupled"])
def test_generate_writes_png_and_stats(folder, tmp_path, capsys, mode):
    out, stats = tmp_path / "img.png", tmp_path / "stats.json"
    rc = main(["generate", "--prompt", "two red circles to the left of a blue square", "--out", str(out),
               "--seed", "3", "--mode", mode, "--stats-json", str(stats), "--model", str(folder), "--quiet"])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "plan:" in printed and f"wrote {out}" in printed
    assert Image.open(out).size == (64, 64)
    data = json.loads(stats.read_text())
    assert STATS_KEYS <= set(data) and data["mode"] == mode
    assert data["image_tokens"] == 8 * 9 + 1
    assert data["forwards_per_token"] == pytest.approx(data["forwards"] / data["image_tokens"])
    if mode == "ar":
        assert data["forwards"] == data["image_tokens"]
    assert data["branches"] == (4 if mode == "sjd_coupled" else 0)


def test_generate_branches_flag(folder, tmp_path):
    stats = tmp_path / "stats.json"
    assert main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "img.png"), "--branches", "0",
                 "--stats-json", str(stats), "--model", str(folder), "--quiet"]) == 0
    data = json.loads(stats.read_text())
    assert data["branches"] == 0 and data["branch_hits"] == 0


@pytest.mark.parametrize("flag,expected", [("--compile", True), ("--no-compile", False), (None, None)])
def test_generate_compile_flag_reaches_the_sampler(folder, tmp_path, monkeypatch, flag, expected):
    import uni1_core.pipeline as pipeline
    seen, sample_codes = [], pipeline.sample_codes

    def recording(*args, compile=None, **kwargs):
        seen.append(compile)
        return sample_codes(*args, compile=False, **kwargs)       # no real compilation here
    monkeypatch.setattr(pipeline, "sample_codes", recording)
    argv = ["generate", "--prompt", "a red circle", "--out", str(tmp_path / "img.png"), "--mode", "ar",
            "--model", str(folder), "--quiet"]
    assert main(argv + ([flag] if flag else [])) == 0
    assert seen == [expected]


def test_generate_batch_and_no_plan(folder, tmp_path, capsys):
    out = tmp_path / "b.png"
    assert main(["generate", "--prompt", "a cat", "--out", str(out), "--batch", "2", "--no-plan",
                 "--model", str(folder), "--size", "32x64", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "plan:" not in printed
    assert Image.open(tmp_path / "b_0.png").size == (32, 64) and (tmp_path / "b_1.png").exists()


def test_unsupported_size_is_a_clear_error(folder, tmp_path, capsys):
    rc = main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), "--model", str(folder),
               "--size", "96x96", "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "unsupported resolution 96x96" in err and "64x64" in err


def test_missing_model_is_a_clear_error(tmp_path, capsys):
    rc = main(["generate", "--prompt", "x", "--out", str(tmp_path / "x.png"), "--model", str(tmp_path / "nope")])
    assert rc == 2 and "nope" in capsys.readouterr().err


def test_plan_command_prints_plan_json(capsys):
    assert main(["plan", "--prompt", "three green triangles above a red star"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert {"version", "subjects", "relations", "layout"} <= set(plan)
    assert any(s["noun"] == "triangle" and s["count"] == 3 for s in plan["subjects"])


def test_convert_movq_round_trip(folder, tmp_path, capsys):
    from uni1_core.movq import MoVQ
    movq = MoVQ.from_pretrained(folder / "movq.safetensors")
    ckpt = tmp_path / "movq.ckpt"
    torch.save({"state_dict": movq.state_dict(), "loss.logvar": torch.zeros(())}, ckpt)
    dst = tmp_path / "movq.safetensors"
    assert main(["convert-movq", str(ckpt), str(dst)]) == 0
    again = MoVQ.from_pretrained(dst)
    codes = torch.randint(0, movq.num_codes, (1, 4, 4))
    assert torch.equal(movq.decode(codes), again.decode(codes))


def test_pipeline_is_deterministic_per_seed_and_batch_independent(pipe):
    a = pipe.sample("a blue square", seeds=[5], mode="sjd")
    b = pipe.sample("a blue square", seeds=[7, 5], mode="sjd")
    assert torch.equal(a.codes[0], b.codes[1])
    # this folder declares no grounding: by default the model reads the prompt (plus the plan's
    # statements, none here), and "plan" gives the canonical sentence
    assert pipe.default_conditioning == "prompt+plan"
    assert a.plan is not None and a.conditioning == "a blue square"
    c = pipe.sample("a blue square", seeds=[5], mode="sjd", conditioning="plan")
    assert c.conditioning == a.plan.conditioning_text() == "A blue square."


def test_a_grounded_model_gets_the_snapped_layout_in_its_prompt(tmp_path, capsys):
    folder = build(tmp_path / "grounded", grounding={"grid": 8, "min_cells": 2, "max_cells": 4})
    pipe = Uni1Pipeline.from_pretrained(str(folder))
    gen = pipe.sample("two red circles to the left of a blue square", seeds=[0], mode="ar")
    assert gen.plan.layout == gen.plan.on_grid(8, 2, 4).layout      # the layout the prompt names
    assert gen.conditioning == gen.plan.conditioning_text(grounding=8)
    assert pipe.conditioning(pipe.plan("two red circles to the left of a blue square"))[1] == gen.conditioning
    assert gen.conditioning.endswith("Layout: two red circles (1), a blue square (2).\n00000000\n01110000\n"
                                     "01110222\n01110222\n00000222\n01110000\n01110000\n01110000\n")
    plain = pipe.sample("two red circles to the left of a blue square", seeds=[0], mode="ar", grounded=False)
    assert plain.conditioning == "Two red circles are to the left of a blue square."
    # the command line prints the text the model was conditioned on
    assert main(["generate", "--prompt", "a blue square", "--out", str(tmp_path / "g.png"), "--model", str(folder),
                 "--quiet"]) == 0
    assert "conditioning: A blue square. Layout: a blue square (1).\n00000000\n00000000\n00111100\n" in capsys.readouterr().out


def test_pipeline_cancel_leaves_it_usable(pipe):
    from uni1_core.sampler import Cancelled
    calls = {"n": 0}

    def cancel_after_three():
        calls["n"] += 1
        return calls["n"] > 3

    with pytest.raises(Cancelled):
        pipe.sample("a red circle", seeds=[1], mode="ar", should_cancel=cancel_after_three)
    clean = pipe.sample("a red circle", seeds=[1], mode="ar")
    again = pipe.sample("a red circle", seeds=[1], mode="ar")
    assert torch.equal(clean.codes, again.codes)


def test_pipeline_refuses_unknown_mode_and_regional_without_plan(pipe):
    with pytest.raises(ValueError, match="unknown mode"):
        pipe.sample("x", mode="fast")
    with pytest.raises(ValueError, match="regional guidance needs a plan"):
        pipe.sample("x", use_plan=False, regional=True)


def test_pipeline_regional_and_condition(pipe):
    r = pipe.sample("a red circle to the left of a blue square", seeds=[0], regional=True)
    assert r.stats.regions >= 2
    cond = torch.randint(0, 32, (4, 8))
    out = pipe.sample("a dog", 64, 64, seeds=[0], condition=cond, task="depth")
    assert torch.equal(out.codes[0, :4], cond)


def test_release_sizes_and_omni_panel_sizes(tmp_path):
    """Without a size list in config.json the release's rules hold: 73 text-to-image sizes, and
    the Omni reference's 512x1024 panel for image-conditioned requests."""
    from uni1_core.sampler import Cancelled
    from uni1_core.sequence import SizeError
    pipe = Uni1Pipeline.from_pretrained(str(build(tmp_path / "release_like", sizes=None, max_positions=16384)))
    assert len(pipe.sizes) == 73 and pipe.default_size == (768, 768) and pipe.i2i_sizes == [(512, 1024)]
    stop = dict(should_cancel=lambda: True, use_plan=False)
    with pytest.raises(SizeError, match="512x1024"):
        pipe.sample("x", 512, 1024, **stop)                       # not a text-to-image size
    with pytest.raises(Cancelled):                                # accepted, then cancelled
        pipe.sample("x", 512, 1024, condition=torch.zeros(64, 64, dtype=torch.long), **stop)
    with pytest.raises(SizeError, match="512x1024"):
        pipe.sample("x", 768, 768, condition=torch.zeros(48, 96, dtype=torch.long), **stop)
