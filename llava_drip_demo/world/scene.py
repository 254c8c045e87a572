"""Scene specs of the synthetic demo world and the texts derived from them.

A scene is 1-4 coloured shapes (circle, square, triangle) of two sizes placed on distinct cells of a 3x3 grid, with
every (colour, shape) pair at most once so that "the red circle" always names one object. Every caption, answer and
option in the demo data is computed from a `Scene` by the functions below, so tests can check texts against specs.
Only `Scene.key()` identifies a scene: background tone and position jitter are rendering details.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

KINDS = ("circle", "square", "triangle")
# Hues far apart so a 64x64 render keeps them apart after anti-aliasing.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 38, 38),
    "green": (30, 160, 60),
    "blue": (37, 84, 225),
    "yellow": (240, 200, 20),
    "purple": (140, 55, 190),
    "orange": (245, 125, 20),
}
COLOR_NAMES = tuple(COLORS)
SIZES = ("small", "large")
CELLS = ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right")
BACKGROUNDS = ((255, 255, 255), (244, 244, 244), (234, 236, 240))
MAX_SHAPES = 4
NUMBER_WORDS = ("no", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
RELATIONS = ("left of", "right of", "above", "below")

ShapeKey = tuple[str, str, str, int]  # (kind, color, size, cell)
SceneKey = tuple[ShapeKey, ...]  # sorted by cell


@dataclass(frozen=True)
class Shape:
    kind: str  # one of KINDS
    color: str  # one of COLOR_NAMES
    size: str  # one of SIZES
    cell: int  # 0..8, row-major on the 3x3 grid (0 = top-left)

    @property
    def row(self) -> int:
        return self.cell // 3

    @property
    def col(self) -> int:
        return self.cell % 3

    @property
    def name(self) -> str:
        """Referring expression without article, unique within a scene: "red circle"."""
        return f"{self.color} {self.kind}"

    def key(self) -> ShapeKey:
        return (self.kind, self.color, self.size, self.cell)


@dataclass(frozen=True)
class Scene:
    shapes: tuple[Shape, ...]  # sorted by cell (reading order)
    bg: int = field(default=0, compare=False)  # index into BACKGROUNDS
    jitter: tuple[tuple[float, float], ...] = field(default=(), compare=False)  # per shape, in [-1, 1]

    def key(self) -> SceneKey:
        return tuple(s.key() for s in self.shapes)

    def to_dict(self) -> dict:
        return {"shapes": [s.key() for s in self.shapes], "background": self.bg, "jitter": list(self.jitter)}

    def find(self, kind: str | None = None, color: str | None = None) -> list[Shape]:
        return [s for s in self.shapes if kind in (None, s.kind) and color in (None, s.color)]


def scene_from_dict(d: dict) -> Scene:
    """Inverse of `Scene.to_dict` (JSON turns tuples into lists)."""
    shapes = tuple(Shape(str(k), str(c), str(z), int(cell)) for k, c, z, cell in d["shapes"])
    return Scene(shapes, int(d["background"]), tuple((float(x), float(y)) for x, y in d["jitter"]))


def _finish(rng: np.random.Generator, shapes: Sequence[Shape]) -> Scene:
    ordered = tuple(sorted(shapes, key=lambda s: s.cell))
    jitter = tuple((round(float(x), 3), round(float(y), 3)) for x, y in rng.uniform(-1, 1, size=(len(ordered), 2)))
    return Scene(ordered, bg=int(rng.integers(len(BACKGROUNDS))), jitter=jitter)


def random_shape(rng: np.random.Generator, cell: int) -> Shape:
    return Shape(KINDS[rng.integers(len(KINDS))], COLOR_NAMES[rng.integers(len(COLORS))], SIZES[rng.integers(2)], cell)


def sample_scene(
    rng: np.random.Generator,
    n: int,
    required: Sequence[Shape] = (),
    allow: Callable[[Shape], bool] | None = None,
) -> Scene:
    """A scene of `n` shapes containing `required` (fully specified, distinct cells and names) plus random shapes
    that pass `allow` and keep (colour, kind) pairs unique."""
    if not len(required) <= n <= MAX_SHAPES:
        raise ValueError(f"need len(required) <= n <= {MAX_SHAPES}, got n={n} with {len(required)} required")
    shapes = list(required)
    names = {(s.color, s.kind) for s in shapes}
    free = [c for c in rng.permutation(len(CELLS)).tolist() if c not in {s.cell for s in shapes}]
    for cell in free[: n - len(shapes)]:
        for _ in range(100):
            s = random_shape(rng, cell)
            if (s.color, s.kind) not in names and (allow is None or allow(s)):
                break
        else:
            raise RuntimeError("no shape satisfies the scene constraints")
        shapes.append(s)
        names.add((s.color, s.kind))
    return _finish(rng, shapes)


def single_shape_scene(rng: np.random.Generator, kind: str, color: str, size: str, cell: int) -> Scene:
    return _finish(rng, [Shape(kind, color, size, cell)])


# ---- words -------------------------------------------------------------------------------------------------------


def cell_phrase(cell: int) -> str:
    """Where a grid cell is, as a prepositional phrase: "in the top-left corner", "at the top", "in the center"."""
    name = CELLS[cell]
    if "-" in name:
        return f"in the {name} corner"
    return {"top": "at the top", "bottom": "at the bottom", "left": "on the left", "right": "on the right"}.get(
        name, "in the center"
    )


def article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def count_phrase(n: int, noun: str) -> str:
    """'no circles', 'one circle', 'three shapes'."""
    word = NUMBER_WORDS[n] if n < len(NUMBER_WORDS) else str(n)
    return f"{word} {noun}" + ("" if n == 1 else "s")


def shape_phrase(s: Shape, size: bool = True, where: bool = True) -> str:
    """'a large red circle in the top-left corner'."""
    words = f"{s.size} {s.name}" if size else s.name
    text = f"{article(words)} {words}"
    return f"{text} {cell_phrase(s.cell)}" if where else text


def join_and(items: Sequence[str]) -> str:
    if len(items) <= 1:
        return "".join(items)
    return ", ".join(items[:-1]) + " and " + items[-1]


def relation_holds(a: Shape, b: Shape, relation: str) -> bool:
    """Grid relations compare rows/columns strictly: shapes in the same column are neither left nor right."""
    return {
        "left of": a.col < b.col,
        "right of": a.col > b.col,
        "above": a.row < b.row,
        "below": a.row > b.row,
    }[relation]


def relation_words(relation: str) -> str:
    return {"left of": "to the left of", "right of": "to the right of"}.get(relation, relation)


def shape_list(scene: Scene) -> str:
    """'a large red circle in the top-left corner and a small blue square in the center'."""
    return join_and([shape_phrase(s) for s in scene.shapes])


def caption(scene: Scene) -> str:
    """The canonical one-sentence caption (LLaVA-Bench context, ScienceQA text context)."""
    head = count_phrase(len(scene.shapes), "shape")
    return f"{head[0].upper()}{head[1:]} on a plain background: {shape_list(scene)}."


def kind_summary(scene: Scene) -> str:
    """'two circles and one triangle'."""
    counts = [(k, len(scene.find(kind=k))) for k in KINDS]
    return join_and([count_phrase(c, k) for k, c in counts if c])


def detailed_description(scene: Scene) -> str:
    """A multi-sentence description: every shape with size, colour and place, then totals and one relation."""
    n = len(scene.shapes)
    parts = [f"The image shows {count_phrase(n, 'shape')} on a plain, light background."]
    for s in scene.shapes:
        where = cell_phrase(s.cell)
        parts.append(f"{where[0].upper()}{where[1:]} there is {shape_phrase(s, where=False)}.")
    if n > 1:
        parts.append(f"Altogether the image contains {kind_summary(scene)}.")
        a, b = scene.shapes[0], scene.shapes[-1]
        rel = next((r for r in RELATIONS if relation_holds(a, b, r)), None)
        if rel is not None:
            parts.append(f"The {a.name} is {relation_words(rel)} the {b.name}.")
    return " ".join(parts)
