"""Layout: one normalised box per subject instance, consistent with every spatial relation.

Coordinates are fractions of the image, x to the right, y down, boxes (x0, y0, x1, y1) with
0 <= x0 < x1 <= 1. The layout is a grid: relations order the subjects into columns (left of,
right of, between, next to) and rows (above, below, on, under, behind, in front of); subjects
"on", "under", "in front of" or "behind" one another share a column so that they overlap
horizontally; a subject "inside" another is placed in the middle of its container. Subjects with
no relation at all get their own columns (a grid when nothing is related), which is the default
composition. Absolute positions ("on the left", "in the top right corner") pull a subject's cell
into that part of the image. Each subject's instances fill its cell in a small grid.

`relation_holds` is the exact meaning of each relation on boxes; the planner checks every
relation with it (a prompt that asks for the impossible gets the offending relation dropped into
`unparsed`; an edited plan gets a clear error), and the tests use it as the specification.
"""

from __future__ import annotations

import math

Box = tuple[float, float, float, float]

# Absolute position -> (column 0/1/2 or None, row 0/1/2 or None); kept in step with plan_parse.
POSITION_REGIONS = {0: (0.0, 0.5), 1: (0.25, 0.75), 2: (0.5, 1.0)}
SAME_COLUMN = ("on", "under", "in front of", "behind")
EPS = 1e-9


def _size_scale(attributes: list[str]) -> float:
    words = set(" ".join(attributes).split())
    if words & {"tiny", "miniature", "mini"}:
        return 0.45
    if words & {"small", "little"}:
        return 0.6
    if words & {"big", "large", "huge", "giant", "enormous", "massive", "gigantic"}:
        return 0.95
    return 0.8


class _Dag:
    """A directed graph on 0..n-1 that refuses edges closing a cycle."""

    def __init__(self, n: int):
        self.out = [set() for _ in range(n)]

    def reaches(self, a: int, b: int) -> bool:
        stack, seen = [a], {a}
        while stack:
            u = stack.pop()
            if u == b:
                return True
            for v in self.out[u]:
                if v not in seen:
                    seen.add(v)
                    stack.append(v)
        return False

    def add(self, a: int, b: int) -> bool:
        if a == b or self.reaches(b, a):
            return False
        self.out[a].add(b)
        return True

    def levels(self) -> list[int]:
        """Longest-path depth of every node (sources at 0)."""
        n = len(self.out)
        indeg = [0] * n
        for u in range(n):
            for v in self.out[u]:
                indeg[v] += 1
        level = [0] * n
        ready = [u for u in range(n) if indeg[u] == 0]
        while ready:
            u = ready.pop()
            for v in self.out[u]:
                level[v] = max(level[v], level[u] + 1)
                indeg[v] -= 1
                if indeg[v] == 0:
                    ready.append(v)
        return level

    def touched(self) -> set[int]:
        return {u for u in range(len(self.out)) if self.out[u]} | {v for s in self.out for v in s}


def _edges(bounds: list[tuple[float, float]], min_width: float = 0.02) -> list[float]:
    """Edges of n columns (or rows): as equal as possible, with column c inside bounds[c].

    bounds[c] is the part of the image column c must stay in (from absolute positions such as
    "on the left": (0, 0.5)). Edges are the equal split clamped into the tightest monotone
    bounds; with no positions this is just c / n.
    """
    n = len(bounds)
    lower = [0.0] * (n + 1)     # lower[c] <= edge c
    upper = [1.0] * (n + 1)
    for c in range(n):
        lower[c] = max(lower[c], bounds[c][0], lower[c - 1] + min_width if c else 0.0)
    lower[n] = max(lower[n], lower[n - 1] + min_width) if n else 0.0
    for c in range(n, 0, -1):
        upper[c] = min(upper[c], bounds[c - 1][1], upper[c + 1] - min_width if c < n else 1.0)
    upper[0] = min(upper[0], upper[1] - min_width) if n else 1.0
    equal = [c / max(n, 1) for c in range(n + 1)]
    if any(lower[c] > upper[c] for c in range(n + 1)):
        # the positions cannot all hold: the equal split (clamping only some edges could cross
        # them, giving a column of negative width)
        return equal
    return [min(max(equal[c], lower[c]), upper[c]) for c in range(n + 1)]


