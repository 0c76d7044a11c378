"""A procedurally drawn shapes dataset: the data of the tests and of the bundled demo model.

Each image shows 1..``max_shapes`` coloured shapes (circle, square, triangle; small or large)
on a muted grey background, laid out in one of two arrangements (``SyntheticConfig.arrangement``):

* ``"row"`` (the default; the demo model's data): the shapes stand in one row, left to right.
  They never overlap and never share a column of pixels, so "to the left of" is always
  unambiguous. Captions: :data:`TEMPLATES`, over the shapes ordered left to right.
* ``"relations"``: the image is split into a 2x2 grid of cells and each shape sits inside its
  own cell, clear of the cell's borders (so it never touches a neighbour). Two shapes always
  share a row or a column of cells, never a diagonal, and overlap along the shared axis by
  at least two thirds of the smaller one's side, so exactly one of "to the left of" and "above"
  holds. Three shapes form an L: a corner shape with one neighbour in its row and one in its
  column. Captions: :data:`RELATION_TEMPLATES`, which a model can only get right by binding
  each colour to its shape and reading where the shapes are relative to each other.

Every caption is fully determined by the image: the captions are a small, systematic set of
templates over the ``size colour shape`` phrase of each shape (:func:`captions_for` derives
them from the shapes' boxes). The first template of each set is the canonical caption and is
always the first reference of an image, so a model has a most-likely caption that it can emit
exactly; the other references are drawn from the remaining templates. Every shape's bounding
box is kept in the item's scene.

:func:`generate` draws the items, :func:`write_dataset` writes them in any layout that
:mod:`training.datasets` reads. Everything is deterministic given the config: an image
depends only on ``(seed, index)`` and its drawing parameters, and the splits on
``(seed, n_images, split_fractions)``; writing the same config twice gives the same bytes.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from imcap_hub.files import atomic_write, atomic_write_json
from training.datasets import DEFAULT_SPLIT_FRACTIONS, FLICKR8K_SPLIT_FILES, LAYOUTS, SPLITS

# Saturated colours, far apart in RGB and far from every background tone below.
COLOUR_RGB: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 50),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (250, 250, 250),
    "black": (15, 15, 15),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle")
# Side of the shape's bounding box as a fraction of the image side: (min, max). The ranges
# are two-fold apart so the size word is obvious from the pixels.
SIZE_FRACTIONS: dict[str, tuple[float, float]] = {
    "small": (0.14, 0.18),
    "large": (0.30, 0.36),
}
# Muted, low-saturation tones (mid greys, slightly warm/cool/green greys): none is near a
# shape colour, white or black included.
BACKGROUND_RGB: tuple[tuple[int, int, int], ...] = (
    (128, 128, 128),
    (150, 150, 150),
    (105, 105, 105),
    (140, 132, 120),
    (118, 128, 138),
    (125, 135, 125),
)
BACKGROUND_JITTER = 6  # +- per channel, per image

# Caption templates by number of shapes. {a}, {b}, {c} are the "size colour shape" phrases of
# the shapes from left to right; {a_size}, {a_colour}, {a_shape} their parts. The first
# template of each tuple is the canonical caption.
TEMPLATES: dict[int, tuple[str, ...]] = {
    1: (
        "a {a}",
        "there is a {a}",
        "one {a}",
        "a picture of a {a}",
        "a {a_colour} {a_shape} that is {a_size}",
    ),
    2: (
        "a {a} to the left of a {b}",
        "a {b} to the right of a {a}",
        "a {a} and a {b}",
        "there is a {a} to the left of a {b}",
        "two shapes with a {a} on the left and a {b} on the right",
    ),
    3: (
        "a {a} a {b} and a {c} from left to right",
        "a {c} a {b} and a {a} from right to left",
        "a {a} and a {b} to the left of a {c}",
        "there are three shapes a {a} a {b} and a {c}",
        "three shapes with a {a} on the left a {b} in the middle and a {c} on the right",
    ),
}

# The "relations" arrangement's templates, by the relation the boxes show (see
# :func:`captions_for`). {a}, {b}, {c} are the phrases of the shapes in scene order:
# "single": the one shape. "left": {a} is to the left of {b}; "above": {a} is above {b}.
# "corner": {a} is the corner of the L, {b} its neighbour in the same row, on the side
# {b_side} ("left" or "right"), {c} its neighbour in the same column, {c_side} ("above" or
# "below") it. The first template of each tuple is the canonical caption.
RELATION_TEMPLATES: dict[str, tuple[str, ...]] = {
    "single": TEMPLATES[1],
    "left": (
        "a {a} to the left of a {b}",
        "a {b} to the right of a {a}",
        "there is a {a} to the left of a {b}",
        "there is a {b} to the right of a {a}",
        "two shapes with a {a} on the left and a {b} on the right",
    ),
    "above": (
        "a {a} above a {b}",
        "a {b} below a {a}",
        "there is a {a} above a {b}",
        "there is a {b} below a {a}",
        "two shapes with a {b} below a {a}",
    ),
    "corner": (
        "a {a} with a {b} to its {b_side} and a {c} {c_side} it",
        "a {a} with a {c} {c_side} it and a {b} to its {b_side}",
        "there is a {a} with a {b} to its {b_side} and a {c} {c_side} it",
        "a {b} to the {b_side} of a {a} that has a {c} {c_side} it",
        "a {c} {c_side} a {a} that has a {b} to its {b_side}",
    ),
}
# The words {b_side} and {c_side} stand for.
RELATION_SIDE_WORDS: tuple[str, ...] = ("left", "right", "above", "below")
ARRANGEMENTS: tuple[str, ...] = ("row", "relations")
MAX_SHAPES = max(TEMPLATES)  # the relations grid has 4 cells: room for MAX_SHAPES too
MAX_CAPTIONS_PER_IMAGE = min(len(t) for t in (*TEMPLATES.values(), *RELATION_TEMPLATES.values()))

_SUPERSAMPLE = 4  # draw at 4x and box-filter down: smooth edges, still deterministic


@dataclass
class SyntheticConfig:
    """How to draw a synthetic dataset. Round-trips through JSON (:meth:`to_dict`,
    :meth:`from_dict`)."""

    n_images: int = 200
    image_size: int = 96
    seed: int = 0
    colours: tuple[str, ...] = ("red", "green", "blue", "yellow")
    shapes: tuple[str, ...] = SHAPES
    sizes: tuple[str, ...] = ("small", "large")
    max_shapes: int = 2
    captions_per_image: int = 4
    split_fractions: tuple[float, float, float] = DEFAULT_SPLIT_FRACTIONS
    background_noise: float = 4.0  # std of Gaussian noise on the background; 0: flat
    image_format: str = "jpeg"  # "jpeg" or "png"
    jpeg_quality: int = 95
    arrangement: str = "row"  # "row" (one row, left to right) or "relations" (2x2 grid)

    def __post_init__(self) -> None:
        # Accept lists (from JSON) and normalise to tuples so configs compare equal.
        for name in ("colours", "shapes", "sizes", "split_fractions"):
            setattr(self, name, tuple(getattr(self, name)))
        problems = []
        if self.n_images < 0:
            problems.append("n_images must be >= 0")
        if self.image_size < 32:
            problems.append("image_size must be >= 32")
        if not 1 <= self.max_shapes <= MAX_SHAPES:
            problems.append(f"max_shapes must be in 1..{MAX_SHAPES}")
        if not 1 <= self.captions_per_image <= MAX_CAPTIONS_PER_IMAGE:
            problems.append(f"captions_per_image must be in 1..{MAX_CAPTIONS_PER_IMAGE}")
        for name, allowed in (
            ("colours", COLOUR_RGB),
            ("shapes", SHAPES),
            ("sizes", SIZE_FRACTIONS),
        ):
            values = getattr(self, name)
            if (
                not values
                or any(v not in allowed for v in values)
                or len(set(values)) < len(values)
            ):
                problems.append(f"{name} must be distinct values from {tuple(allowed)}")
        fr = self.split_fractions
        if len(fr) != 3 or any(f < 0 for f in fr) or abs(sum(fr) - 1) > 1e-6:
            problems.append("split_fractions must be 3 non-negative numbers summing to 1")
        if self.image_format not in ("jpeg", "png"):
            problems.append("image_format must be 'jpeg' or 'png'")
        if not 1 <= self.jpeg_quality <= 100:
            problems.append("jpeg_quality must be in 1..100")
        if self.background_noise < 0:
            problems.append("background_noise must be >= 0")
        if not isinstance(self.arrangement, str) or self.arrangement not in ARRANGEMENTS:
            problems.append(f"arrangement must be one of {ARRANGEMENTS}, not {self.arrangement!r}")
        if not problems and self.arrangement == "row":
            if _min_row_width(self) > self.image_size:
                problems.append(
                    f"{self.max_shapes} shapes of the smallest size do not fit side by side in "
                    f"{self.image_size} px: raise image_size or add a smaller size"
                )
        elif not problems:  # relations
            problems.extend(_cell_fit_problems(self))
        if problems:
            raise ValueError("invalid SyntheticConfig: " + "; ".join(problems))

    @property
    def extension(self) -> str:
        return ".jpg" if self.image_format == "jpeg" else ".png"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict (tuples become lists).

        ``arrangement`` is left out when it is ``"row"`` (the default): the dict of a row
        config is then the one written before the field existed. ``prepare`` compares this
        dict with the ``config`` in a drawn dataset's ``synthetic.json`` to decide whether to
        redraw, so an extra key would make every existing run folder redraw its data."""
        d = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}
        if d["arrangement"] == "row":
            del d["arrangement"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SyntheticConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error (a typo should not pass).
        A missing key takes its default (no ``arrangement``: ``"row"``)."""
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise ValueError(f"unknown SyntheticConfig keys: {sorted(unknown)}")
        return cls(**d)


@dataclass(frozen=True)
class ShapeSpec:
    """One drawn shape: its words and its bounding box (pixels, top-left corner and side)."""

    shape: str
    colour: str
    size: str
    x: int
    y: int
    side: int

    @property
    def phrase(self) -> str:
        """The caption words for this shape: "large red circle"."""
        return f"{self.size} {self.colour} {self.shape}"


@dataclass
class SyntheticItem:
    """One generated image with its references and the scene it was drawn from."""

    index: int
    file_name: str
    image: Image.Image
    captions: list[str]
    # Row: left to right. Relations: in the canonical caption's order (left or top one first;
    # for an L the corner, then its row neighbour, then its column neighbour).
    shapes: list[ShapeSpec]
    background: tuple[int, int, int]
    split: str

    def scene(self) -> dict[str, Any]:
        """The scene description as a JSON-able dict (no pixels)."""
        return {
            "index": self.index,
            "file_name": self.file_name,
            "split": self.split,
            "background": list(self.background),
            "shapes": [asdict(s) for s in self.shapes],
            "captions": list(self.captions),
        }


def _phrases(shapes: list[ShapeSpec]) -> dict[str, str]:
    kw: dict[str, str] = {}
    for key, s in zip("abc", shapes, strict=False):
        kw[key] = s.phrase
        kw[f"{key}_size"], kw[f"{key}_colour"], kw[f"{key}_shape"] = s.size, s.colour, s.shape
    return kw


def _overlap(lo0: int, len0: int, lo1: int, len1: int) -> int:
    """Pixels shared by the intervals [lo0, lo0 + len0) and [lo1, lo1 + len1) (< 0: a gap)."""
    return min(lo0 + len0, lo1 + len1) - max(lo0, lo1)


def relation(p: ShapeSpec, q: ShapeSpec) -> str | None:
    """How two boxes stand: ``"row"`` when they share pixel rows but no pixel column (one is
    plainly left of the other), ``"column"`` when they share pixel columns but no pixel row,
    None otherwise (diagonal, or overlapping)."""
    x_overlap = _overlap(p.x, p.side, q.x, q.side)
    y_overlap = _overlap(p.y, p.side, q.y, q.side)
    if x_overlap <= 0 < y_overlap:
        return "row"
    if y_overlap <= 0 < x_overlap:
        return "column"
    return None


def relation_of(shapes: list[ShapeSpec]) -> tuple[str, list[ShapeSpec], dict[str, str]]:
    """``(key of RELATION_TEMPLATES, shapes in template order, side words)`` for a
    "relations" scene, read from the boxes alone; a ValueError for a layout that has no
    unambiguous caption (two shapes on a diagonal, three shapes that are not an L)."""
    if len(shapes) == 1:
        return "single", list(shapes), {}
    if len(shapes) == 2:
        p, q = shapes
        rel = relation(p, q)
        if rel == "row":
            return "left", sorted(shapes, key=lambda s: s.x), {}
        if rel == "column":
            return "above", sorted(shapes, key=lambda s: s.y), {}
        raise ValueError("two shapes on a diagonal (or overlapping) have no single relation")
    if len(shapes) == 3:
        for i, corner in enumerate(shapes):
            others = [s for j, s in enumerate(shapes) if j != i]
            rels = {relation(corner, s): s for s in others}
            if set(rels) == {"row", "column"}:
                h, v = rels["row"], rels["column"]
                sides = {
                    "b_side": "right" if h.x > corner.x else "left",
                    "c_side": "below" if v.y > corner.y else "above",
                }
                return "corner", [corner, h, v], sides
        raise ValueError("three shapes that are not an L have no relations caption")
    raise ValueError(f"a relations scene has 1..{MAX_SHAPES} shapes, not {len(shapes)}")


def captions_for(shapes: list[ShapeSpec], arrangement: str = "row") -> list[str]:
    """All template captions of a scene, the canonical one first. Row: ``shapes`` ordered
    left to right. Relations: any order; the relation is read from the boxes
    (:func:`relation_of`)."""
    if arrangement == "row":
        return [t.format(**_phrases(shapes)) for t in TEMPLATES[len(shapes)]]
    if arrangement != "relations":
        raise ValueError(f"unknown arrangement {arrangement!r}; expected one of {ARRANGEMENTS}")
    key, ordered, sides = relation_of(shapes)
    kw = {**_phrases(ordered), **sides}
    return [t.format(**kw) for t in RELATION_TEMPLATES[key]]


def vocabulary(config: SyntheticConfig | None = None) -> list[str]:
    """Every word a caption of ``config`` can use (default: all colours, shapes and sizes in
    either arrangement)."""
    colours = config.colours if config else tuple(COLOUR_RGB)
    shapes = config.shapes if config else SHAPES
    sizes = config.sizes if config else tuple(SIZE_FRACTIONS)
    arrangements = (config.arrangement,) if config else ARRANGEMENTS
    words = set(colours) | set(shapes) | set(sizes)
    template_sets: list[tuple[str, ...]] = []
    if "row" in arrangements:
        template_sets.extend(TEMPLATES.values())
    if "relations" in arrangements:
        template_sets.extend(RELATION_TEMPLATES.values())
        words.update(RELATION_SIDE_WORDS)
    for templates in template_sets:
        for t in templates:
            words.update(w for w in t.split() if not w.startswith("{"))
    return sorted(words)


def assign_splits(n: int, fractions: tuple[float, ...], seed: int) -> list[str]:
    """Exact split sizes (rounded, at least one image in every non-empty split when there are
    enough images) assigned by a seeded permutation."""
    counts = [round(n * f) for f in fractions[1:]]
    if n >= len(fractions):
        counts = [max(c, 1) if f > 0 else c for c, f in zip(counts, fractions[1:], strict=True)]
    n_val, n_test = counts
    n_val = min(n_val, n)
    n_test = min(n_test, n - n_val)
    order = np.random.default_rng(np.random.SeedSequence([seed, 1])).permutation(n)
    splits = ["train"] * n
    for rank, i in enumerate(order):
        if rank < n_val:
            splits[i] = "val"
        elif rank < n_val + n_test:
            splits[i] = "test"
    return splits


def _margin_gap(size: int) -> tuple[int, int]:
    # Horizontal gap between neighbours keeps "to the left of" clear-cut.
    return max(2, size // 24), max(3, size // 16)


def _min_row_width(config: SyntheticConfig) -> int:
    """Width needed by ``max_shapes`` shapes of the smallest configured size, side by side."""
    margin, gap = _margin_gap(config.image_size)
    side = min(round(SIZE_FRACTIONS[z][0] * config.image_size) for z in config.sizes)
    k = config.max_shapes
    return 2 * margin + k * side + (k - 1) * gap


def _cells(size: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """The pixel spans [lo, hi) of the relations grid's two columns (and, the same, rows)."""
    half = size // 2
    return (0, half), (half, size)


def _max_side(config: SyntheticConfig) -> int:
    return max(round(SIZE_FRACTIONS[z][1] * config.image_size) for z in config.sizes)


def _cell_fit_problems(config: SyntheticConfig) -> list[str]:
    """Relations: the largest configured shape must fit inside the smallest cell with the
    margin on both sides (the margin keeps shapes in neighbouring cells apart)."""
    margin, _ = _margin_gap(config.image_size)
    cell = config.image_size // 2
    side = _max_side(config)
    if side + 2 * margin <= cell:
        return []
    return [
        f"a shape of up to {side} px does not fit a {cell} px cell of the 2x2 relations grid "
        f"with {margin} px margins at image_size {config.image_size}: raise image_size or "
        f"drop the largest size"
    ]


# The relations grid's cells as (row, column); an L is a corner cell and the cells beside it.
_CELLS: tuple[tuple[int, int], ...] = ((0, 0), (0, 1), (1, 0), (1, 1))
# Pairs of cells that share a row or a column, first one left or on top.
_ADJACENT_PAIRS: tuple[tuple[tuple[int, int], tuple[int, int]], ...] = (
    ((0, 0), (0, 1)),
    ((1, 0), (1, 1)),
    ((0, 0), (1, 0)),
    ((0, 1), (1, 1)),
)
# Along the axis they share, two neighbours overlap by at least this part of the smaller side.
_MIN_SHARED = 2 / 3


def _sample_relations(
    config: SyntheticConfig, rng: np.random.Generator, picks: list[tuple[str, str, str]]
) -> list[ShapeSpec]:
    """Place the picked shapes in distinct cells (see the module docstring), in the order the
    canonical caption names them."""
    size = config.image_size
    margin, _ = _margin_gap(size)
    spans = _cells(size)
    k = len(picks)
    if k == 1:
        cells = [_CELLS[int(rng.integers(len(_CELLS)))]]
    elif k == 2:
        cells = list(_ADJACENT_PAIRS[int(rng.integers(len(_ADJACENT_PAIRS)))])
    else:  # an L: the corner, its row neighbour, its column neighbour
        r, c = _CELLS[int(rng.integers(len(_CELLS)))]
        cells = [(r, c), (r, 1 - c), (1 - r, c)]
    sides = []
    for _, _, z in picks:
        lo, hi = SIZE_FRACTIONS[z]
        sides.append(int(rng.integers(round(lo * size), round(hi * size) + 1)))

    def free(span: tuple[int, int], side: int) -> tuple[int, int]:
        # The positions [lo, hi] that keep a box of ``side`` inside the span, clear of its ends.
        return span[0] + margin, span[1] - margin - side

    def aligned(span: tuple[int, int], side: int, other: int, other_side: int) -> int:
        # A position in ``span`` that shares at least _MIN_SHARED of the smaller side with
        # the box at [other, other + other_side). Never empty: a box inside the same span can
        # always contain, or be contained by, the other one (both fit the span).
        need = int(np.ceil(_MIN_SHARED * min(side, other_side)))
        lo, hi = free(span, side)
        lo, hi = max(lo, other + need - side), min(hi, other + other_side - need)
        return int(rng.integers(lo, hi + 1))

    xs: list[int] = []
    ys: list[int] = []
    for i, ((row, col), side) in enumerate(zip(cells, sides, strict=True)):
        x_span, y_span = spans[col], spans[row]
        # The first shape sits anywhere in its cell. A shape in the first one's row shares
        # its pixel rows; one in its column shares its pixel columns (k=2: the second shape;
        # k=3: the row and the column neighbour of the corner).
        if i > 0 and row == cells[0][0]:
            x = int(rng.integers(free(x_span, side)[0], free(x_span, side)[1] + 1))
            y = aligned(y_span, side, ys[0], sides[0])
        elif i > 0 and col == cells[0][1]:
            x = aligned(x_span, side, xs[0], sides[0])
            y = int(rng.integers(free(y_span, side)[0], free(y_span, side)[1] + 1))
        else:
            x = int(rng.integers(free(x_span, side)[0], free(x_span, side)[1] + 1))
            y = int(rng.integers(free(y_span, side)[0], free(y_span, side)[1] + 1))
        xs.append(x)
        ys.append(y)
    return [
        ShapeSpec(shape=shape, colour=colour, size=z, x=x, y=y, side=side)
        for (shape, colour, z), x, y, side in zip(picks, xs, ys, sides, strict=True)
    ]


def _sample_scene(
    config: SyntheticConfig, rng: np.random.Generator
) -> tuple[list[ShapeSpec], tuple[int, int, int]]:
    size = config.image_size
    margin, gap = _margin_gap(size)
    combos = [(s, c, z) for s in config.shapes for c in config.colours for z in config.sizes]
    k_max = min(config.max_shapes, len(combos))
    k = int(rng.integers(1, k_max + 1))
    if config.arrangement == "relations":
        # Distinct (shape, colour, size) so no caption names the same thing twice.
        picks = [combos[i] for i in rng.choice(len(combos), size=k, replace=False)]
        return _sample_relations(config, rng, picks), _sample_background(rng)
    for _ in range(100):
        # Distinct (shape, colour, size) so no caption names the same thing twice.
        picks = [combos[i] for i in rng.choice(len(combos), size=k, replace=False)]
        sides = []
        for _, _, z in picks:
            lo, hi = SIZE_FRACTIONS[z]
            sides.append(int(rng.integers(round(lo * size), round(hi * size) + 1)))
        slack = size - 2 * margin - sum(sides) - (k - 1) * gap
        if slack >= 0:
            break
    else:  # the config check guarantees small-enough shapes exist; 100 misses is freak luck
        raise RuntimeError("could not fit the shapes side by side; use a larger image_size")
    # Spread the slack over the k+1 horizontal gaps at random: varied positions.
    cuts = np.sort(rng.integers(0, slack + 1, size=k))
    extras = np.diff(np.concatenate([[0], cuts, [slack]]))
    shapes = []
    x = margin + int(extras[0])
    for (shape, colour, z), side, extra in zip(picks, sides, extras[1:], strict=True):
        y = int(rng.integers(margin, size - margin - side + 1))
        shapes.append(ShapeSpec(shape=shape, colour=colour, size=z, x=x, y=y, side=side))
        x += side + gap + int(extra)
    return shapes, _sample_background(rng)


def _sample_background(rng: np.random.Generator) -> tuple[int, int, int]:
    base = BACKGROUND_RGB[int(rng.integers(len(BACKGROUND_RGB)))]
    jitter = rng.integers(-BACKGROUND_JITTER, BACKGROUND_JITTER + 1, size=3)
    return tuple(int(v) for v in np.clip(np.array(base) + jitter, 0, 255))  # type: ignore[return-value]


def _draw(
    config: SyntheticConfig,
    shapes: list[ShapeSpec],
    background: tuple[int, int, int],
    rng: np.random.Generator,
) -> Image.Image:
    size = config.image_size
    bg = np.broadcast_to(np.array(background, dtype=np.float64), (size, size, 3))
    if config.background_noise > 0:
        bg = bg + rng.normal(0.0, config.background_noise, size=(size, size, 3))
    bg_img = Image.fromarray(np.clip(np.rint(bg), 0, 255).astype(np.uint8), "RGB")
    f = _SUPERSAMPLE
    # Nearest-up then box-down returns the background pixels unchanged: the noise stays crisp
    # and only the shape edges are smoothed.
    canvas = bg_img.resize((size * f, size * f), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(canvas)
    for s in shapes:
        x0, y0 = s.x * f, s.y * f
        x1, y1 = (s.x + s.side) * f - 1, (s.y + s.side) * f - 1
        fill = COLOUR_RGB[s.colour]
        if s.shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=fill)
        elif s.shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=fill)
        else:  # triangle, apex up
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=fill)
    return canvas.resize((size, size), Image.Resampling.BOX)


