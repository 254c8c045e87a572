"""Free-form questions about a demo-world scene (stage-2 instruct data, LLaVA-Bench) and text-only chat turns.

Each `qa_*` template returns a `QA` whose full-sentence and short answers are computed from the scene, or None
when the scene cannot support the question unambiguously (e.g. "What color is the circle?" with two circles).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from llava_drip_demo.world.scene import (
    CELLS,
    COLOR_NAMES,
    KINDS,
    RELATIONS,
    Scene,
    article,
    cell_phrase,
    count_phrase,
    detailed_description,
    join_and,
    relation_holds,
    relation_words,
    shape_phrase,
)

T = TypeVar("T")
SHORT_SUFFIX = "Answer the question using a single word or phrase."  # LLaVA-1.5's VQA prompt
DETAIL_PROMPTS = (
    "Describe the image in detail.",
    "Give a detailed description of this picture.",
    "What do you see in this image? Describe every object.",
    "Describe the following image.",
)


@dataclass(frozen=True)
class QA:
    template: str  # name of the template that produced it
    question: str
    answer: str  # full sentence
    short: str  # single word or number, for SHORT_SUFFIX prompts


def pick(rng: np.random.Generator, items: Sequence[T]) -> T:
    return items[int(rng.integers(len(items)))]


def _there(n: int, noun: str) -> str:
    return f"There {'is' if n == 1 else 'are'} {count_phrase(n, noun)}."


def qa_count(rng: np.random.Generator, scene: Scene) -> QA:
    n = len(scene.shapes)
    q = pick(rng, ("How many shapes are there in the image?", "How many objects can you see?"))
    return QA("count", q, _there(n, "shape"), str(n))


def qa_count_kind(rng: np.random.Generator, scene: Scene) -> QA:
    kind = pick(rng, KINDS)
    n = len(scene.find(kind=kind))
    return QA("count_kind", f"How many {kind}s are there in the image?", _there(n, kind), str(n))


def qa_count_color(rng: np.random.Generator, scene: Scene) -> QA:
    color = pick(rng, COLOR_NAMES)
    n = len(scene.find(color=color))
    return QA("count_color", f"How many {color} shapes are there?", _there(n, f"{color} shape"), str(n))


def qa_color(rng: np.random.Generator, scene: Scene) -> QA | None:
    kinds = [k for k in KINDS if len(scene.find(kind=k)) == 1]
    if not kinds:
        return None
    s = scene.find(kind=pick(rng, kinds))[0]
    q = pick(rng, (f"What color is the {s.kind}?", f"Which color does the {s.kind} have?"))
    return QA("color", q, f"The {s.kind} is {s.color}.", s.color)


def qa_kind(rng: np.random.Generator, scene: Scene) -> QA | None:
    colors = [c for c in COLOR_NAMES if len(scene.find(color=c)) == 1]
    if not colors:
        return None
    s = scene.find(color=pick(rng, colors))[0]
    q = pick(rng, (f"What shape is the {s.color} object?", f"Which shape is {s.color}?"))
    return QA("kind", q, f"The {s.color} object is {article(s.kind)} {s.kind}.", s.kind)


def qa_position(rng: np.random.Generator, scene: Scene) -> QA:
    s = pick(rng, scene.shapes)
    q = pick(rng, (f"Where is the {s.name}?", f"Where is the {s.name} located in the image?"))
    return QA("position", q, f"The {s.name} is {cell_phrase(s.cell)}.", CELLS[s.cell])


def qa_size(rng: np.random.Generator, scene: Scene) -> QA:
    s = pick(rng, scene.shapes)
    return QA("size", f"Is the {s.name} large or small?", f"The {s.name} is {s.size}.", s.size)


def qa_relation(rng: np.random.Generator, scene: Scene) -> QA | None:
    """Yes and no answers equally likely whenever the scene allows both."""
    triples = [(a, b, r) for a in scene.shapes for b in scene.shapes if a != b for r in RELATIONS]
    if not triples:
        return None
    want = bool(rng.integers(2))
    pool = [t for t in triples if relation_holds(*t) == want] or triples
    a, b, r = pick(rng, pool)
    rel = relation_words(r)
    q = f"Is the {a.name} {rel} the {b.name}?"
    if relation_holds(a, b, r):
        return QA("relation", q, f"Yes, the {a.name} is {rel} the {b.name}.", "yes")
    return QA("relation", q, f"No, the {a.name} is not {rel} the {b.name}.", "no")


def qa_exists(rng: np.random.Generator, scene: Scene) -> QA:
    """Half the questions ask about a shape that is present, half about one that is absent."""
    if rng.integers(2):
        s = pick(rng, scene.shapes)
        a = f"{article(s.name)} {s.name}"
        return QA("exists", f"Is there {a} in the image?", f"Yes, there is {a} {cell_phrase(s.cell)}.", "yes")
    absent = [f"{c} {k}" for c in COLOR_NAMES for k in KINDS if not scene.find(kind=k, color=c)]
    name = pick(rng, absent)
    q = f"Is there {article(name)} {name} in the image?"
    return QA("exists", q, f"No, there is no {name} in the image.", "no")


def qa_detail(rng: np.random.Generator, scene: Scene) -> QA:
    return QA("detail", pick(rng, DETAIL_PROMPTS), detailed_description(scene), "")


QA_TEMPLATES: dict[str, Callable[[np.random.Generator, Scene], QA | None]] = {
    "count": qa_count,
    "count_kind": qa_count_kind,
    "count_color": qa_count_color,
    "color": qa_color,
    "kind": qa_kind,
    "position": qa_position,
    "size": qa_size,
    "relation": qa_relation,
    "exists": qa_exists,
}


def random_qas(rng: np.random.Generator, scene: Scene, k: int) -> list[QA]:
    """Up to `k` questions from distinct templates, in random order."""
    out: list[QA] = []
    for name in rng.permutation(sorted(QA_TEMPLATES)).tolist():
        qa = QA_TEMPLATES[name](rng, scene)
        if qa is not None:
            out.append(qa)
        if len(out) == k:
            break
    return out


# ---- LLaVA-Bench "complex" (reasoning) questions -----------------------------------------------------------------


def _complex_majority(rng: np.random.Generator, scene: Scene) -> QA:
    kind = pick(rng, KINDS)
    a = len(scene.find(kind=kind))
    b = len(scene.shapes) - a
    counts = f"{count_phrase(a, kind)} and {count_phrase(b, 'other shape')}"
    q = f"Are there more {kind}s than other shapes in this image? Explain your answer."
    if a > b:
        return QA("majority", q, f"Yes. The image has {counts}, so the {kind}s outnumber the other shapes.", "yes")
    return QA("majority", q, f"No. The image has {counts}, so the {kind}s do not outnumber the other shapes.", "no")


def _complex_remove(rng: np.random.Generator, scene: Scene) -> QA:
    s = pick(rng, scene.shapes)
    rest = [o for o in scene.shapes if o != s]
    q = f"If the {s.name} were taken away, how many shapes would be left, and what would they be?"
    if not rest:
        return QA("remove", q, f"No shapes would be left: the {s.name} was the only shape.", "0")
    head = count_phrase(len(rest), "shape")
    answer = f"{head[0].upper()}{head[1:]} would be left: {join_and([shape_phrase(o) for o in rest])}."
    return QA("remove", q, answer, str(len(rest)))


def _complex_highest(rng: np.random.Generator, scene: Scene) -> QA:
    top = min(s.row for s in scene.shapes)
    tops = [s for s in scene.shapes if s.row == top]
    q = "Which shape is the highest in the image, and what color is it?"
    if len(tops) == 1:
        s = tops[0]
        return QA("highest", q, f"The highest shape is {shape_phrase(s)}; it is {s.color}.", s.name)
    head = count_phrase(len(tops), "shape")
    answer = f"{head[0].upper()}{head[1:]} share the highest row: {join_and([shape_phrase(s) for s in tops])}."
    return QA("highest", q, answer, join_and([s.name for s in tops]))


def _complex_paints(rng: np.random.Generator, scene: Scene) -> QA:
    colors = list(dict.fromkeys(s.color for s in scene.shapes))  # first-seen order, no repeats
    q = "Which paint colors would you need to redraw the shapes in this picture?"
    noun = "color" if len(colors) == 1 else "colors"
    return QA(
        "paints",
        q,
        f"You would need {count_phrase(len(colors), 'paint')}, in {join_and(colors)} {noun}.",
        join_and(colors),
    )


COMPLEX_TEMPLATES = (_complex_majority, _complex_remove, _complex_highest, _complex_paints)


def complex_qa(rng: np.random.Generator, scene: Scene) -> QA:
    """One reasoning question whose answer needs several facts of the scene."""
    return pick(rng, COMPLEX_TEMPLATES)(rng, scene)


# ---- text-only chat (keeps the language model conversational) -----------------------------------------------------

MIXES = {("blue", "yellow"): "green", ("red", "yellow"): "orange", ("red", "blue"): "purple"}
OPPOSITES = {"left": "right", "right": "left", "top": "bottom", "bottom": "top", "large": "small", "small": "large"}
CORNERS = {"triangle": 3, "square": 4}
GREETINGS = (
    ("Hello!", "Hello! I can answer questions about pictures of simple shapes. What would you like to know?"),
    (
        "What can you do?",
        "I can describe pictures of coloured shapes, count them, and tell you their colors and "
        "positions. I can also do simple arithmetic.",
    ),
)


def _chat_arithmetic(rng: np.random.Generator) -> tuple[str, str]:
    a, b = (int(x) for x in rng.integers(0, 13, size=2))
    op = pick(rng, ("plus", "minus", "times"))
    if op == "minus" and b > a:
        a, b = b, a
    value = {"plus": a + b, "minus": a - b, "times": a * b}[op]
    return f"What is {a} {op} {b}?", f"{a} {op} {b} is {value}."


def _chat_mix(rng: np.random.Generator) -> tuple[str, str]:
    (x, y), z = pick(rng, list(MIXES.items()))
    return f"What color do you get when you mix {x} and {y} paint?", f"Mixing {x} and {y} paint gives {z}."


def _chat_corners(rng: np.random.Generator) -> tuple[str, str]:
    kind = pick(rng, (*CORNERS, "circle"))
    if kind == "circle":
        return "How many corners does a circle have?", "A circle has no corners; its edge is one smooth curve."
    return f"How many corners does a {kind} have?", f"A {kind} has {count_phrase(CORNERS[kind], 'corner')}."


def _chat_next(rng: np.random.Generator) -> tuple[str, str]:
    n = int(rng.integers(0, 99))
    return f"What number comes after {n}?", f"The number after {n} is {n + 1}."


def _chat_opposite(rng: np.random.Generator) -> tuple[str, str]:
    w = pick(rng, list(OPPOSITES))
    return f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}."


def _chat_greeting(rng: np.random.Generator) -> tuple[str, str]:
    return pick(rng, GREETINGS)


CHAT_TEMPLATES = (_chat_arithmetic, _chat_mix, _chat_corners, _chat_next, _chat_opposite, _chat_greeting)


def chat_turns(rng: np.random.Generator, k: int) -> list[tuple[str, str]]:
    """`k` (question, answer) pairs of text-only chat with deterministic answers."""
    return [pick(rng, CHAT_TEMPLATES)(rng) for _ in range(k)]