def _bounds(n: int, members: dict[int, list[int]], regions: list[int | None]) -> list[tuple[float, float]]:
    """Per column (row): the intersection of the position regions of the subjects in it."""
    out = []
    for c in range(n):
        lo, hi = 0.0, 1.0
        for s in members.get(c, []):
            if regions[s] is not None:
                a, b = POSITION_REGIONS[regions[s]]
                lo, hi = max(lo, a), min(hi, b)
        out.append((lo, hi) if lo < hi else (0.0, 1.0))
    return out


def _grid_boxes(cell: Box, n: int, scale: float, max_aspect: float | None = 1.5) -> list[Box]:
    """n boxes filling `cell` row by row, each shrunk by `scale` around its slot's centre.

    Boxes are kept roughly square (an object is rarely a thin sliver) unless `max_aspect` is
    None, which supports ("on a table") need so that they stay under everything on them.
    """
    x0, y0, x1, y1 = cell
    w, h = x1 - x0, y1 - y0
    cols = max(1, min(n, round(math.sqrt(n * w / max(h, EPS))) or 1))
    rows = math.ceil(n / cols)
    cols = math.ceil(n / rows)
    sw, sh = w / cols, h / rows
    boxes = []
    for k in range(n):
        r, c = divmod(k, cols)
        in_row = min(cols, n - r * cols)             # centre a short last row
        offset = (cols - in_row) * sw / 2
        cx = x0 + offset + (c + 0.5) * sw
        cy = y0 + (r + 0.5) * sh
        bw, bh = sw * scale, sh * scale
        if max_aspect is not None:
            bw, bh = min(bw, bh * max_aspect), min(bh, bw * max_aspect)
        boxes.append((cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2))
    return boxes


RelationTuple = tuple[int, int, str, "int | None"]     # (subject, object, relation, object2)
Position = tuple["int | None", "int | None"]           # (column 0/1/2, row 0/1/2), None where free


class _Groups:
    """Which subject lives inside which (a contained subject is placed in its container's cell,
    so it follows its root container), and which roots share a column (on, under, in front of,
    behind): a union-find over roots."""

    def __init__(self, n: int, relations: list[RelationTuple]):
        self.parent: list[int | None] = [None] * n
        for s, o, rel, _ in relations:
            if rel == "inside" and self.parent[s] is None:
                p = o
                while p is not None and p != s:
                    p = self.parent[p]
                if p is None:                  # no containment cycle
                    self.parent[s] = o
        self.group = list(range(n))
        for s, o, rel, _ in relations:
            if rel in SAME_COLUMN:
                a, b = self.find(self.root(s)), self.find(self.root(o))
                if a != b:
                    self.group[max(a, b)] = min(a, b)

    def root(self, s: int) -> int:
        while self.parent[s] is not None:
            s = self.parent[s]
        return s

    def find(self, s: int) -> int:
        while self.group[s] != s:
            self.group[s] = self.group[self.group[s]]
            s = self.group[s]
        return s


def compute_layout(counts: list[int], relations: list[RelationTuple], positions: list[Position],
                   attributes: list[list[str]] | None = None) -> list[list[Box]]:
    """Boxes for every instance of every subject: result[s][k] is instance k of subject s."""
    n = len(counts)
    attributes = attributes or [[] for _ in range(n)]
    g = _Groups(n, relations)
    positions = _inherit_positions(g, positions)
    horiz, vert, related = _orders(n, relations, positions, g)
    tops = [s for s in range(n) if g.parent[s] is None]
    positioned = {g.root(s) for s in range(n) if positions[s] != (None, None)}
    free = [s for s in tops if s not in related and s not in positioned]
    constrained = [s for s in tops if s not in set(free)]
    cells = _constrained_cells(constrained, free, positions, g, horiz, vert) if constrained else _grid_cells(free)
    _pull_into_positions(cells, tops, positions)
    _share_columns(cells, relations, g)
    return _instance_boxes(cells, counts, relations, attributes, g, tops)