def generate(config: SyntheticConfig) -> list[SyntheticItem]:
    """Draw ``config.n_images`` items. Image ``i`` depends only on the seed, ``i`` and the
    drawing parameters, so a larger ``n_images`` extends a smaller one."""
    splits = assign_splits(config.n_images, config.split_fractions, config.seed)
    items = []
    for i in range(config.n_images):
        rng = np.random.default_rng(np.random.SeedSequence([config.seed, 0, i]))
        shapes, background = _sample_scene(config, rng)
        image = _draw(config, shapes, background, rng)
        captions = captions_for(shapes, config.arrangement)
        # Canonical first, then distinct paraphrases in a random order.
        others = [captions[j] for j in rng.permutation(np.arange(1, len(captions)))]
        items.append(
            SyntheticItem(
                index=i,
                file_name=f"synth_{i:05d}{config.extension}",
                image=image,
                captions=[captions[0], *others[: config.captions_per_image - 1]],
                shapes=shapes,
                background=background,
                split=splits[i],
            )
        )
    return items


# ---------------------------------------------------------------------------------------------
# writing

SYNTHETIC_CONFIG_FILE = "synthetic.json"
_IMAGEFOLDER_DIRS = {"train": "train", "val": "validation", "test": "test"}


def encode_image(image: Image.Image, config: SyntheticConfig) -> bytes:
    """The file bytes of ``image`` in the config's format (JPEG without chroma subsampling:
    the shapes' colours stay clean)."""
    buf = io.BytesIO()
    if config.image_format == "jpeg":
        image.save(buf, format="JPEG", quality=config.jpeg_quality, subsampling=0)
    else:
        image.save(buf, format="PNG")
    return buf.getvalue()


