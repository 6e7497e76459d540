"""mini-GenEval evaluator, checked on images with known content drawn by the training world."""

import random

import numpy as np
import pytest
from PIL import Image, ImageFilter

from training.world import Background, WorldObject, random_scene, render, scene_from_objects
from bench.geneval import HUES, SHAPES, Detection, detect, evaluate, relations_between, score


def _truth(scene):
    return sorted((o.shape, o.colour) for o in scene.objects)


def _found(image):
    return sorted((d.shape, d.colour) for d in detect(image))


def test_world_palette_is_the_evaluators():
    from training.world import COLOURS, SHAPES as WORLD_SHAPES

    assert set(COLOURS) == set(HUES)
    assert set(WORLD_SHAPES) == set(SHAPES)


@pytest.mark.parametrize("size", [64, 96])
def test_detects_every_object_of_random_scenes(size):
    rng = random.Random(1234 + size)
    for _ in range(80):
        scene = random_scene(rng)
        assert _found(render(scene, size)) == _truth(scene)


def test_survives_blur_and_noise():
    rng = random.Random(7)
    noise = np.random.default_rng(7)
    for i in range(60):
        scene = random_scene(rng)
        image = render(scene, 64)
        if i % 2:
            image = image.filter(ImageFilter.GaussianBlur(0.8))
        else:
            a = np.asarray(image, dtype=np.float32) + noise.normal(0, 6, (64, 64, 3))
            image = Image.fromarray(a.clip(0, 255).astype(np.uint8))
        assert _found(image) == _truth(scene)


def test_empty_backgrounds_have_no_objects():
    rng = random.Random(3)
    for _ in range(20):
        scene = random_scene(rng)
        empty = scene_from_objects([], scene.background)
        assert detect(render(empty, 64)) == []


def test_detection_geometry():
    obj = WorldObject("square", "blue", "medium", (0.25, 0.25, 0.5, 0.5))
    (d,) = detect(render(scene_from_objects([obj]), 64))
    assert (d.shape, d.colour) == ("square", "blue")
    assert d.box == (16, 16, 32, 32)
    assert d.centre == (24.0, 24.0)
    assert d.area == 256


def _two(rel_a_box, rel_b_box, a=("circle", "red"), b=("square", "blue")):
    return render(
        scene_from_objects(
            [WorldObject(a[0], a[1], "medium", rel_a_box), WorldObject(b[0], b[1], "medium", rel_b_box)]
        ),
        64,
    )


LEFT, RIGHT = (0.05, 0.35, 0.33, 0.63), (0.62, 0.35, 0.9, 0.63)
TOP, BOTTOM = (0.35, 0.05, 0.63, 0.33), (0.35, 0.62, 0.63, 0.9)


@pytest.mark.parametrize(
    "a_box,b_box,relation",
    [(LEFT, RIGHT, "left of"), (RIGHT, LEFT, "right of"), (TOP, BOTTOM, "above"), (BOTTOM, TOP, "below")],
)
def test_position(a_box, b_box, relation):
    image = _two(a_box, b_box)
    for rel in ("left of", "right of", "above", "below"):
        meta = {
            "include": [
                {"class": "square", "count": 1, "color": "blue"},
                {"class": "circle", "count": 1, "color": "red", "position": [rel, 0]},
            ]
        }
        # the circle (a) relative to the square (b)
        assert evaluate(image, meta).correct == (rel == relation), rel


def test_relations_are_antisymmetric():
    rng = random.Random(11)
    opposite = {"left of": "right of", "right of": "left of", "above": "below", "below": "above"}
    for _ in range(200):
        boxes = [tuple(sorted(rng.uniform(0, 64) for _ in range(2))) for _ in range(4)]
        a = Detection("circle", "red", (boxes[0][0], boxes[1][0], boxes[0][1], boxes[1][1]), (0, 0), 1)
        a = Detection("circle", "red", a.box, ((a.box[0] + a.box[2]) / 2, (a.box[1] + a.box[3]) / 2), 1)
        b = Detection("square", "red", (boxes[2][0], boxes[3][0], boxes[2][1], boxes[3][1]), (0, 0), 1)
        b = Detection("square", "red", b.box, ((b.box[0] + b.box[2]) / 2, (b.box[1] + b.box[3]) / 2), 1)
        assert {opposite[r] for r in relations_between(a, b)} == relations_between(b, a)