def _inherit_positions(g: _Groups, positions: list[Position]) -> list[Position]:
    """A contained subject's absolute position is its container's ("a cat in a box on the left")."""
    positions = list(positions)
    for s in range(len(positions)):
        r = g.root(s)
        if r != s and positions[s] != (None, None):
            h, v = positions[r]
            positions[r] = (positions[s][0] if h is None else h, positions[s][1] if v is None else v)
    return positions


def _orders(n: int, relations: list[RelationTuple], positions: list[Position],
            g: _Groups) -> tuple[_Dag, _Dag, set[int]]:
    """The left-to-right order of column groups and the top-to-bottom order of roots that the
    relations and positions ask for (an edge that would close a cycle is refused: the earlier
    relation wins), and the roots that take part in a relation."""
    horiz, vert = _Dag(n), _Dag(n)
    related = set()
    for s, o, rel, o2 in relations:
        rs, ro = g.root(s), g.root(o)
        related |= {rs, ro}
        if rs == ro:
            continue
        gs, go = g.find(rs), g.find(ro)
        if rel == "left of" and gs != go:
            horiz.add(gs, go)
        elif rel == "right of" and gs != go:
            horiz.add(go, gs)
        elif rel == "between" and o2 is not None:
            g2 = g.find(g.root(o2))
            related.add(g.root(o2))
            if len({gs, go, g2}) == 3 and horiz.add(go, gs):    # object, subject, object2 from left to right
                horiz.add(gs, g2)
        elif rel in ("above", "on", "behind"):
            vert.add(rs, ro)
        elif rel in ("below", "under", "in front of"):
            vert.add(ro, rs)
    # positions order subjects against each other: left < center < right, top < middle < bottom
    placed = [s for s in range(n) if positions[s] != (None, None)]
    for a in placed:
        for b in placed:
            ha, va = positions[a]
            hb, vb = positions[b]
            ra, rb = g.root(a), g.root(b)
            if ra == rb:
                continue
            if ha is not None and hb is not None and ha < hb and g.find(ra) != g.find(rb):
                horiz.add(g.find(ra), g.find(rb))
            if va is not None and vb is not None and va < vb:
                vert.add(ra, rb)
    # "next to" only asks for a side: reading order unless something else decides
    for s, o, rel, _ in relations:
        if rel == "next to":
            gs, go = g.find(g.root(s)), g.find(g.root(o))
            if gs != go and not horiz.reaches(go, gs):
                horiz.add(gs, go)
    return horiz, vert, related


def _grid_cells(free: list[int]) -> dict[int, Box]:
    """Nothing related: a near-square grid of subjects in reading order."""
    cells = {}
    k = len(free)
    gcols = math.ceil(math.sqrt(k)) if k else 1
    grows = math.ceil(k / gcols) if k else 1
    for idx, s in enumerate(free):
        r, c = divmod(idx, gcols)
        in_row = min(gcols, k - r * gcols)
        off = (gcols - in_row) / gcols / 2
        cells[s] = (off + c / gcols, r / grows, off + (c + 1) / gcols, (r + 1) / grows)
    return cells


def _constrained_cells(constrained: list[int], free: list[int], positions: list[Position], g: _Groups,
                       horiz: _Dag, vert: _Dag) -> dict[int, Box]:
    """A cell per top-level subject: columns from the horizontal order, rows from the vertical one
    (a subject in no vertical relation spans all rows); free subjects get columns of their own."""
    col_level, row_level, v_touched = horiz.levels(), vert.levels(), vert.touched()
    n_rows = 1 + max([row_level[s] for s in constrained if s in v_touched] or [0])
    n_cols = 1 + max([col_level[g.find(s)] for s in constrained] or [-1])
    col_of = _columns(constrained, free, positions, {s: col_level[g.find(s)] for s in constrained}, n_cols)
    by_col: dict[int, list[int]] = {}
    for s in constrained:
        by_col.setdefault(col_of[s], []).append(s)
    col_x = _edges(_bounds(n_cols + len(free), by_col, [p[0] for p in positions]))
    span = {s: (row_level[s], row_level[s]) if s in v_touched else (0, n_rows - 1) for s in constrained}
    span.update({s: (0, n_rows - 1) for s in free})
    by_row: dict[int, list[int]] = {}
    for s in constrained:
        if s in v_touched:
            by_row.setdefault(row_level[s], []).append(s)
    row_y = _edges(_bounds(n_rows, by_row, [p[1] for p in positions]))
    members_of: dict[int, list[int]] = {}
    for s in col_of:
        members_of.setdefault(col_of[s], []).append(s)
    cells: dict[int, Box] = {}
    for c in range(n_cols + len(free)):
        members = sorted(members_of.get(c, []), key=lambda s: (span[s][0], s))
        cells.update(_column_cells(members, span, col_x[c], col_x[c + 1], row_y))
    return cells


