"""The model's one runtime config (llava.model.runtime): parsed once per change, changed through one call that writes
the flat mm_* keys, FastV's schedule held explicitly, each default stated once, and no other code changing it."""

from __future__ import annotations

import ast
import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

from llava.model.config import MultimodalConfig, PDropConfig
from llava.model.reduction import spec
from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.fastv import fastv_schedule
from llava.model.reduction.registry import parse_wired
from llava.train.args import ModelArguments

ROOT = Path(__file__).resolve().parents[2]


def test_reductions_are_parsed_once_per_change_never_per_encode(tiny, monkeypatch):
    model = tiny.model()
    parsed: list[str] = []
    parse = spec.parse_method
    monkeypatch.setattr(spec, "parse_method", lambda text: parsed.append(text) or parse(text))
    apply_token_reduction(model, "random:keep=5+fastv:k=1,ratio=0.5")
    after_change = len(parsed)
    ids, mask = tiny.right_pad([tiny.prompt(9, image_at=[2]), tiny.prompt(7, image_at=[3], seed=1)])
    with torch.no_grad():
        for _ in range(3):
            out = model(input_ids=ids, attention_mask=mask, images=tiny.images(2))
        model.generate(ids, attention_mask=mask, images=tiny.images(2), max_new_tokens=2, do_sample=False)
    assert [lay.num_image_tokens for lay in out.image_layouts] == [5, 5]  # the methods ran ...
    assert len(parsed) == after_change  # ... without being parsed again
    assert after_change == 2  # the change itself: each method's text once
    model.set_packing(False)  # a mode flag: nothing is parsed either
    assert len(parsed) == 2


def test_configure_writes_the_flat_keys_and_a_saved_model_reloads_equal(tiny, tmp_path):
    model = tiny.model()
    runtime = model.configure(
        reductions=parse_wired("uniform:size=2"),
        pdrop=PDropConfig((1,), (0.5,), "original"),
        image_aspect_ratio="pad",
        packing=False,
    )
    assert model.runtime is runtime and model.mm_config is runtime.mm and not runtime.packing
    c = model.config
    assert (c.mm_token_reduction, c.pdrop_layer_list, c.pdrop_image_token_ratio_list) == ("uniform:size=2", [1], [0.5])
    assert (c.pdrop_position_mode, c.image_aspect_ratio) == ("original", "pad")
    assert MultimodalConfig.from_config(c) == runtime.mm
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.mm_config == model.mm_config
    assert dataclasses.replace(loaded.runtime, packing=False) == runtime  # mode flags are not saved: the defaults
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["mm_token_reduction"] == "uniform:size=2" and saved["pdrop_layer_list"] == [1]


def test_fastvs_schedule_comes_from_the_method_and_the_keys_only_record_it(tiny, tmp_path):
    model = tiny.model()
    apply_token_reduction(model, "fastv:k=1,ratio=0.75")
    fastv = spec.FastV(k=1, ratio=0.75)
    assert (model.runtime.llm_method, model.runtime.pyramid_drop) == (fastv, None)
    assert model.pdrop == model.runtime.llm_schedule == fastv_schedule(fastv)
    assert (model.config.pdrop_layer_list, model.config.pdrop_position_mode) == ([1], "original")  # as before
    model.save_pretrained(tmp_path)
    loaded = type(model).from_pretrained(tmp_path)
    assert loaded.runtime.llm_method == fastv and loaded.pdrop == fastv_schedule(fastv)
    # A PyramidDrop schedule equal to FastV's is still PyramidDrop's: nothing is inferred back from the keys.
    same = PDropConfig((1,), (0.25,), "original")
    pyramid = tiny.model(pdrop_layer_list=[1], pdrop_image_token_ratio_list=[0.25], pdrop_position_mode="original")
    assert pyramid.runtime.pyramid_drop == same and pyramid.runtime.llm_method is None
    with pytest.raises(ValueError, match="fastv cannot run beside"):
        apply_token_reduction(pyramid, "fastv:k=1,ratio=0.75")
    apply_token_reduction(loaded, "none")  # FastV off: its record goes with it
    assert loaded.pdrop is None and loaded.config.pdrop_layer_list is None
    older = tiny.model(
        mm_token_reduction="fastv:k=1,ratio=0.75", pdrop_layer_list=[1], pdrop_image_token_ratio_list=[0.25]
    )
    assert older.pdrop == fastv_schedule(fastv)  # a record in PyramidDrop's position mode: FastV's own schedule runs
    with pytest.raises(ValueError, match="record its schedule"):  # keys that disagree with the method: refused
        tiny.model(mm_token_reduction="fastv:k=1,ratio=0.75", pdrop_layer_list=[1], pdrop_image_token_ratio_list=[0.5])


