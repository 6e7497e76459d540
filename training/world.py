"""The procedural compositional world the demo model is trained on.

A scene is one to four flat-coloured shapes (circle, square, triangle) in six saturated colours
and three sizes, on a pale, low-saturation background (plain or a two-tone gradient). Objects are
squares of whole MoVQ code cells (2, 3 or 4 of the 8 cells across a 64 x 64 image) placed on
whole cells, with at least one free cell between any two. So every object is one connected blob
of one colour, which lets the deterministic evaluator in `bench/geneval.py` find it again,
and every code is one part of one shape rather than one of countless sub-cell offsets, which lets
a tiny transformer trained for minutes on a CPU draw crisp shapes.

Scenes are sampled the way prompts are written: a scene is made of *groups* ("two red circles",
"a blue square"), and two groups may be tied by a spatial relation ("... to the left of ...").
Each group keeps to its half of the image and the relation holds by the evaluator's (GenEval's)
rule, so a caption's "left of" means what the benchmark checks. The caption the model is trained
on is rendered from the scene by the planner (`training/train_transformer.py` builds the Plan),
so the model learns exactly the language the planner speaks at inference.

Everything is driven by a `random.Random`, so a seed fixes the whole data stream.
"""

from __future__ import annotations

import colorsys
import random
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

from bench.geneval import Detection, relations_between
from uni1_core.layout import cells_apart

SHAPES = ("circle", "square", "triangle")

# Saturated object colours: far apart in hue, so that colour names survive a lossy decode.
COLOURS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 215, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "purple": (140, 60, 200),
}

# The image is a grid of CELLS x CELLS MoVQ code cells (8 pixels each at 64 x 64). Objects are
# squares of whole cells placed on whole cells: then every code is one part of one shape (an
# interior, an arc, an edge) instead of one of countless sub-cell offsets, which is what lets a
# 3M-parameter transformer trained for minutes on a CPU draw crisp squares, discs and triangles.
CELLS = 8
# Object side length in cells.
SIZES = {"small": 2, "medium": 3, "large": 4}

RELATIONS = ("left of", "right of", "above", "below")

# Backgrounds stay pale and grey-ish (saturation <= 0.12, value >= 0.45) so that "saturated and
# bright" means "object" for the evaluator.
BACKGROUND_MAX_SATURATION = 0.12
BACKGROUND_VALUE_RANGE = (0.45, 0.97)


@dataclass(frozen=True)
class WorldObject:
    shape: str
    colour: str
    size: str
    box: tuple[float, float, float, float]  # x0, y0, x1, y1 in [0, 1], y down

    @property
    def centre(self) -> tuple[float, float]:
        x0, y0, x1, y1 = self.box
        return (x0 + x1) / 2, (y0 + y1) / 2


@dataclass(frozen=True)
class Group:
    """What one noun phrase of a prompt asks for: `count` objects of one shape, colour and size."""

    count: int
    shape: str
    colour: str
    size: str


@dataclass(frozen=True)
class Background:
    top_left: tuple[int, int, int]
    bottom_right: tuple[int, int, int]
    direction: str  # "plain", "vertical", "horizontal", "diagonal"


@dataclass(frozen=True)
class Scene:
    groups: tuple[Group, ...]
    objects: tuple[WorldObject, ...]  # in group order: group 0's objects first
    background: Background
    relation: tuple[str, int, int] | None = None  # (relation, subject group, reference group)
    group_of: tuple[int, ...] = field(default=())  # group index of each object


# ---------------------------------------------------------------------------------------------
# sampling


def random_background(rng: random.Random) -> Background:
    def tone() -> tuple[int, int, int]:
        h = rng.random()
        s = rng.uniform(0.0, BACKGROUND_MAX_SATURATION)
        v = rng.uniform(*BACKGROUND_VALUE_RANGE)
        r, g, b = colorsys.hsv_to_rgb(h, s, v)
        return round(r * 255), round(g * 255), round(b * 255)

    direction = rng.choice(("plain", "plain", "vertical", "horizontal", "diagonal"))
    first = tone()
    return Background(first, first if direction == "plain" else tone(), direction)


def random_groups(rng: random.Random, max_objects: int = 4) -> tuple[tuple[Group, ...], tuple[str, int, int] | None]:
    """One or two groups, at most `max_objects` objects, sometimes tied by a relation.

    The mix follows the GenEval categories: one object, two different objects, a counted group,
    and two single objects in a spatial relation.
    """
    kind = rng.choices(("single", "count", "pair", "relation", "count_pair"), weights=(2, 3, 3, 4, 2))[0]

    def group(count: int) -> Group:
        return Group(count, rng.choice(SHAPES), rng.choice(tuple(COLOURS)), rng.choice(tuple(SIZES)))

    if kind == "single":
        return (group(1),), None
    if kind == "count":
        return (group(rng.randint(2, max_objects)),), None
    if kind == "count_pair":
        n = rng.randint(1, max_objects - 1)
        a, b = group(n), group(rng.randint(1, max_objects - n))
    else:
        a, b = group(1), group(1)
    if (a.shape, a.colour) == (b.shape, b.colour):  # two groups must be told apart
        b = Group(b.count, b.shape, rng.choice([c for c in COLOURS if c != a.colour]), b.size)
    relation = None
    if kind == "relation" or (kind == "count_pair" and rng.random() < 0.5):
        relation = (rng.choice(RELATIONS), 0, 1)
    return (a, b), relation