def test_counting_is_exact():
    objs = [
        WorldObject("triangle", "green", "small", (x, 0.4, x + 0.2, 0.6)) for x in (0.05, 0.4, 0.75)
    ]
    image = render(scene_from_objects(objs), 64)
    for n in (1, 2, 3, 4):
        meta = {"include": [{"class": "triangle", "count": n}], "exclude": [{"class": "triangle", "count": n + 1}]}
        assert evaluate(image, meta).correct == (n == 3), n


def test_colour_and_attribution():
    image = _two(LEFT, RIGHT)  # red circle, blue square
    ok = {"include": [{"class": "circle", "count": 1, "color": "red"}, {"class": "square", "count": 1, "color": "blue"}]}
    swapped = {
        "include": [{"class": "circle", "count": 1, "color": "blue"}, {"class": "square", "count": 1, "color": "red"}]
    }
    assert evaluate(image, ok).correct
    verdict = evaluate(image, swapped)
    assert not verdict.correct and "blue circle" in verdict.reasons[0]
    assert evaluate(image, {"include": [{"class": "circle", "count": 1}, {"class": "square", "count": 1}]}).correct
    assert not evaluate(image, {"include": [{"class": "triangle", "count": 1}]}).correct


def test_every_colour_is_named_back():
    for colour in HUES:
        for shape in SHAPES:
            image = render(scene_from_objects([WorldObject(shape, colour, "large", (0.3, 0.3, 0.68, 0.68))]), 64)
            assert _found(image) == [(shape, colour)]


def test_dark_and_gradient_backgrounds():
    bg = Background((120, 118, 125), (240, 238, 230), "diagonal")
    objs = [WorldObject("circle", "purple", "small", (0.1, 0.1, 0.3, 0.3)), WorldObject("triangle", "yellow", "large", (0.5, 0.5, 0.88, 0.88))]
    assert _found(render(scene_from_objects(objs, bg), 64)) == [("circle", "purple"), ("triangle", "yellow")]


def test_bad_metadata_is_refused():
    image = _two(LEFT, RIGHT)
    with pytest.raises(ValueError, match="class must be one of"):
        evaluate(image, {"include": [{"class": "dog", "count": 1}]})
    with pytest.raises(ValueError, match="earlier entry"):
        evaluate(image, {"include": [{"class": "circle", "count": 1, "position": ["left of", 0]}]})
    with pytest.raises(ValueError, match="color must be one of"):
        evaluate(image, {"include": [{"class": "circle", "count": 1, "color": "teal"}]})
    with pytest.raises(ValueError, match="uint8"):
        detect(np.zeros((8, 8, 3), np.float32))


def test_score_is_mean_over_tags():
    s = score([("a", True), ("a", False), ("b", True)])
    assert s == {"a": 0.5, "b": 1.0, "overall": 0.75}


@pytest.mark.parametrize("side", [14, 20, 28])
def test_shapes_survive_rounding_and_blur(side):
    """A decoder rounds corners and softens edges: a rounded square is still a square, a blurred
    disc still a circle, a blunted triangle still a triangle."""
    from PIL import ImageDraw

    def drawn(shape):
        im = Image.new("RGB", (64, 64), (230, 230, 225))
        d = ImageDraw.Draw(im)
        box = (20, 20, 20 + side, 20 + side)
        if shape == "square":
            d.rounded_rectangle(box, radius=side * 0.3, fill=(40, 80, 220))
        elif shape == "circle":
            d.ellipse(box, fill=(40, 80, 220))
        else:
            d.polygon((20 + side / 2, 20 + side * 0.1, 20 + side, 20 + side, 20, 20 + side), fill=(40, 80, 220))
        return im.filter(ImageFilter.GaussianBlur(1.0))

    for shape in SHAPES:
        assert _found(drawn(shape)) == [(shape, "blue")], shape
