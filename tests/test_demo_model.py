"""The shipped demo model: a complete model folder in the real layout that follows prompts."""

import json
import random
from pathlib import Path

import torch

from training.world import random_scene, render_batch
from uni1_core.geneval import detect
from uni1_core.movq import MoVQ, tensor_to_pil
from uni1_core.pipeline import Uni1Pipeline
from uni1_core.sequence import ImageGrid, t2i_prompt_ids

DEMO = Path(__file__).resolve().parent.parent / "uni1_core" / "demo_model"
FILES = ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "movq.safetensors")


def test_folder_layout_and_size():
    for name in FILES:
        assert (DEMO / name).is_file(), name
    total = sum((DEMO / name).stat().st_size for name in FILES)
    assert total <= 30 * 2**20, f"demo model is {total / 2**20:.1f} MB, the budget is 30 MB"
    config = json.loads((DEMO / "config.json").read_text())
    assert config["model_type"] == "chameleon"
    uni1 = config["uni1"]
    assert uni1["image_token_offset"] + uni1["num_image_codes"] <= config["vocab_size"]
    assert [64, 64] in uni1["sizes"]


def test_real_sequence_format():
    pipe = Uni1Pipeline.from_pretrained("demo")
    tok, vocab = pipe.tokenizer, pipe.vocab
    for name in ("<racm3:break>", "<eoss>", "<reserved08706>", "<reserved08799>", "<reserved08802>"):
        assert tok.token_to_id(name) is not None, name
    ids = t2i_prompt_ids(tok, "A red circle.", 64, 64)
    assert tok.decode(ids[1:]) == "Generate an image of 64x64 according to the following prompt:\nA red circle.<reserved08706>"
    assert ImageGrid(64, 64).header_ids(vocab)[1:] == [tok.token_to_id("<reserved08802>")] * 2
    movq = pipe.load_movq()
    assert movq.num_codes == vocab.num_codes and movq.downsample_factor == 8


def test_movq_keeps_the_objects():
    """Round trip through the shipped tokenizer: the evaluator still finds most scenes' objects."""
    movq = MoVQ.from_pretrained(DEMO)
    rng = random.Random(2024)
    scenes = [random_scene(rng) for _ in range(40)]
    images = torch.from_numpy(render_batch(scenes, 64))
    decoded = tensor_to_pil(movq.decode(movq.encode(images), max_batch=40).clamp(-1, 1))
    same = sum(
        sorted((d.shape, d.colour) for d in detect(img)) == sorted((o.shape, o.colour) for o in s.objects)
        for s, img in zip(scenes, decoded)
    )
    assert same >= 0.6 * len(scenes), f"only {same}/{len(scenes)} scenes survive the MoVQ round trip"


def test_follows_simple_prompts():
    """The asked colour is drawn in most samples, and a shape is drawn far more often than chance.
    (An untrained model draws noise; the committed one measured 12-14 of 16 for the colours and
    9 of 16 for the green triangle.)"""
    pipe = Uni1Pipeline.from_pretrained("demo")
    movq = pipe.load_movq()
    # the pipeline samples with the settings the folder recommends (config.json "uni1.default_policy")
    policy = pipe.default_policy
    assert policy.cfg_scale == pipe.model.config.raw["uni1"]["default_policy"]["cfg_scale"]
    for prompt, colour, shape, min_shape in [("a red circle", "red", "circle", 0),
                                             ("a blue square", "blue", "square", 0),
                                             ("a green triangle", "green", "triangle", 5)]:
        gen = pipe.sample(prompt, seeds=list(range(16)), mode="sjd_coupled", policy=policy)
        found = [detect(img) for img in tensor_to_pil(movq.decode(gen.codes, max_batch=16).clamp(-1, 1))]
        right_colour = sum(any(d.colour == colour for d in ds) for ds in found)
        both = sum(any(d.colour == colour and d.shape == shape for d in ds) for ds in found)
        assert right_colour >= 9, f"{prompt!r}: the colour in only {right_colour}/16 samples"
        assert both >= min_shape, f"{prompt!r}: a {colour} {shape} in only {both}/16 samples"
