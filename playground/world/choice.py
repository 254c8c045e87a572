"""Multiple-choice questions about demo-world scenes (ScienceQA-format test set, multiple-choice instruct turns).

A question is built backwards: first its gold answer is drawn from a balanced deck, then a scene that makes it
true. `Balancer` keeps both the gold values and the gold letters equally frequent per template, and distractors are
drawn from the same support as the gold value, so a model that never looks at the image is at chance;
`blind_baseline_accuracy` measures the best such model (per template: always the same letter, or always the same
answer text when offered).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from playground.world.questions import pick
from playground.world.scene import (
    CELLS,
    COLOR_NAMES,
    KINDS,
    MAX_SHAPES,
    RELATIONS,
    SIZES,
    Scene,
    SceneKey,
    Shape,
    cell_phrase,
    count_phrase,
    relation_holds,
    relation_words,
    sample_scene,
    shape_list,
)

LETTERS = "ABCDE"
MAX_OPTIONS = 5
MC_SUFFIX = "Answer with the option's letter from the given choices directly."  # LLaVA-1.5's multiple-choice prompt
COMBOS = tuple(f"{c} {k}" for c in COLOR_NAMES for k in KINDS)
SUPPORTS: dict[str, tuple[str, ...]] = {
    "color": COLOR_NAMES,
    "shape": KINDS,
    "count": tuple(str(n) for n in range(1, MAX_SHAPES + 1)),
    "position": CELLS,
    "size": SIZES,
    "relation": ("yes", "no"),
    "present": COMBOS,
}
TEMPLATE_NAMES = tuple(SUPPORTS)


@dataclass(frozen=True)
class Choice:
    template: str  # key of SUPPORTS
    question: str
    options: tuple[str, ...]  # 2..5 option texts
    answer: int  # index of the gold option
    scene: Scene
    solution: str  # why the gold option is right, from the scene


class Balancer:
    """Deals gold values and gold positions from reshuffled decks, so each value (per template) and each
    position (per template and option count) is gold equally often over every full deck."""

    def __init__(self, rng: np.random.Generator) -> None:
        self.rng = rng
        self._decks: dict[tuple, list[int]] = defaultdict(list)

    def deal(self, key: tuple, n: int) -> int:
        deck = self._decks[key]
        if not deck:
            deck.extend(self.rng.permutation(n).tolist())
        return deck.pop()


def _random_shape(rng: np.random.Generator, **fixed: str | int) -> Shape:
    spec = {
        "kind": pick(rng, KINDS),
        "color": pick(rng, COLOR_NAMES),
        "size": pick(rng, SIZES),
        "cell": int(rng.integers(len(CELLS))),
    }
    spec.update(fixed)
    return Shape(**spec)  # type: ignore[arg-type]


def _n(rng: np.random.Generator, low: int = 1) -> int:
    return int(rng.integers(low, MAX_SHAPES + 1))


Built = tuple[str, Scene, str]  # (question, scene, solution)


def _build_color(rng: np.random.Generator, gold: str) -> Built:
    t = _random_shape(rng, color=gold)
    scene = sample_scene(rng, _n(rng), [t], allow=lambda s: s.kind != t.kind)
    return f"What color is the {t.kind}?", scene, f"The {t.kind} is {gold}."


def _build_shape(rng: np.random.Generator, gold: str) -> Built:
    t = _random_shape(rng, kind=gold)
    scene = sample_scene(rng, _n(rng), [t], allow=lambda s: s.color != t.color)
    return f"Which shape is {t.color}?", scene, f"The {t.color} shape is a {gold}."


def _build_count(rng: np.random.Generator, gold: str) -> Built:
    scene = sample_scene(rng, int(gold))
    return (
        "How many shapes are in the image?",
        scene,
        f"There {'is' if gold == '1' else 'are'} " + (f"{count_phrase(int(gold), 'shape')}: {shape_list(scene)}."),
    )


def _build_position(rng: np.random.Generator, gold: str) -> Built:
    t = _random_shape(rng, cell=CELLS.index(gold))
    scene = sample_scene(rng, _n(rng), [t])
    return f"Where is the {t.name}?", scene, f"The {t.name} is {cell_phrase(t.cell)}."


def _build_size(rng: np.random.Generator, gold: str) -> Built:
    t = _random_shape(rng, size=gold)
    scene = sample_scene(rng, _n(rng), [t])
    return f"What size is the {t.name}?", scene, f"The {t.name} is {gold}."


def _build_relation(rng: np.random.Generator, gold: str) -> Built:
    rel = pick(rng, RELATIONS)
    while True:  # about a third of cell pairs satisfy a relation: this ends after a few draws
        ca, cb = (int(c) for c in rng.choice(len(CELLS), size=2, replace=False))
        a, b = _random_shape(rng, cell=ca), _random_shape(rng, cell=cb)
        if a.name != b.name and relation_holds(a, b, rel) == (gold == "yes"):
            break
    scene = sample_scene(rng, _n(rng, 2), [a, b])
    verb = "is" if gold == "yes" else "is not"
    question = f"Is the {a.name} {relation_words(rel)} the {b.name}?"
    return (
        question,
        scene,
        f"The {a.name} is {cell_phrase(a.cell)} and the {b.name} is {cell_phrase(b.cell)}, "
        + (f"so the {a.name} {verb} {relation_words(rel)} the {b.name}."),
    )


def _build_present(rng: np.random.Generator, gold: str) -> Built:
    color, kind = gold.split()
    scene = sample_scene(rng, _n(rng), [_random_shape(rng, kind=kind, color=color)])
    return "Which of these shapes is in the image?", scene, f"The image shows {shape_list(scene)}."


BUILDERS: dict[str, Callable[[np.random.Generator, str], Built]] = {
    "color": _build_color,
    "shape": _build_shape,
    "count": _build_count,
    "position": _build_position,
    "size": _build_size,
    "relation": _build_relation,
    "present": _build_present,
}


def _distractor_pool(template: str, gold: str, scene: Scene) -> list[str]:
    if template == "present":  # every other option must be absent from the scene
        return [c for c in COMBOS if not scene.find(kind=c.split()[1], color=c.split()[0])]
    return [v for v in SUPPORTS[template] if v != gold]


def make_choice(
    rng: np.random.Generator, balancer: Balancer, template: str, avoid: Collection[SceneKey] = (), tries: int = 2000
) -> Choice:
    """One balanced multiple-choice question whose scene key is not in `avoid`."""
    support = SUPPORTS[template]
    gold = support[balancer.deal(("gold", template), len(support))]
    for _ in range(tries):
        question, scene, solution = BUILDERS[template](rng, gold)
        if scene.key() not in avoid:
            break
    else:
        raise RuntimeError(f"no scene for {template}={gold!r} outside `avoid` after {tries} tries")
    pool = _distractor_pool(template, gold, scene)
    k = int(rng.integers(2, min(MAX_OPTIONS, len(support)) + 1))
    distractors = [pool[i] for i in rng.choice(len(pool), size=k - 1, replace=False)]
    pos = balancer.deal(("letter", template, k), k)
    options = (*distractors[:pos], gold, *distractors[pos:])
    return Choice(template, question, options, pos, scene, solution)


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
