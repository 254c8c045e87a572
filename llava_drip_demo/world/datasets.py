"""Training sets of the demo world, as records in LLaVA's formats (no file writes).

- stage 1 (`build_pretrain`): LLaVA-Pretrain's blip_laion_cc_sbu_558k.json layout, one caption per image;
- stage 2 (`build_instruct`): llava_v1_5_mix665k.json layout, multi-turn conversations with `<image>\\n` opening
  the first human turn, plus text-only samples (no `image` key), as ShareGPT's are in the real mix;
- CLIP (`build_clip`): (image, caption) rows for open_clip's CSV loader.

Image paths in records are relative to the demo `images/` folder (LLaVA's `--image_folder`).
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field

import numpy as np

from llava_drip_demo.world.choice import MC_SUFFIX, TEMPLATE_NAMES, Balancer, format_options, make_choice
from llava_drip_demo.world.questions import SHORT_SUFFIX, chat_turns, pick, qa_detail, random_qas
from llava_drip_demo.world.scene import MAX_SHAPES, Scene, SceneKey, caption, count_phrase, sample_scene, shape_list

IMAGE_TOKEN = "<image>"
IMAGES_DIR = "images"  # training images, one folder (LLaVA's --image_folder)
# Short-caption prompts in the spirit of LLaVA's stage-1 instructions (our wording).
PRETRAIN_PROMPTS = (
    "Describe the image concisely.",
    "Give a short description of the picture.",
    "Summarize what the image shows.",
    "Write a brief caption for this picture.",
    "Render a clear and concise summary of the photo.",
    "What is in this image? Answer in one sentence.",
)
MIX = {"qa": 0.35, "detail": 0.15, "mc": 0.5}  # kinds of image conversations in stage 2


@dataclass
class Part:
    """Records of one output file and the images they use (path relative to the output root -> scene)."""

    records: list[dict] = field(default_factory=list)
    images: dict[str, Scene] = field(default_factory=dict)


def train_scene(rng: np.random.Generator, avoid: Collection[SceneKey]) -> Scene:
    """A random scene of 1..MAX_SHAPES shapes whose key is not in `avoid` (the held-out zero-shot scenes)."""
    while True:
        scene = sample_scene(rng, int(rng.integers(1, MAX_SHAPES + 1)))
        if scene.key() not in avoid:
            return scene


def pretrain_caption(rng: np.random.Generator, scene: Scene) -> str:
    """One of three caption styles, all listing every shape with size, colour and place."""
    style = int(rng.integers(3))
    if style == 0:
        return caption(scene)
    text = shape_list(scene)
    if style == 1:
        return f"{text[0].upper()}{text[1:]}."
    return f"A picture of {count_phrase(len(scene.shapes), 'shape')}: {text}."


def _human(prompt: str) -> dict:
    return {"from": "human", "value": prompt}


def _gpt(text: str) -> dict:
    return {"from": "gpt", "value": text}


def build_pretrain(rng: np.random.Generator, n: int, avoid: Collection[SceneKey]) -> Part:
    part = Part()
    for i in range(n):
        scene = train_scene(rng, avoid)
        name = f"pretrain_{i:06d}.png"
        prompt = pick(rng, PRETRAIN_PROMPTS)
        human = pick(rng, (f"{IMAGE_TOKEN}\n", f"{prompt}\n{IMAGE_TOKEN}", f"{IMAGE_TOKEN}\n{prompt}"))
        conv = [_human(human), _gpt(pretrain_caption(rng, scene))]
        part.records.append({"id": f"pretrain_{i:06d}", "image": name, "conversations": conv})
        part.images[f"{IMAGES_DIR}/{name}"] = scene
    return part


def _qa_turns(rng: np.random.Generator, scene: Scene) -> list[tuple[str, str]]:
    """1-4 short questions (some in LLaVA-1.5's single-word style), sometimes followed by a detailed description."""
    turns = []
    for qa in random_qas(rng, scene, int(rng.integers(1, 5))):
        if rng.random() < 0.3:
            turns.append((f"{qa.question}\n{SHORT_SUFFIX}", qa.short))
        else:
            turns.append((qa.question, qa.answer))
    if rng.random() < 0.2:
        detail = qa_detail(rng, scene)
        turns.append((detail.question, detail.answer))
    return turns


def _image_conversation(
    rng: np.random.Generator, balancer: Balancer, avoid: Collection[SceneKey]
) -> tuple[Scene, list[tuple[str, str]]]:
    kind = str(rng.choice(list(MIX), p=list(MIX.values())))
    if kind == "mc":
        c = make_choice(rng, balancer, pick(rng, TEMPLATE_NAMES), avoid)
        prompt = f"{c.question}\n{format_options(c.options)}\n{MC_SUFFIX}"
        return c.scene, [(prompt, "ABCDE"[c.answer])]
    scene = train_scene(rng, avoid)
    if kind == "detail":
        detail = qa_detail(rng, scene)
        return scene, [(detail.question, detail.answer)]
    return scene, _qa_turns(rng, scene)


def _conversation(turns: list[tuple[str, str]], with_image: bool) -> list[dict]:
    conv = []
    for j, (q, a) in enumerate(turns):
        conv += [_human(f"{IMAGE_TOKEN}\n{q}" if with_image and j == 0 else q), _gpt(a)]
    return conv


def build_instruct(rng: np.random.Generator, n: int, avoid: Collection[SceneKey], text_only_frac: float = 0.1) -> Part:
    """`n` stage-2 conversations; about `text_only_frac` of them are text-only chat (no `image` key)."""
    part = Part()
    balancer = Balancer(rng)
    for i in range(n):
        sid = f"instruct_{i:06d}"
        if rng.random() < text_only_frac:
            turns = chat_turns(rng, int(rng.integers(1, 3)))
            part.records.append({"id": sid, "conversations": _conversation(turns, with_image=False)})
            continue
        scene, turns = _image_conversation(rng, balancer, avoid)
        name = f"{sid}.png"
        part.records.append({"id": sid, "image": name, "conversations": _conversation(turns, with_image=True)})
        part.images[f"{IMAGES_DIR}/{name}"] = scene
    return part


def build_clip(rng: np.random.Generator, n: int, pretrain: Part, avoid: Collection[SceneKey]) -> Part:
    """`n` rows {filepath (relative to the output root), title}: the pretrain images first (with a freshly drawn
    caption style), then new scenes."""
    part = Part()
    reused = list(pretrain.images.items())[:n]
    for path, scene in reused:
        part.records.append({"filepath": path, "title": pretrain_caption(rng, scene)})
    for i in range(n - len(reused)):
        scene = train_scene(rng, avoid)
        path = f"{IMAGES_DIR}/clip_{i:06d}.png"
        part.records.append({"filepath": path, "title": pretrain_caption(rng, scene)})
        part.images[path] = scene
    return part
