"""lmms-eval task functions for a ScienceQA set in LLaVA's ``llava_<split>_CQM-A.json`` format (demo_scienceqa.yaml).

Each document is one item of the prompt file (``id``, ``image`` or null, ``conversations``). The question is the
human turn without its ``<image>`` placeholder, plus the task's ``post_prompt`` (the model puts the placeholder back in
front, as ``model_vqa_science`` does); the answer is scored by ``eval.eval_science_qa.score_problem``, so
``accuracy`` and ``img_accuracy`` (percentages) equal that scorer's on the same answers.
"""

from __future__ import annotations

import math
import os
from typing import Any

from PIL import Image

from eval.eval_science_qa import score_problem
from eval.sqa_data import OPTIONS, SqaProblem, problem_from_item

IMAGE_TOKEN = "<image>"


def _item(doc: dict[str, Any]) -> dict[str, Any]:
    """The prompt file's item: the json loader fills keys an item lacks (``image`` of text-only items) with None."""
    return {k: v for k, v in doc.items() if v is not None}


def _problem(doc: dict[str, Any]) -> SqaProblem:
    return problem_from_item("lmms-eval document", str(doc["id"]), _item(doc))


def sqa_doc_to_visual(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any]) -> list[Image.Image]:
    if not doc.get("image"):
        return []
    path = os.path.join(lmms_eval_specific_kwargs["image_folder"], doc["image"])
    from llava.mm_utils import load_image  # the project's one image loader (lmms-eval runs it with llava)

    return [load_image(path)]


def sqa_doc_to_text(doc: dict[str, Any], lmms_eval_specific_kwargs: dict[str, Any]) -> str:
    human = doc["conversations"][0]["value"]
    return human.replace(IMAGE_TOKEN, "").strip() + lmms_eval_specific_kwargs.get("post_prompt", "")


def sqa_doc_to_target(doc: dict[str, Any]) -> str:
    return OPTIONS[_problem(doc).answer]


def sqa_process_results(doc: dict[str, Any], results: list[str]) -> dict[str, Any]:
    problem = _problem(doc)
    correct = score_problem(problem, {"text": results[0]})["is_correct"]
    return {"accuracy": 100.0 * correct, "img_accuracy": {"correct": correct, "image": problem.has_image}}


def img_accuracy(items: list[dict[str, Any]]) -> float:
    """Accuracy (%) over the image questions (nan without any)."""
    images = [x["correct"] for x in items if x["image"]]
    return 100.0 * sum(images) / len(images) if images else math.nan