def _write_text(path: Path, text: str) -> None:
    atomic_write(path, text)


def _write_json(path: Path, obj: Any) -> None:
    atomic_write_json(path, obj, indent=1, sort_keys=True)


def _write_images(
    items: list[SyntheticItem], folder_of: dict[str, Path], config: SyntheticConfig
) -> None:
    for item in items:
        folder = folder_of[item.split]
        folder.mkdir(parents=True, exist_ok=True)
        (folder / item.file_name).write_bytes(encode_image(item.image, config))


def _split_files(root: Path, items: list[SyntheticItem]) -> None:
    for split, fname in FLICKR8K_SPLIT_FILES.items():
        names = [it.file_name for it in items if it.split == split]
        _write_text(root / fname, "".join(n + "\n" for n in names))


def _coco_files(root: Path, items: list[SyntheticItem], config: SyntheticConfig) -> None:
    # Karpathy style: one file with every split.
    images, sentid = [], 0
    for item in items:
        sents = []
        for cap in item.captions:
            sents.append({"raw": cap, "tokens": cap.split(), "imgid": item.index, "sentid": sentid})
            sentid += 1
        images.append(
            {
                "filepath": "images",
                "filename": item.file_name,
                "imgid": item.index,
                "split": item.split,
                "sentids": [s["sentid"] for s in sents],
                "sentences": sents,
            }
        )
    _write_json(root / "dataset_synthetic.json", {"dataset": "synthetic", "images": images})
    # Standard COCO caption files, one per split, for tools that want those.
    size = config.image_size
    ann_id = 0
    for split in SPLITS:
        coco: dict[str, Any] = {
            "info": {"description": "imcap synthetic shapes", "version": "1.0"},
            "licenses": [],
            "images": [],
            "annotations": [],
        }
        for item in items:
            if item.split != split:
                continue
            coco["images"].append(
                {"id": item.index, "file_name": item.file_name, "width": size, "height": size}
            )
            for cap in item.captions:
                coco["annotations"].append({"id": ann_id, "image_id": item.index, "caption": cap})
                ann_id += 1
        _write_json(root / "annotations" / f"captions_{split}.json", coco)


