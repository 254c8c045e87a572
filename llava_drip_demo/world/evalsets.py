"""Held-out evaluation sets of the demo world, as records in the real benchmarks' formats (no file writes).

- `reserve_zeroshot`: single-shape scenes per colour-shape class, kept out of every training set;
- `build_scienceqa`: ScienceQA's problems.json / pid_splits.json plus LLaVA-1.5's llava_test_CQM-A.json;
- `build_bench`: LLaVA-Bench-in-the-Wild's questions.jsonl / context.jsonl / answers_gpt4.jsonl.

Image scenes are drawn with `avoid` = the training scene keys, so no test scene spec is ever trained on.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from llava_drip_demo.world.choice import LETTERS, TEMPLATE_NAMES, Balancer, Choice, format_options, make_choice
from llava_drip_demo.world.datasets import IMAGE_TOKEN, Part
from llava_drip_demo.world.questions import complex_qa, qa_detail, random_qas
from llava_drip_demo.world.scene import (
    CELLS,
    COLOR_NAMES,
    KINDS,
    MAX_SHAPES,
    SIZES,
    Scene,
    SceneKey,
    caption,
    sample_scene,
    single_shape_scene,
)

ZEROSHOT_DIR = "zeroshot"
SQA_DIR = "eval/scienceqa"
BENCH_DIR = "eval/llava-bench-in-the-wild"
MAX_ZEROSHOT_PER_CLASS = 12  # of the 18 (size, cell) variants of a class; the rest stay available for training
BENCH_CATEGORIES = ("conv", "detail", "complex")
REFERENCE_MODEL = "demo-world-reference"  # model_id of the exact reference answers (GPT-4's place in the real set)


def zeroshot_classes() -> list[tuple[str, str, str]]:
    """(folder, class name, ...) sorted by folder, which is the label order torchvision's ImageFolder assigns."""
    return sorted((f"{c}_{k}", f"{c} {k}", k) for c in COLOR_NAMES for k in KINDS)


def reserve_zeroshot(rng: np.random.Generator, per_class: int) -> Part:
    """`per_class` distinct single-shape scenes per colour-shape class, at `zeroshot/<color>_<kind>/NNN.png`."""
    if not 0 <= per_class <= MAX_ZEROSHOT_PER_CLASS:
        raise ValueError(f"per_class must be in [0, {MAX_ZEROSHOT_PER_CLASS}], got {per_class}")
    part = Part()
    variants = [(z, cell) for z in SIZES for cell in range(len(CELLS))]
    for folder, name, _ in zeroshot_classes():
        color, kind = name.split()
        for j, v in enumerate(rng.choice(len(variants), size=per_class, replace=False).tolist()):
            size, cell = variants[v]
            part.images[f"{ZEROSHOT_DIR}/{folder}/{j:03d}.png"] = single_shape_scene(rng, kind, color, size, cell)
    return part


@dataclass
class ScienceQA:
    problems: dict[str, dict] = field(default_factory=dict)  # problems.json
    llava: list[dict] = field(default_factory=list)  # llava_test_CQM-A.json
    images: dict[str, Scene] = field(default_factory=dict)  # path relative to the output root -> scene
    scenes: dict[str, Scene] = field(default_factory=dict)  # pid -> scene, text-only items included

    @property
    def pid_splits(self) -> dict[str, list[str]]:
        ids = list(self.problems)
        return {"train": [], "val": [], "test": ids, "minival": [], "minitest": ids}


def sqa_prompt(c: Choice, context: str, with_image: bool) -> str:
    """LLaVA-1.5's CQM-A human turn: [<image>\\n][Context: ...\\n]question\\nA. ...\\nB. ..."""
    head = f"{IMAGE_TOKEN}\n" if with_image else ""
    ctx = f"Context: {context}\n" if context else ""
    return f"{head}{ctx}{c.question}\n{format_options(c.options)}"


def _sqa_problem(c: Choice, context: str, with_image: bool) -> dict:
    return {
        "question": c.question,
        "choices": list(c.options),
        "answer": c.answer,
        "hint": context,
        "image": "image.png" if with_image else None,
        "task": "closed choice",
        "grade": "grade1",
        "subject": "natural science",
        "topic": "shapes",
        "category": c.template,  # the question template: blind_baseline_accuracy groups by it
        "skill": f"identify {c.template}",
        "lecture": "",
        "solution": c.solution,
        "split": "test",
    }


def build_scienceqa(
    rng: np.random.Generator, n: int, avoid: Collection[SceneKey], text_only_frac: float = 0.1
) -> ScienceQA:
    """`n` questions cycling over the templates; every 1/`text_only_frac`-th item is text-only, its scene given
    as a caption in the Context instead of as an image."""
    out = ScienceQA()
    balancer = Balancer(rng)
    for i in range(n):
        pid = str(i + 1)  # ScienceQA ids are decimal strings
        c = make_choice(rng, balancer, TEMPLATE_NAMES[i % len(TEMPLATE_NAMES)], avoid)
        text_only = int((i + 1) * text_only_frac) > int(i * text_only_frac)
        context = caption(c.scene) if text_only else ""
        out.problems[pid] = _sqa_problem(c, context, not text_only)
        out.scenes[pid] = c.scene
        record = {"id": pid}
        if not text_only:
            record["image"] = f"{pid}/image.png"
            out.images[f"{SQA_DIR}/images/test/{pid}/image.png"] = c.scene
        record["conversations"] = [
            {"from": "human", "value": sqa_prompt(c, context, not text_only)},
            {"from": "gpt", "value": LETTERS[c.answer]},
        ]
        out.llava.append(record)
    return out


@dataclass
class Bench:
    questions: list[dict] = field(default_factory=list)
    context: list[dict] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    images: dict[str, Scene] = field(default_factory=dict)


def _bench_scene(rng: np.random.Generator, avoid: Collection[SceneKey]) -> Scene:
    while True:
        scene = sample_scene(rng, int(rng.integers(2, MAX_SHAPES + 1)))
        if scene.key() not in avoid:
            return scene


def build_bench(rng: np.random.Generator, n: int, avoid: Collection[SceneKey]) -> Bench:
    """`n` questions over ceil(n / 3) images, one per category (conv, detail, complex) per image."""
    out = Bench()
    for i in range(-(-n // len(BENCH_CATEGORIES))):
        scene = _bench_scene(rng, avoid)
        image = f"{i + 1:03d}.png"
        out.images[f"{BENCH_DIR}/images/{image}"] = scene
        out.context.append({"id": f"{i + 1:03d}", "image": image, "caption": caption(scene)})
        qas = (random_qas(rng, scene, 1)[0], qa_detail(rng, scene), complex_qa(rng, scene))
        for category, qa in zip(BENCH_CATEGORIES, qas, strict=True):
            qid = len(out.questions)
            if qid == n:
                break
            out.questions.append({"question_id": qid, "image": image, "text": qa.question, "category": category})
            answer_id = hashlib.sha1(f"{qid}\n{qa.answer}".encode()).hexdigest()[:22]
            out.answers.append(
                {
                    "question_id": qid,
                    "prompt": qa.question,
                    "text": qa.answer,
                    "answer_id": answer_id,
                    "model_id": REFERENCE_MODEL,
                    "metadata": {"template": qa.template},
                }
            )
    return out