def _columns(constrained: list[int], free: list[int], positions: list[Position], col_of: dict[int, int],
             n_cols: int) -> dict[int, int]:
    """The column of every top-level subject. Free subjects go after the related ones, but right
    of anything placed "on the left" and left of anything placed "on the right"; around
    something "in the center" they go on both sides of it."""
    col_of = dict(col_of)
    lefts = [col_of[s] for s in constrained if positions[s][0] == 0]
    rights = [col_of[s] for s in constrained if positions[s][0] == 2]
    centred = any(positions[s][0] == 1 for s in constrained)
    if lefts or rights or not centred:
        insert = max(lefts) + 1 if lefts else (0 if rights else n_cols)
        for s in constrained:
            if col_of[s] >= insert:
                col_of[s] += len(free)
        for idx, s in enumerate(free):
            col_of[s] = insert + idx
    else:
        before = len(free) // 2
        for s in constrained:
            col_of[s] += before
        for idx, s in enumerate(free):
            col_of[s] = idx if idx < before else n_cols + idx
    return col_of


def _column_cells(members: list[int], span: dict[int, tuple[int, int]], x0: float, x1: float,
                  row_y: list[float]) -> dict[int, Box]:
    """Cells of one column's subjects: interval colouring, so that subjects whose rows overlap
    sit side by side; each widens into free neighbouring slots (a table under two cups spans both)."""
    def apart(s: int, t: int) -> bool:
        return span[t][1] < span[s][0] or span[s][1] < span[t][0]

    slots: list[list[int]] = []
    slot_of = {}
    for s in members:
        k = next((k for k, slot in enumerate(slots) if all(apart(s, t) for t in slot)), len(slots))
        if k == len(slots):
            slots.append([])
        slots[k].append(s)
        slot_of[s] = k
    n_slots = max(1, len(slots))
    cells = {}
    for s in members:
        first = last = slot_of[s]
        while last + 1 < n_slots and all(apart(s, t) for t in slots[last + 1]):
            last += 1
        cw = x1 - x0
        cells[s] = (x0 + first / n_slots * cw, row_y[span[s][0]], x0 + (last + 1) / n_slots * cw,
                    row_y[span[s][1] + 1])
    return cells


def _pull_into_positions(cells: dict[int, Box], tops: list[int], positions: list[Position]) -> None:
    """Absolute positions pull a cell into that part of the image (when enough of it is there)."""
    for s in tops:
        h, v = positions[s]
        x0, y0, x1, y1 = cells[s]
        if h is not None:
            a, b = POSITION_REGIONS[h]
            if min(x1, b) - max(x0, a) >= 0.1:
                x0, x1 = max(x0, a), min(x1, b)
        if v is not None:
            a, b = POSITION_REGIONS[v]
            if min(y1, b) - max(y0, a) >= 0.1:
                y0, y1 = max(y0, a), min(y1, b)
        cells[s] = (x0, y0, x1, y1)


def _share_columns(cells: dict[int, Box], relations: list[RelationTuple], g: _Groups) -> None:
    """A subject on, under, in front of or behind another stays within its horizontal extent."""
    for s, o, rel, _ in relations:
        rs, ro = g.root(s), g.root(o)
        if rel in SAME_COLUMN and rs != ro and rs in cells and ro in cells:
            a0, a1 = max(cells[rs][0], cells[ro][0]), min(cells[rs][2], cells[ro][2])
            if a1 - a0 >= 0.05:
                cells[rs] = (a0, cells[rs][1], a1, cells[rs][3])