def write_dataset(
    out_dir: Path | str,
    config: SyntheticConfig,
    layout: str = "flickr8k",
    *,
    items: list[SyntheticItem] | None = None,
    metadata_format: str = "csv",
) -> Path:
    """Generate (or take ``items`` from :func:`generate`) and write them under ``out_dir`` in
    ``layout``, so that ``read_dataset(layout, out_dir)`` reads them back with their splits:

    * ``flickr8k``: ``Flickr8k.token.txt`` (``name#N<TAB>caption``), the three
      ``Flickr_8k.*Images.txt`` split files, images in ``Flicker8k_Dataset/``;
    * ``captions_txt``: ``captions.txt`` (``image,caption``), images in ``Images/``, plus the
      Flickr8k split files (which the reader prefers to hashing) to keep the splits;
    * ``coco``: ``dataset_synthetic.json`` (Karpathy style, all splits; read by default) and
      ``annotations/captions_{train,val,test}.json`` (standard COCO), images in ``images/``;
    * ``imagefolder``: ``train/``, ``validation/``, ``test/`` each with its images and a
      ``metadata.csv`` (or ``metadata.jsonl`` with ``metadata_format="jsonl"``), one row per
      caption; empty splits get no folder.

    ``synthetic.json`` (the config and every scene) is written too. Returns ``out_dir``.
    """
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if metadata_format not in ("csv", "jsonl"):
        raise ValueError("metadata_format must be 'csv' or 'jsonl'")
    root = Path(out_dir)
    root.mkdir(parents=True, exist_ok=True)
    if items is None:
        items = generate(config)

    if layout == "flickr8k":
        _write_images(items, dict.fromkeys(SPLITS, root / "Flicker8k_Dataset"), config)
        lines = [
            f"{it.file_name}#{k}\t{cap}\n" for it in items for k, cap in enumerate(it.captions)
        ]
        _write_text(root / "Flickr8k.token.txt", "".join(lines))
        _split_files(root, items)
    elif layout == "captions_txt":
        _write_images(items, dict.fromkeys(SPLITS, root / "Images"), config)
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(["image", "caption"])
        writer.writerows([it.file_name, cap] for it in items for cap in it.captions)
        _write_text(root / "captions.txt", buf.getvalue())
        _split_files(root, items)
    elif layout == "coco":
        _write_images(items, dict.fromkeys(SPLITS, root / "images"), config)
        _coco_files(root, items, config)
    else:  # imagefolder
        folders = {s: root / d for s, d in _IMAGEFOLDER_DIRS.items()}
        _write_images(items, folders, config)
        for split, folder in folders.items():
            rows = [(it.file_name, cap) for it in items if it.split == split for cap in it.captions]
            if not rows:
                continue
            if metadata_format == "csv":
                buf = io.StringIO()
                writer = csv.writer(buf, lineterminator="\n")
                writer.writerow(["file_name", "text"])
                writer.writerows(rows)
                _write_text(folder / "metadata.csv", buf.getvalue())
            else:
                _write_text(
                    folder / "metadata.jsonl",
                    "".join(json.dumps({"file_name": f, "text": t}) + "\n" for f, t in rows),
                )

    _write_json(
        root / SYNTHETIC_CONFIG_FILE,
        {"config": config.to_dict(), "layout": layout, "scenes": [it.scene() for it in items]},
    )
    return root
