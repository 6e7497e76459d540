"""mini-GenEval: a deterministic judge of whether an image shows what a prompt asked for.

GenEval (Ghosh et al. 2023) scores text-to-image faithfulness with an object detector. The demo
model's world is flat shapes in saturated colours on pale backgrounds, so here the detector is
plain image processing, with no learned part and no randomness:

1. pixels that are saturated and bright are "object" pixels; each gets the nearest named hue;
2. neighbouring object pixels whose hues are close are joined into blobs (a smooth hue drift
   inside one decoded object stays one blob, a hue jump between two touching objects does not);
3. each blob large enough is an object: its colour is its mean hue's name, its shape comes from
   two numbers of its mask (how much of its box it fills, and how much wider its bottom is than
   its top).

A prompt's requirements follow GenEval's metadata form (`include`: class, count, optional
color and position relative to an earlier entry; `exclude`: a class that must appear fewer than
`count` times), so the categories mean what they mean there: single object, two objects,
counting (exact count), colours, position, colour attribution.

It lives beside the benchmark it judges (`bench/geneval_mini.py`): only the benchmarks, the demo
model's training scripts (which check their scenes and reconstructions with it) and the tests use
it; the runtime package `uni1_core` never judges an image.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Named hues in degrees. The demo world draws exactly these colours; an image from another model
# is judged by the nearest name, like a person naming a colour.
HUES = {"red": 0.0, "orange": 32.0, "yellow": 53.0, "green": 129.0, "blue": 227.0, "purple": 274.0}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")

MIN_SATURATION = 0.40  # background is at most 0.12 in the world; anti-aliased rims fall between
MIN_VALUE = 0.35
JOIN_HUE_DEGREES = 22.0  # neighbours closer in hue than this belong to the same blob
MIN_AREA_FRACTION = 0.006  # blobs smaller than this share of the image are specks, not objects
POSITION_SLACK = 0.1  # as in GenEval: centre offsets shrink by this share of the two sizes


@dataclass(frozen=True)
class Detection:
    shape: str  # one of SHAPES, or "unknown"
    colour: str  # one of HUES
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels, inclusive-exclusive
    centre: tuple[float, float]  # x, y in pixels, y down
    area: int


@dataclass(frozen=True)
class Verdict:
    correct: bool
    reasons: tuple[str, ...]
    detections: tuple[Detection, ...]


# ---------------------------------------------------------------------------------------------
# detection


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue in degrees [0, 360), saturation and value in [0, 1], for an (H, W, 3) uint8 array."""
    x = rgb.astype(np.float32) / 255.0
    r, g, b = x[..., 0], x[..., 1], x[..., 2]
    v = x.max(-1)
    c = v - x.min(-1)
    s = np.where(v > 0, c / np.maximum(v, 1e-6), 0.0)
    safe = np.maximum(c, 1e-6)
    h = np.where(v == r, (g - b) / safe, np.where(v == g, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    h = (h * 60.0) % 360.0
    return h, s, v


def _hue_distance(a: np.ndarray, b: np.ndarray | float) -> np.ndarray:
    d = np.abs(a - b) % 360.0
    return np.minimum(d, 360.0 - d)


def _components(mask: np.ndarray, hue: np.ndarray) -> np.ndarray:
    """Label blobs: 4-neighbours join when both are object pixels with hues within JOIN_HUE_DEGREES.

    Minimum-label propagation, vectorised over the image; -1 marks background.
    """
    h, w = mask.shape
    labels = np.where(mask, np.arange(h * w).reshape(h, w), h * w)
    join_right = mask[:, :-1] & mask[:, 1:] & (_hue_distance(hue[:, :-1], hue[:, 1:]) < JOIN_HUE_DEGREES)
    join_down = mask[:-1, :] & mask[1:, :] & (_hue_distance(hue[:-1, :], hue[1:, :]) < JOIN_HUE_DEGREES)
    while True:
        new = labels.copy()
        right = np.minimum(labels[:, :-1], labels[:, 1:])
        new[:, :-1] = np.where(join_right, np.minimum(new[:, :-1], right), new[:, :-1])
        new[:, 1:] = np.where(join_right, np.minimum(new[:, 1:], right), new[:, 1:])
        down = np.minimum(labels[:-1, :], labels[1:, :])
        new[:-1, :] = np.where(join_down, np.minimum(new[:-1, :], down), new[:-1, :])
        new[1:, :] = np.where(join_down, np.minimum(new[1:, :], down), new[1:, :])
        # pointer jumping: follow each label to its own label, which shortens long chains
        flat = new.reshape(-1)
        valid = flat < h * w
        flat[valid] = flat[flat[valid]]
        if np.array_equal(new, labels):
            return np.where(mask, labels, -1)
        labels = new


def classify_shape(blob: np.ndarray) -> str:
    """circle / square / triangle (apex up) / unknown, from a boolean mask cropped to its box.

    Three numbers that survive blur and a lossy decoder's rounded corners:
    - top/bottom: mean width of the top quarter of rows over that of the bottom quarter
      (triangle about 0.2, disc and square about 1);
    - fill: share of the box covered (disc 0.785, square 1, triangle 0.5);
    - diagonal reach: how far the blob reaches along the diagonals from its centroid, over how far
      along the axes (disc 1, square sqrt 2; a square with rounded corners lies between).
    """
    bh, bw = blob.shape
    if bh < 3 or bw < 3 or max(bh, bw) > 2.2 * min(bh, bw):
        return "unknown"
    fill = blob.mean()
    widths = blob.sum(1) / bw
    quarter = max(1, bh // 4)
    top_bottom = widths[:quarter].mean() / max(widths[-quarter:].mean(), 1e-6)
    if (top_bottom < 0.5 and fill <= 0.8) or (top_bottom < 0.7 and fill < 0.7):
        return "triangle"
    ys, xs = np.nonzero(blob)
    dy, dx = np.abs(ys - ys.mean()), np.abs(xs - xs.mean())
    # extents measured to pixel edges (+0.5 per axis), so a pixelated disc reads about 1.0
    reach = ((dx + dy + 1.0) / np.sqrt(2.0)).max() / (np.maximum(dx, dy).max() + 0.5)
    squareness = (reach - 1.0) / (np.sqrt(2.0) - 1.0) + (fill - np.pi / 4) / (1.0 - np.pi / 4)  # disc 0, square 2
    if squareness >= 0.7 and fill >= 0.75:
        return "square"
    if fill >= 0.6:
        return "circle"
    return "unknown"


def detect(image) -> list[Detection]:
    """Every object in an RGB image (PIL image or (H, W, 3) uint8 array), largest first."""
    rgb = np.asarray(image.convert("RGB") if hasattr(image, "convert") else image)
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
        raise ValueError(f"detect needs an RGB image or an (H, W, 3) uint8 array, got {rgb.shape} {rgb.dtype}")
    hue, sat, val = _hsv(rgb)
    mask = (sat >= MIN_SATURATION) & (val >= MIN_VALUE)
    labels = _components(mask, hue)
    min_area = MIN_AREA_FRACTION * rgb.shape[0] * rgb.shape[1]
    ids, counts = np.unique(labels[labels >= 0], return_counts=True)
    names = list(HUES)
    centres = np.array([HUES[n] for n in names])
    found = []
    for i, area in zip(ids, counts):
        if area < min_area:
            continue
        ys, xs = np.nonzero(labels == i)
        y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
        angles = np.deg2rad(hue[ys, xs])
        mean_hue = np.rad2deg(np.arctan2(np.sin(angles).mean(), np.cos(angles).mean())) % 360.0
        colour = names[int(_hue_distance(centres, mean_hue).argmin())]
        shape = classify_shape(labels[y0:y1, x0:x1] == i)
        found.append(
            Detection(shape, colour, (int(x0), int(y0), int(x1), int(y1)), ((x0 + x1) / 2, (y0 + y1) / 2), int(area))
        )
    return sorted(found, key=lambda d: -d.area)


# ---------------------------------------------------------------------------------------------
# scoring


def relations_between(a: Detection, b: Detection) -> set[str]:
    """Which of RELATIONS hold for `a` relative to `b` (GenEval's rule: the centre offset, shrunk
    by a share of both sizes, must point mostly along the axis)."""
    offset = np.array(a.centre) - np.array(b.centre)
    size_a = np.array([a.box[2] - a.box[0], a.box[3] - a.box[1]], dtype=float)
    size_b = np.array([b.box[2] - b.box[0], b.box[3] - b.box[1]], dtype=float)
    shrunk = np.sign(offset) * np.maximum(np.abs(offset) - POSITION_SLACK * (size_a + size_b), 0.0)
    norm = np.linalg.norm(offset)
    if norm == 0 or np.all(np.abs(shrunk) < 1e-3):
        return set()
    dx, dy = shrunk / norm
    found = set()
    if dx < -0.5:
        found.add("left of")
    if dx > 0.5:
        found.add("right of")
    if dy < -0.5:
        found.add("above")
    if dy > 0.5:
        found.add("below")
    return found


def check_metadata(metadata: dict) -> None:
    """Refuse malformed prompt metadata with a message that names the entry."""
    for key in ("include",):
        if key not in metadata:
            raise ValueError(f"prompt metadata needs an {key!r} list: {metadata}")
    for i, req in enumerate(metadata["include"]):
        if req.get("class") not in SHAPES:
            raise ValueError(f"include[{i}] class must be one of {SHAPES}, got {req.get('class')!r}")
        if not isinstance(req.get("count", 1), int) or req.get("count", 1) < 1:
            raise ValueError(f"include[{i}] count must be a positive integer, got {req.get('count')!r}")
        if "color" in req and req["color"] not in HUES:
            raise ValueError(f"include[{i}] color must be one of {tuple(HUES)}, got {req['color']!r}")
        if "position" in req:
            rel, target = req["position"]
            if rel not in RELATIONS or not (isinstance(target, int) and 0 <= target < i):
                raise ValueError(
                    f"include[{i}] position must be [relation, index of an earlier entry] with relation in "
                    f"{RELATIONS}, got {req['position']!r}"
                )
    for i, req in enumerate(metadata.get("exclude", [])):
        if req.get("class") not in SHAPES or not isinstance(req.get("count"), int):
            raise ValueError(f"exclude[{i}] needs a class in {SHAPES} and an integer count, got {req}")


def evaluate(image, metadata: dict, detections: list[Detection] | None = None) -> Verdict:
    """Does the image satisfy every requirement of `metadata` (GenEval form, see module doc)?"""
    check_metadata(metadata)
    found = detect(image) if detections is None else detections
    reasons: list[str] = []
    matched: list[list[Detection] | None] = []
    for req in metadata["include"]:
        cls, count, colour = req["class"], req.get("count", 1), req.get("color")
        candidates = [d for d in found if d.shape == cls]
        if len(candidates) < count:
            reasons.append(f"expected at least {count} {cls}, found {len(candidates)}")
            matched.append(None)
            continue
        if colour is not None:
            candidates = [d for d in candidates if d.colour == colour]
            if len(candidates) < count:
                reasons.append(f"expected at least {count} {colour} {cls}, found {len(candidates)}")
                matched.append(None)
                continue
        if "position" in req:
            rel, target = req["position"]
            if matched[target] is None:
                reasons.append(f"{cls} {rel} entry {target}: that entry was not found")
                matched.append(None)
                continue
            wrong = [
                (d, t) for d in candidates for t in matched[target] if rel not in relations_between(d, t)
            ]
            if wrong:
                reasons.append(f"expected {colour or ''} {cls} {rel} {matched[target][0].shape}".replace("  ", " "))
                matched.append(None)
                continue
        matched.append(candidates)
    for req in metadata.get("exclude", []):
        n = sum(d.shape == req["class"] and req.get("color") in (None, d.colour) for d in found)
        if n >= req["count"]:
            reasons.append(f"expected fewer than {req['count']} {req['class']}, found {n}")
    return Verdict(not reasons, tuple(reasons), tuple(found))


def score(results: list[tuple[str, bool]]) -> dict[str, float]:
    """Per-tag accuracy and GenEval's overall score (the mean over tags, not over prompts)."""
    tags: dict[str, list[bool]] = {}
    for tag, ok in results:
        tags.setdefault(tag, []).append(ok)
    per_tag = {tag: sum(v) / len(v) for tag, v in sorted(tags.items())}
    per_tag["overall"] = sum(per_tag.values()) / len(per_tag) if per_tag else 0.0
    return per_tag