def _region(relation: str, role: str) -> tuple[float, float, float, float]:
    """The half of the image (x0, y0, x1, y1) where a group's centres may fall under a relation."""
    subject_side = {"left of": "left", "right of": "right", "above": "top", "below": "bottom"}[relation]
    opposite = {"left": "right", "right": "left", "top": "bottom", "bottom": "top"}
    side = subject_side if role == "subject" else opposite[subject_side]
    return {
        "left": (0.0, 0.0, 0.5, 1.0),
        "right": (0.5, 0.0, 1.0, 1.0),
        "top": (0.0, 0.0, 1.0, 0.5),
        "bottom": (0.0, 0.5, 1.0, 1.0),
    }[side]


def _relation_holds(relation, boxes, group_of) -> bool:
    """Every subject object stands in the relation to every reference object by the evaluator's
    rule (GenEval's), so that a caption's "left of" is what the benchmark checks."""
    rel, subject, reference = relation
    # in cell units: the rule compares offsets with sizes, so the unit does not matter
    dets = [Detection("square", "red", b, ((b[0] + b[2]) / 2, (b[1] + b[3]) / 2), 0) for b in boxes]
    return all(rel in relations_between(dets[i], dets[j])
               for i in range(len(boxes)) if group_of[i] == subject
               for j in range(len(boxes)) if group_of[j] == reference)


def place_groups(
    rng: random.Random,
    groups: tuple[Group, ...],
    relation: tuple[str, int, int] | None,
) -> list[tuple[float, float, float, float]] | None:
    """Boxes on whole cells for every object, a free cell between any two; under a relation each
    group keeps to its half and the relation holds by the evaluator's rule.

    Returns None when the objects do not fit (the caller then draws another scene).
    """
    cells: list[tuple[int, int, int, int]] = []
    group_of: list[int] = []
    for gi, g in enumerate(groups):
        region = (0.0, 0.0, 1.0, 1.0)
        if relation is not None and gi in relation[1:]:
            region = _region(relation[0], "subject" if gi == relation[1] else "reference")
        k = SIZES[g.size]
        for _ in range(g.count):
            free = []
            for y in range(CELLS - k + 1):
                for x in range(CELLS - k + 1):
                    cx, cy = (x + k / 2) / CELLS, (y + k / 2) / CELLS
                    box = (x, y, x + k, y + k)  # exclusive end: the object covers cells x .. x + k - 1
                    inside = region[0] < cx < region[2] and region[1] < cy < region[3]
                    if inside and all(cells_apart(box, other) for other in cells):
                        free.append(box)
            if not free:
                return None
            cells.append(rng.choice(free))
            group_of.append(gi)
    if relation is not None and not _relation_holds(relation, cells, group_of):
        return None
    return [tuple(v / CELLS for v in box) for box in cells]


def random_scene(rng: random.Random, max_objects: int = 4) -> Scene:
    while True:
        groups, relation = random_groups(rng, max_objects)
        boxes = place_groups(rng, groups, relation)
        if boxes is None:
            continue
        objects, group_of = [], []
        it = iter(boxes)
        for gi, g in enumerate(groups):
            for _ in range(g.count):
                objects.append(WorldObject(g.shape, g.colour, g.size, next(it)))
                group_of.append(gi)
        return Scene(tuple(groups), tuple(objects), random_background(rng), relation, tuple(group_of))


def scene_from_objects(objects, background: Background | None = None) -> Scene:
    """A scene with exactly the given objects (one group per object): for evaluator tests."""
    objects = tuple(objects)
    groups = tuple(Group(1, o.shape, o.colour, o.size) for o in objects)
    background = background or Background((235, 235, 230), (235, 235, 230), "plain")
    return Scene(groups, objects, background, None, tuple(range(len(objects))))


# ---------------------------------------------------------------------------------------------
# rendering


def _background_array(bg: Background, n: int) -> np.ndarray:
    a = np.array(bg.top_left, dtype=np.float32)
    b = np.array(bg.bottom_right, dtype=np.float32)
    t = np.linspace(0.0, 1.0, n, dtype=np.float32)
    if bg.direction == "plain":
        w = np.zeros((n, n), np.float32)
    elif bg.direction == "vertical":
        w = np.repeat(t[:, None], n, axis=1)
    elif bg.direction == "horizontal":
        w = np.repeat(t[None, :], n, axis=0)
    elif bg.direction == "diagonal":
        w = (t[:, None] + t[None, :]) / 2
    else:
        raise ValueError(f"unknown background direction {bg.direction!r}: use plain, vertical, horizontal or diagonal")
    return a * (1 - w[..., None]) + b * w[..., None]


def _draw(draw: ImageDraw.ImageDraw, obj: WorldObject, n: int) -> None:
    x0, y0, x1, y1 = (v * n for v in obj.box)
    fill = COLOURS[obj.colour]
    if obj.shape == "circle":
        draw.ellipse((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "square":
        draw.rectangle((x0, y0, x1, y1), fill=fill)
    elif obj.shape == "triangle":  # apex up, base at the bottom
        draw.polygon(((x0 + x1) / 2, y0, x1, y1, x0, y1), fill=fill)
    else:
        raise ValueError(f"unknown shape {obj.shape!r}: use one of {SHAPES}")


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Image.Image:
    """The scene as an RGB image of size x size; drawn `supersample` times larger, then box-filtered
    down, so that edges are anti-aliased the same way at every size."""
    n = size * supersample
    canvas = Image.fromarray(_background_array(scene.background, n).round().clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for obj in scene.objects:
        _draw(draw, obj, n)
    return canvas.resize((size, size), Image.BOX) if supersample > 1 else canvas


def render_batch(scenes, size: int = 64) -> np.ndarray:
    """(B, 3, size, size) float32 in [-1, 1]: the MoVQ's pixel convention."""
    arrays = [np.asarray(render(s, size), dtype=np.float32) for s in scenes]
    return np.stack(arrays).transpose(0, 3, 1, 2) / 127.5 - 1.0