def _instance_boxes(cells: dict[int, Box], counts: list[int], relations: list[RelationTuple],
                    attributes: list[list[str]], g: _Groups, tops: list[int]) -> list[list[Box]]:
    """Each subject's instances in a small grid inside its cell; a contained subject in the
    middle of its container's first instance (parents first)."""
    n = len(counts)
    boxes: list[list[Box] | None] = [None] * n
    supports = {g.root(o) for _, o, rel, _ in relations if rel in ("on", "under", "in front of", "behind")}
    supports |= {g.root(s) for s, _, rel, _ in relations if rel in ("under", "in front of")}
    for s in tops:
        aspect = None if s in supports else 1.5
        boxes[s] = _grid_boxes(cells[s], counts[s], _size_scale(attributes[s]), aspect)
    pending = [s for s in range(n) if g.parent[s] is not None]
    while pending:
        rest = []
        for s in pending:
            p = g.parent[s]
            if boxes[p] is None:
                rest.append(s)
                continue
            x0, y0, x1, y1 = boxes[p][0]
            w, h = x1 - x0, y1 - y0
            inner = (x0 + 0.2 * w, y0 + 0.2 * h, x1 - 0.2 * w, y1 - 0.2 * h)
            boxes[s] = _grid_boxes(inner, counts[s], 0.9)
        pending = rest
    return [[_clean(b) for b in bs] for bs in boxes]


def _clean(b: Box) -> Box:
    """Inside the canvas, 4 decimals, never thinner than 0.001."""
    x0, y0, x1, y1 = (round(min(1.0, max(0.0, v)), 4) for v in b)
    if x1 - x0 < 0.001:
        x0 = min(x0, 0.999)
        x1 = round(x0 + 0.001, 4)
    if y1 - y0 < 0.001:
        y0 = min(y0, 0.999)
        y1 = round(y0 + 0.001, 4)
    return (x0, y0, x1, y1)


# ---------------------------------------------------------------------------------------------
# What each relation means on boxes
# ---------------------------------------------------------------------------------------------

def _cx(b: Box) -> float:
    return (b[0] + b[2]) / 2


def _cy(b: Box) -> float:
    return (b[1] + b[3]) / 2


def _x_overlap(subject: list[Box], obj: list[Box]) -> bool:
    """Every subject instance overlaps the horizontal extent of the object's instances."""
    lo, hi = min(b[0] for b in obj), max(b[2] for b in obj)
    return all(b[0] < hi and lo < b[2] for b in subject)


def _before(a: list[Box], b: list[Box], end: int, start: int) -> bool:
    """Every box of `a` ends (coordinate `end`) before every box of `b` starts (`start`): for
    all pairs at once, compare the extremes (linear in the instances, not quadratic)."""
    return not a or not b or max(x[end] for x in a) <= min(x[start] for x in b) + EPS


def relation_holds(rel: str, subject: list[Box], obj: list[Box], obj2: list[Box] | None = None) -> bool:
    """The meaning of a relation between all instances of two subjects."""
    if rel == "left of":
        return _before(subject, obj, 2, 0)
    if rel == "right of":
        return relation_holds("left of", obj, subject)
    if rel == "above":
        return _before(subject, obj, 3, 1)
    if rel == "below":
        return relation_holds("above", obj, subject)
    if rel == "on":
        return relation_holds("above", subject, obj) and _x_overlap(subject, obj)
    if rel == "under":
        return relation_holds("above", obj, subject) and _x_overlap(subject, obj)
    if rel in ("behind", "in front of"):   # behind: further away, higher in the picture, same column
        back, front = (subject, obj) if rel == "behind" else (obj, subject)
        return ((not back or not front or max(map(_cy, back)) < min(map(_cy, front)))
                and _x_overlap(subject, obj))
    if rel == "next to":
        side = all(a[2] <= b[0] + EPS or b[2] <= a[0] + EPS for a in subject for b in obj)
        lo = max(min(b[1] for b in subject), min(b[1] for b in obj))
        hi = min(max(b[3] for b in subject), max(b[3] for b in obj))
        return side and lo < hi
    if rel == "inside":
        return all(any(b[0] <= a[0] + EPS and b[1] <= a[1] + EPS and a[2] <= b[2] + EPS
                       and a[3] <= b[3] + EPS for b in obj) for a in subject)
    if rel == "between":
        if not obj2:
            return False
        return ((relation_holds("left of", obj, subject) and relation_holds("left of", subject, obj2))
                or (relation_holds("left of", obj2, subject) and relation_holds("left of", subject, obj)))
    raise ValueError(f"unknown relation {rel!r}")