def test_configure_checks_before_it_changes_anything(tiny):
    model = tiny.model()
    before, keys = model.runtime, model.config.to_dict()
    for bad, error in (
        (dict(packing="yes"), TypeError),
        (dict(pading=True), ValueError),
        (dict(select_feature="cls"), ValueError),
        (dict(reductions="uniform:size=2"), TypeError),
    ):
        with pytest.raises(error):
            model.configure(**bad)
        assert model.runtime is before and model.config.to_dict() == keys
    model.set_packed_prefill(False)  # a mode flag changes no key
    assert not model.runtime.packed_prefill and model.config.to_dict() == keys


def test_the_runtime_settings_are_read_only(tiny):
    model = tiny.model()
    with pytest.raises(AttributeError):
        model.pdrop = PDropConfig((1,), (0.5,))
    with pytest.raises(AttributeError):
        model.runtime = model.runtime
    with pytest.raises(dataclasses.FrozenInstanceError):
        model.runtime.packing = False


# --- no code but configure changes the settings: a scan of the repository's Python files ---
SCANNED = ("llava", "benchmarks", "llava_drip_demo", "eval", "drip")
HOLDER = ("llava/model/llava_arch.py", ("__init__", "configure"))  # the one place that sets the held config
RETIRED = {"pdrop", "packing", "packing_single_row", "packed_prefill"}  # once mutable flags on the model


def _assigned(node: ast.AST) -> list[ast.AST]:
    if isinstance(node, ast.Assign):
        targets = list(node.targets)
    elif isinstance(node, ast.AugAssign | ast.AnnAssign):
        targets = [node.target]
    else:
        return []
    flat = []
    while targets:
        t = targets.pop()
        targets.extend(t.elts) if isinstance(t, ast.Tuple | ast.List) else flat.append(t)
    return flat


def _changes(rel: str, tree: ast.AST, function: str = "") -> list[str]:
    """Where ``tree`` (file ``rel``) changes a model's runtime settings other than in ``configure`` / ``__init__``."""
    out = []
    for node in ast.iter_child_nodes(tree):
        name = node.name if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) else function
        allowed = rel == HOLDER[0] and name in HOLDER[1]
        for t in _assigned(node):
            if not isinstance(t, ast.Attribute):
                continue
            owner = ast.unparse(t.value)
            model_like = "model" in owner.lower() or (owner == "self" and rel.startswith("llava/model/"))
            if (t.attr == "_runtime" and not allowed) or (t.attr in RETIRED and model_like):
                out.append(f"{rel}:{node.lineno}: {ast.unparse(t)} = ...")
        call = node.func if isinstance(node, ast.Call) else None
        if isinstance(call, ast.Attribute) and call.attr == "write_to" and not allowed:
            out.append(f"{rel}:{node.lineno}: {ast.unparse(node)}")
        out += _changes(rel, node, name)
    return out


def runtime_changes(root: Path) -> list[str]:
    files = sorted(p for top in SCANNED if (root / top).is_dir() for p in (root / top).rglob("*.py"))
    return [hit for p in files for hit in _changes(p.relative_to(root).as_posix(), ast.parse(p.read_text()))]


def test_only_configure_changes_the_runtime_settings():
    assert runtime_changes(ROOT) == []


@pytest.mark.parametrize(
    "planted",
    [
        "model.packing = False",  # a retired flag: a dead attribute nothing reads
        "self.model.packed_prefill, x = True, 1",
        "model.get_model()._runtime = None",  # the held config, replaced behind configure's back
        "model.mm_config.replace(image_aspect_ratio='pad').write_to(model.config)",  # keys changed, held config not
    ],
)
def test_the_scan_catches_a_planted_change(tmp_path, planted):
    rel = "llava/model/reduction/apply.py"
    (tmp_path / rel).parent.mkdir(parents=True)
    shutil.copy(ROOT / rel, tmp_path / rel)
    assert runtime_changes(tmp_path) == []
    with open(tmp_path / rel, "a") as f:
        f.write(f"\n\ndef planted(model, x):\n    {planted}\n")
    assert len(runtime_changes(tmp_path)) == 1


# --- each default stated once ---
def test_select_layers_default_is_llavas_flag_default_stated_once():
    assert MultimodalConfig.select_layer == -1  # LLaVA's ModelArguments: default to the last layer
    assert ModelArguments().mm_vision_select_layer == MultimodalConfig.select_layer
    assert MultimodalConfig.from_config(object()).select_layer == MultimodalConfig.select_layer
    # Written once as a number (the field); everything else refers to it. LLaVA-1.5's -2 is the scripts' value.
    sources = [p for top in ("llava", "benchmarks") for p in (ROOT / top).rglob("*.py")]
    literal = [
        f"{p.relative_to(ROOT)}:{n}"
        for p in sources
        for n, line in enumerate(p.read_text().splitlines(), 1)
        if "select_layer" in line and ("= -1" in line or "= -2" in line or ", -2)" in line or "default=-" in line)
    ]
    assert literal == ["llava/model/config.py:" + str(_line_of("    select_layer: int = -1"))]
    assert "--mm_vision_select_layer -2" in (ROOT / "scripts/v1_5/common.sh").read_text()


def _line_of(text: str) -> int:
    lines = (ROOT / "llava/model/config.py").read_text().splitlines()
    return lines.index(text) + 1
