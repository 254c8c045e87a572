"""Tests for the synthetic demo world (python -m llava_drip_demo.demo_world): determinism, held-out splits, file formats
(LLaVA stage 1/2, ScienceQA CQM-A, LLaVA-Bench, open_clip CSV, zero-shot ImageFolder) and answers vs scene specs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from llava_drip_demo.demo_world import (
    WorldConfig,
    _check_disjoint,
    blind_baseline_accuracy,
    chance_accuracy,
    generate,
    main,
)
from llava_drip_demo.world.choice import LETTERS, MC_SUFFIX
from llava_drip_demo.world.evalsets import build_scienceqa
from llava_drip_demo.world.questions import DETAIL_PROMPTS
from llava_drip_demo.world.scene import (
    CELLS,
    Scene,
    caption,
    cell_phrase,
    count_phrase,
    detailed_description,
    scene_from_dict,
)

ROOT = Path(__file__).resolve().parents[2]
SMALL = WorldConfig(n_pretrain=40, n_instruct=80, n_sqa=70, n_bench=8, n_clip=50, n_zeroshot_per_class=2)
SQA_RE = re.compile(
    r"^(?P<image><image>\n)?(?:Context: (?P<context>[^\n]+)\n)?(?P<question>[^\n]+\?)\n"
    r"(?P<options>[A-E]\. [^\n]+(?:\n[A-E]\. [^\n]+){1,4})$"
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("world")
    generate(out, SMALL)
    return out


def _load(path: Path) -> object:
    return json.loads(path.read_text())


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def _scenes(world: Path) -> dict[str, Scene]:
    return {k: scene_from_dict(v) for k, v in _load(world / "scenes.json").items()}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_bytes(world: Path, tmp_path: Path) -> None:
    generate(tmp_path / "again", SMALL)
    assert _files(world) == _files(tmp_path / "again")


def test_different_seed_differs(world: Path, tmp_path: Path) -> None:
    generate(tmp_path / "other", WorldConfig(**{**SMALL.__dict__, "seed": 1}))
    a, b = _files(world), _files(tmp_path / "other")
    for name in ("pretrain.json", "instruct.json", "eval/scienceqa/problems.json", "images/pretrain_000000.png"):
        assert a[name] != b[name], name


def test_train_and_test_scenes_are_disjoint(world: Path) -> None:
    scenes = _scenes(world)
    train = {s.key() for k, s in scenes.items() if k.startswith("images/")}
    test = {s.key() for k, s in scenes.items() if not k.startswith("images/")}
    assert train and test and not train & test
    one = next(iter(scenes.values()))
    with pytest.raises(AssertionError):
        _check_disjoint({"a": one}, {"b": one})


def _check_image(path: Path, size: int) -> None:
    assert path.is_file(), path
    with Image.open(path) as im:
        assert im.size == (size, size) and im.mode == "RGB"


def test_llava_train_records_and_images(world: Path) -> None:
    for name in ("pretrain.json", "instruct.json"):
        records = _load(world / name)
        assert len({r["id"] for r in records}) == len(records)
        for r in records:
            turns = r["conversations"]
            assert [t["from"] for t in turns] == ["human", "gpt"] * (len(turns) // 2)
            text = "".join(t["value"] for t in turns)
            if "image" not in r:
                assert "<image>" not in text
                continue
            assert text.count("<image>") == 1 and "<image>" in turns[0]["value"]
            if name == "instruct.json":
                assert turns[0]["value"].startswith("<image>\n")
            _check_image(world / "images" / r["image"], SMALL.image_size)
    records = _load(world / "instruct.json")
    assert 0 < sum("image" not in r for r in records) < len(records) / 4


def test_image_size_flag(tmp_path: Path) -> None:
    counts = ["--n-pretrain", "3", "--n-instruct", "3", "--n-sqa", "3", "--n-bench", "3", "--n-clip", "3"]
    main(["--out", str(tmp_path), "--image-size", "32", *counts, "--n-zeroshot-per-class", "1"])
    scenes = _load(tmp_path / "scenes.json")  # every image the world holds, by its path under --out
    assert len(scenes) >= 3 + 3 + 3, "the training images alone are 9"
    for rel in scenes:
        _check_image(tmp_path / rel, 32)  # written, at the flag's size
    assert sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*.png")) == sorted(scenes)
    for r in _load(tmp_path / "pretrain.json") + _load(tmp_path / "instruct.json"):
        if "image" in r:
            _check_image(tmp_path / "images" / r["image"], 32)  # what training reads


def _check_sqa_record(r: dict, p: dict) -> None:
    human, gpt = (t["value"] for t in r["conversations"])
    m = SQA_RE.match(human)
    assert m, human
    options = [line[3:] for line in m["options"].split("\n")]
    assert [line[0] for line in m["options"].split("\n")] == list(LETTERS[: len(options)])
    assert 2 <= len(options) <= 5 and gpt in LETTERS[: len(options)]
    assert p["choices"] == options and LETTERS[p["answer"]] == gpt and p["question"] == m["question"]
    assert (m["context"] or "") == p["hint"]
    if "image" in r:
        assert m["image"] and p["image"] == "image.png" and r["image"] == f"{r['id']}/image.png"
    else:
        assert not m["image"] and p["image"] is None and p["hint"], "a text-only item needs its Context"


def test_scienceqa_layout(world: Path) -> None:
    root = world / "eval/scienceqa"
    records, problems = _load(root / "llava_test_CQM-A.json"), _load(root / "problems.json")
    assert _load(root / "pid_splits.json")["test"] == [r["id"] for r in records] == list(problems)
    for r in records:
        _check_sqa_record(r, problems[r["id"]])
        if "image" in r:
            _check_image(root / "images/test" / r["image"], SMALL.image_size)
    assert 0 < sum("image" not in r for r in records) < len(records) / 4


def test_blind_baseline_is_near_chance(world: Path) -> None:
    problems = build_scienceqa(np.random.default_rng(3), 700, avoid=()).problems
    assert blind_baseline_accuracy(problems) <= chance_accuracy(problems) + 0.05
    small = _load(world / "eval/scienceqa/problems.json")
    assert blind_baseline_accuracy(small) <= chance_accuracy(small) + 0.12
    rigged = {str(i): {**p, "answer": 0} for i, p in enumerate(problems.values())}  # always "A": caught
    assert blind_baseline_accuracy(rigged) == 1.0


def _gold_holds(p: dict, s: Scene) -> bool:
    """Whether the gold option of a ScienceQA problem is true of its scene, and the options are the template's
    whole answer set in its fixed order."""
    gold, q, t = p["choices"][p["answer"]], p["question"], p["category"]
    fixed = {
        "color": ["red", "green", "blue", "yellow", "purple"],
        "count": ["1", "2", "3", "4"],
        "size": ["small", "large"],
    }
    if p["choices"] != fixed[t]:
        return False
    if t == "count":
        return q == "How many shapes are in the image?" and len(s.shapes) == int(gold)
    verb = "is the shape" if len(s.shapes) == 1 else "are the shapes"
    if t == "color":
        return q == f"What color {verb}?" and {x.color for x in s.shapes} == {gold}
    return t == "size" and q == f"What size {verb}?" and {x.size for x in s.shapes} == {gold}


def test_scienceqa_answers_match_scene_specs(world: Path) -> None:
    scenes = _scenes(world)
    problems = _load(world / "eval/scienceqa/problems.json")
    for pid, p in problems.items():
        if p["image"]:
            assert _gold_holds(p, scenes[f"eval/scienceqa/images/test/{pid}/image.png"]), (pid, p)
    sqa = build_scienceqa(np.random.default_rng(1), 140, avoid=(), text_only_frac=0.5)
    for pid, p in sqa.problems.items():
        assert _gold_holds(p, sqa.scenes[pid]), (pid, p)
        assert p["hint"] == ("" if p["image"] else caption(sqa.scenes[pid]))


MC_TEMPLATES = {"What color": "color", "How many": "count", "What size": "size"}


def _check_multiple_choice(question: str, answer: str, scene: Scene) -> None:
    q, *options, suffix = question.split("\n")
    assert suffix == MC_SUFFIX and answer in LETTERS[: len(options)]
    template = next(t for prefix, t in MC_TEMPLATES.items() if q.startswith(prefix))
    problem = {"question": q, "choices": [o[3:] for o in options], "answer": LETTERS.index(answer)}
    assert _gold_holds({**problem, "category": template}, scene), question


def _check_instruct_turn(question: str, answer: str, scene: Scene) -> None:
    if question.endswith(MC_SUFFIX):
        return _check_multiple_choice(question, answer, scene)
    n = len(scene.shapes)
    if question.startswith(("How many shapes are there", "How many objects")):
        assert answer in (str(n), f"There {'is' if n == 1 else 'are'} {count_phrase(n, 'shape')}.")
    if m := re.match(r"What color is the (\w+)\?", question):
        assert answer.removeprefix(f"The {m[1]} is ").rstrip(".") == scene.find(kind=m[1])[0].color
    if m := re.match(r"Where is the (\w+) (\w+)\?", question):
        (s,) = scene.find(color=m[1], kind=m[2])
        assert answer in (CELLS[s.cell], f"The {s.name} is {cell_phrase(s.cell)}.")
    if question in DETAIL_PROMPTS:
        assert answer == detailed_description(scene)


def test_instruct_answers_match_scene_specs(world: Path) -> None:
    scenes = _scenes(world)
    for r in _load(world / "instruct.json"):
        if "image" in r:
            turns = [t["value"].removeprefix("<image>\n") for t in r["conversations"]]
            for q, a in zip(turns[::2], turns[1::2], strict=True):
                _check_instruct_turn(q, a, scenes[f"images/{r['image']}"])


def test_pretrain_captions_list_every_shape(world: Path) -> None:
    scenes = _scenes(world)
    for r in _load(world / "pretrain.json"):
        text, scene = r["conversations"][1]["value"].lower(), scenes[f"images/{r['image']}"]
        for s in scene.shapes:
            assert f"{s.size} {s.color} {s.kind}" in text


def test_bench_files_cross_reference(world: Path) -> None:
    root = world / "eval/llava-bench-in-the-wild"
    questions, context = _jsonl(root / "questions.jsonl"), _jsonl(root / "context.jsonl")
    answers = _jsonl(root / "answers_gpt4.jsonl")
    assert len(questions) == SMALL.n_bench and [q["question_id"] for q in questions] == list(range(SMALL.n_bench))
    assert [(a["question_id"], a["prompt"]) for a in answers] == [(q["question_id"], q["text"]) for q in questions]
    assert {q["category"] for q in questions} == {"conv", "detail", "complex"}
    scenes, by_image = _scenes(world), {c["image"]: c for c in context}
    assert {q["image"] for q in questions} == set(by_image)
    for c in context:
        _check_image(root / "images" / c["image"], SMALL.image_size)
        assert c["caption"] == caption(scenes[f"eval/llava-bench-in-the-wild/images/{c['image']}"])
    assert all(set(a) == {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} for a in answers)


def test_clip_csv_and_zeroshot_folder(world: Path, tmp_path: Path) -> None:
    lines = (world / "clip_captions.csv").read_text().splitlines()
    assert lines[0] == "filepath\ttitle" and len(lines) == SMALL.n_clip + 1
    for line in lines[1:]:
        path, title = line.split("\t")
        assert not Path(path).is_absolute() and (world / path).is_file() and title
    zs = world / "zeroshot"
    folders = sorted(p.name for p in zs.iterdir() if p.is_dir())
    names = zs.joinpath("classnames.txt").read_text().splitlines()
    assert [n.replace(" ", "_") for n in names] == folders and len(folders) == 18
    assert all(len(list((zs / f).glob("*.png"))) == SMALL.n_zeroshot_per_class for f in folders)
    assert all("{}" in t for t in zs.joinpath("templates.txt").read_text().splitlines())
    generate(tmp_path, WorldConfig(**{**SMALL.__dict__, "clip_absolute_paths": True, "n_clip": 3}))
    rows = (tmp_path / "clip_captions.csv").read_text().splitlines()[1:]
    assert all(Path(r.split("\t")[0]).is_absolute() and Path(r.split("\t")[0]).is_file() for r in rows)


def test_output_folder_safety(tmp_path: Path) -> None:
    (tmp_path / "foreign.txt").write_text("not ours")
    with pytest.raises(FileExistsError):
        generate(tmp_path, SMALL)
    out = tmp_path / "w"
    generate(out, WorldConfig(**{**SMALL.__dict__, "n_pretrain": 5}))
    generate(out, WorldConfig(**{**SMALL.__dict__, "n_pretrain": 2}))  # a rerun replaces the previous outputs
    assert len(list((out / "images").glob("pretrain_*.png"))) == 2


def test_cli_in_process_and_as_module(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    flags = ["--n-pretrain", "4", "--n-instruct", "4", "--n-sqa", "7", "--n-bench", "3", "--n-clip", "2"]
    main(["--out", str(tmp_path / "a"), *flags, "--n-zeroshot-per-class", "1", "--seed", "5"])
    assert "pretrain=4" in capsys.readouterr().out
    assert _load(tmp_path / "a/manifest.json")["config"]["seed"] == 5
    cmd = [sys.executable, "-m", "llava_drip_demo.demo_world", "--out", str(tmp_path / "b"), *flags]
    subprocess.run([*cmd, "--n-zeroshot-per-class", "1"], cwd=ROOT, check=True, capture_output=True)
    assert (tmp_path / "b/manifest.json").is_file()


@pytest.mark.slow
def test_default_sizes_generate_quickly(tmp_path: Path) -> None:
    start = time.process_time()  # CPU time of this process: other jobs on a shared machine don't count
    generate(tmp_path, WorldConfig())
    assert time.process_time() - start < 15