def position_holds(position: tuple[int | None, int | None], boxes: list[Box]) -> bool:
    """Every instance's centre lies in the part of the image an absolute position names."""
    h, v = position
    for b in boxes:
        if h is not None:
            a, z = POSITION_REGIONS[h]
            if not a - EPS <= _cx(b) <= z + EPS:
                return False
        if v is not None:
            a, z = POSITION_REGIONS[v]
            if not a - EPS <= _cy(b) <= z + EPS:
                return False
    return True


# ---------------------------------------------------------------------------------------------
# Snapping a layout to a model's cell grid (grounding)
# ---------------------------------------------------------------------------------------------

def cells_apart(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    """Cell boxes (x0, y0, x1, y1), ends exclusive, with at least one free cell between them."""
    return a[2] < b[0] or b[2] < a[0] or a[3] < b[1] or b[3] < a[1]


def snap_to_cells(boxes: list[Box], grid: int, min_cells: int = 1, max_cells: int | None = None) -> list[Box]:
    """Each box as a square of whole cells of a grid x grid image, as near its centre as it fits.

    For a model trained on objects drawn in such squares (the demo model: 2 to 4 cells of an
    8 x 8 code grid), the boxes it is asked for must look like the ones it saw. The side is the
    box's shorter side rounded to cells and clamped to [min_cells, max_cells]. Boxes are placed
    in order, each keeping a free cell to those before it (two touching shapes of one colour read
    as one): at the largest side, down to min_cells, whose nearest free spot is within half a
    cell of the box's centre, else wherever among all sides lies nearest; a box with no free
    spot at all takes its own centre anyway.
    """
    max_cells = grid if max_cells is None else max_cells
    if not 1 <= min_cells <= max_cells <= grid:
        raise ValueError(f"need 1 <= min_cells <= max_cells <= grid, got {min_cells}, {max_cells}, {grid}")

    placed: list[tuple[int, int, int, int]] = []
    for b in boxes:
        cx, cy = (b[0] + b[2]) / 2 * grid, (b[1] + b[3]) / 2 * grid
        want = min(max_cells, max(min_cells, round(min(b[2] - b[0], b[3] - b[1]) * grid)))
        options = []   # (distance to the centre, cells smaller than wanted, square)
        for k in range(want, min_cells - 1, -1):
            for y in range(grid - k + 1):
                for x in range(grid - k + 1):
                    sq = (x, y, x + k, y + k)
                    if all(cells_apart(sq, p) for p in placed):
                        dx, dy = abs(x + k / 2 - cx), abs(y + k / 2 - cy)
                        # ties go to the square nearer the middle of the image, away from the edges
                        middle = math.hypot(x + k / 2 - grid / 2, y + k / 2 - grid / 2)
                        options.append((math.hypot(dx, dy), want - k, middle, sq, max(dx, dy)))
        close = [o for o in options if o[4] <= 0.5 + EPS]
        if close or options:
            placed.append(min(close, key=lambda o: (o[1], o[0], o[2]))[3] if close else min(options)[3])
        else:
            x = min(grid - min_cells, max(0, math.floor(cx - min_cells / 2 + 0.5)))
            y = min(grid - min_cells, max(0, math.floor(cy - min_cells / 2 + 0.5)))
            placed.append((x, y, x + min_cells, y + min_cells))
    return [tuple(v / grid for v in sq) for sq in placed]
