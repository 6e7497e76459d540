"""The demo model's training world: objects on whole code cells, apart, relations as judged."""

import random

from training.world import CELLS, SIZES, random_scene, render
from bench.geneval import detect, relations_between


def _scenes(n, seed=11):
    rng = random.Random(seed)
    return [random_scene(rng) for _ in range(n)]


def test_objects_sit_on_whole_code_cells():
    for scene in _scenes(300):
        for obj, gi in zip(scene.objects, scene.group_of):
            cells = [v * CELLS for v in obj.box]
            assert all(abs(c - round(c)) < 1e-9 and 0 <= round(c) <= CELLS for c in cells), obj
            assert round(cells[2] - cells[0]) == round(cells[3] - cells[1]) == SIZES[scene.groups[gi].size]


def test_objects_keep_a_free_cell_between_them():
    for scene in _scenes(300):
        boxes = [[round(v * CELLS) for v in o.box] for o in scene.objects]
        for i, a in enumerate(boxes):
            for b in boxes[:i]:
                gap_x = max(b[0] - a[2], a[0] - b[2])  # free cells between them along x (negative: overlap)
                gap_y = max(b[1] - a[3], a[1] - b[3])
                assert max(gap_x, gap_y) >= 1, (a, b)


def test_relations_hold_by_the_evaluators_rule():
    """A caption's "left of" must be what mini-GenEval checks, on the rendered image."""
    checked = 0
    for scene in _scenes(600):
        if scene.relation is None:
            continue
        rel, subject, reference = scene.relation
        found = detect(render(scene, 64))
        assert len(found) == len(scene.objects)
        by_object = []
        for o in scene.objects:  # the detection of this object: same kind, nearest centre
            cx, cy = (v * 64 for v in o.centre)
            same = [d for d in found if (d.shape, d.colour) == (o.shape, o.colour)]
            by_object.append(min(same, key=lambda d: (d.centre[0] - cx) ** 2 + (d.centre[1] - cy) ** 2))
        for i, gi in enumerate(scene.group_of):
            for j, gj in enumerate(scene.group_of):
                if gi == subject and gj == reference:
                    assert rel in relations_between(by_object[i], by_object[j]), (scene, rel)
                    checked += 1
    assert checked > 100


def test_a_seed_fixes_the_scenes():
    assert _scenes(50, seed=5) == _scenes(50, seed=5)
    assert _scenes(50, seed=5) != _scenes(50, seed=6)
