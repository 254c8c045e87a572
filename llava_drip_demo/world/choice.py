"""Multiple-choice questions about demo-world scenes (ScienceQA-format test set, multiple-choice instruct turns).

Every template asks about something the demo's tiny 64-pixel towers see (colour, number, size), and lists its whole
answer set as the options, in a fixed order. Two measurements on the CPU demo chose this (README, "What limits the
CPU demo"): the 1M-parameter demo LLM cannot learn to match an image fact against shuffled option texts at the
demo's budget, and the tiny towers see colour but barely shape. With a fixed list the letter is a fixed function of
the answer, so the LLM only has to read the fact off the image tokens.

A question is built backwards: first its gold answer is drawn from a balanced deck, then a scene that makes it
true. `Balancer` keeps the gold values (and with them the gold letters) equally frequent per template, so a model
that never looks at the image is at chance; `blind_baseline_accuracy` measures the best such model (per template:
always the same letter, or always the same answer text).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from llava_drip_demo.world.questions import pick
from llava_drip_demo.world.scene import (
    CELLS,
    COLOR_NAMES,
    KINDS,
    MAX_SHAPES,
    SIZES,
    Scene,
    SceneKey,
    Shape,
    count_phrase,
    sample_scene,
    shape_list,
)

LETTERS = "ABCDE"
MAX_OPTIONS = 5
MC_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's multiple-choice prompt
# Per template, the options in the order they are shown (at most MAX_OPTIONS; the sixth colour, orange, is never
# asked about so that the colour list fits).
SUPPORTS: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES[:MAX_OPTIONS],
    "count": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
    "size": SIZES,
}
TEMPLATE_NAMES = tuple(SUPPORTS)


@dataclass(frozen=True)
class Choice:
    template: str  # key of SUPPORTS
    question: str
    options: tuple[str, ...]  # SUPPORTS[template]
    answer: int  # index of the gold option
    scene: Scene
    solution: str  # why the gold option is right, from the scene


class Balancer:
    """Deals gold values from reshuffled decks, so each value (per template) is gold equally often over every full
    deck."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._decks: dict[str, list[int]] = defaultdict(list)

    def deal(self, key: str, n: int) -> int:
        deck = self._decks[key]
        if not deck:
            deck.extend(self.rng.permutation(n).tolist())
        return deck.pop()


def _uniform_scene(rng: np.random.Generator, max_n: int, **fixed: str) -> Scene:
    """A scene of 1..`max_n` shapes on distinct cells that all share the `fixed` attributes (color=, size=)."""
    n = int(rng.integers(1, max_n + 1))
    shapes: list[Shape] = []
    for cell in rng.permutation(len(CELLS))[:n].tolist():
        while True:  # (colour, kind) pairs stay unique: at most len(KINDS) shapes may share a colour
            spec = {"kind": pick(rng, KINDS), "color": pick(rng, COLOR_NAMES), "size": pick(rng, SIZES), **fixed}
            shape = Shape(cell=cell, **spec)  # type: ignore[arg-type]
            if all(shape.name != s.name for s in shapes):
                break
        shapes.append(shape)
    return sample_scene(rng, n, shapes)


def _subject(scene: Scene) -> tuple[str, str]:
    """('is the shape', 'The shape is') or ('are the shapes', 'The shapes are'), by the number of shapes."""
    if len(scene.shapes) == 1:
        return "is the shape", "The shape is"
    return "are the shapes", "The shapes are"


Built = tuple[str, Scene, str]  # (question, scene, solution)


def _build_color(rng: np.random.Generator, gold: str) -> Built:
    scene = _uniform_scene(rng, len(KINDS), color=gold)
    verb, says = _subject(scene)
    return f"What color {verb}?", scene, f"{says} {gold}: {shape_list(scene)}."


def _build_count(rng: np.random.Generator, gold: str) -> Built:
    scene = sample_scene(rng, int(gold))
    return (
        "How many shapes are in the image?",
        scene,
        f"There {'is' if gold == '1' else 'are'} " + (f"{count_phrase(int(gold), 'shape')}: {shape_list(scene)}."),
    )


def _build_size(rng: np.random.Generator, gold: str) -> Built:
    scene = _uniform_scene(rng, MAX_SHAPES, size=gold)
    verb, says = _subject(scene)
    return f"What size {verb}?", scene, f"{says} {gold}: {shape_list(scene)}."


BUILDERS: dict[str, Callable[[np.random.Generator, str], Built]] = {
    "color": _build_color,
    "count": _build_count,
    "size": _build_size,
}


def make_choice(
    rng: np.random.Generator, balancer: Balancer, template: str, avoid: Collection[SceneKey] = (), tries: int = 2000
) -> Choice:
    """One balanced multiple-choice question whose scene key is not in `avoid`."""
    support = SUPPORTS[template]
    answer = balancer.deal(template, len(support))
    for _ in range(tries):
        question, scene, solution = BUILDERS[template](rng, support[answer])
        if scene.key() not in avoid:
            break
    else:
        raise RuntimeError(f"no scene for {template}={support[answer]!r} outside `avoid` after {tries} tries")
    return Choice(template, question, support, answer, scene, solution)


def format_options(options: Sequence[str]) -> str:
    """'A. red\\nB. blue' (ScienceQA's CQM-A option block in LLaVA's layout)."""
    return "\n".join(f"{LETTERS[i]}. {o}" for i, o in enumerate(options))


def chance_accuracy(problems: Mapping[str, Mapping]) -> float:
    """Expected accuracy of uniform guessing: mean of 1 / number of choices."""
    return float(np.mean([1.0 / len(p["choices"]) for p in problems.values()]))


def _best_blind(items: Sequence[Mapping]) -> float:
    """Correct answers of the best constant strategy on `items` (one template): a fixed letter, or a fixed answer
    text (guessing uniformly when that text is not offered)."""
    by_letter = max(sum(p["answer"] == i for p in items) for i in range(MAX_OPTIONS))
    golds = {p["choices"][p["answer"]] for p in items}
    by_text = max(
        sum(
            float(p["choices"][p["answer"]] == text) if text in p["choices"] else 1.0 / len(p["choices"]) for p in items
        )
        for text in golds
    )
    return max(float(by_letter), by_text)


def blind_baseline_accuracy(problems: Mapping[str, Mapping], group_by: str = "category") -> float:
    """Accuracy of the best image-blind answerer that knows, per question template (`problems[pid][group_by]`),
    which letter or which answer text is most often right. `problems` is ScienceQA's problems.json schema
    (`choices`, `answer` index). Near `chance_accuracy` when the set is balanced."""
    groups: dict[str, list[Mapping]] = defaultdict(list)
    for p in problems.values():
        groups[p[group_by]].append(p)
    return sum(_best_blind(items) for items in groups.values()) / max(len(problems), 1)
