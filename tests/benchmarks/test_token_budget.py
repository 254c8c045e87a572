"""benchmarks/token_budget.py's pure parts: budget -> method flags, DRIP's rows, and the table."""

import importlib.util
import sys
from pathlib import Path

import pytest

from eval.results_table import RunMetrics
from llava.model.reduction.spec import parse_token_reduction

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "token_budget.py"


@pytest.fixture(scope="module")
def tb():
    spec = importlib.util.spec_from_file_location("token_budget", _PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["token_budget"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    yield module
    del sys.modules["token_budget"]


DEMO_VIT = dict(image_size=64, patch_size=8, layers_run=3)  # ViT-tiny: 64 patches, select layer -2 of 4


def test_budgets_map_to_each_methods_flag(tb):
    shape = tb.TowerShape(**DEMO_VIT)
    at16 = {r.label: (r.token_reduction, r.pdrop) for r in tb.vit_runs(16, shape, [0, 3], "/s.json", 4)}
    assert at16 == {
        "uniform 4x4": ("uniform:size=4", None),
        "1-D pooling k=4": ("pool1d:k=4", None),
        "random seed 0": ("random:keep=16,seed=0", None),
        "random seed 3": ("random:keep=16,seed=3", None),
        "VisionZip 14+2": ("visionzip:dominant=14,contextual=2", None),
        "VisionZip 14+2, [CLS] among the dominant (official)": ("visionzip:dominant=14,contextual=2,cls=true", None),
        "ToMe r=16": ("tome:r=16", None),  # 65 -> 49 -> 33 -> 17 tokens, CLS dropped: 16
        "Patch Slimming keep=16": ("patch_slimming:schedule=/s.json", None),
        "FastV k=2 R=0.75": ("fastv:k=2,ratio=0.75", None),
        "PyramidDrop layers 1,2,3 keep 0.63/0.40/0.25": (None, ((1, 2, 3), (0.63, 0.3969, 0.25))),
    }
    at7 = {r.label: r.token_reduction for r in tb.vit_runs(7, shape, [0], None, 4)}
    assert at7["uniform 3x3"] == "uniform:size=3"  # the nearest square grid: 9 tokens
    assert at7["VisionZip 6+1"] == "visionzip:dominant=6,contextual=1"
    assert at7["1-D pooling k=10"] == "pool1d:k=10"  # ceil(64 / 10) = 7 runs
    assert at7["FastV k=2 R=0.891"] == "fastv:k=2,ratio=0.8906"
    assert not any(label.startswith("Patch Slimming") for label in at7)  # no schedule given
    assert tb.tome_r(shape, 7) == (32, 8)  # ToMe merges at most half a layer's tokens: 8 is the nearest
    assert tb.pdrop_schedule(576, 64, 32)[0] == (8, 16, 24)  # LLaVA-1.5-7B's PyramidDrop layers
    for run in tb.vit_runs(7, shape, [0], "/s.json", 4):
        parse_token_reduction(run.token_reduction)  # every flag is one the entry points accept


def test_drip_rows_sit_at_the_nearest_budget_and_compose_below_it(tb):
    runs = tb.drip_runs([16, 7], drip_tokens=13.0, seeds=[0, 1], llm_layers=4)
    at16 = [(r.label, r.token_reduction) for r in runs if r.budget == 16]
    assert at16 == [
        ("DRIP (learned)", None),
        ("DRIP uniform boundaries", "drip_boundaries:mode=uniform"),
        ("DRIP random boundaries seed 0", "drip_boundaries:mode=random,seed=0"),
        ("DRIP random boundaries seed 1", "drip_boundaries:mode=random,seed=1"),
    ]
    at7 = {r.short: (r.token_reduction, r.pdrop) for r in runs if r.budget == 7}
    assert at7 == {
        "DRIP+FastV": ("fastv:k=2,ratio=0.4615", None),
        "DRIP+PDrop": (None, ((1, 2, 3), (0.8136, 0.6619, 0.5385))),
    }
    assert [r.budget for r in tb.drip_runs([16, 7], drip_tokens=5.0, seeds=[0], llm_layers=4)] == [
        7
    ] * 3  # nothing above its count
    assert {r.training for r in runs} == {"trained", "DRIP trained + training-free"}
    every = runs + tb.vit_runs(16, tb.TowerShape(**DEMO_VIT), [0, 1], "/s.json", 4) + tb.reference_runs()
    every += tb.adaptive_runs()
    assert {r.token_reduction for r in tb.adaptive_runs()} == {"prumerge", "prumerge_plus"}
    assert len({r.slug for r in every}) == len({(r.model, r.token_reduction, r.pdrop) for r in every})


def test_table_rows_categories_and_missing_values(tb):
    a = tb.Result(
        tb.Run("ViT (HF CLIP copy)", "vit-hf", None),
        RunMetrics(
            "x",
            sqa_img_acc=81.25,
            visual_tokens=64.0,
            tower_gflops=0.01594,
            prefill_tflops=1.3e-4,
            seconds_per_answer=0.2414,
            llavabench_rule=57.31,
        ),
        {"color": 97.0, "size": 80.0},
    )
    b = tb.Result(
        tb.Run("ToMe r=16", "vit-hf", 16), RunMetrics("y", sqa_img_acc=50.0, visual_tokens=16.0), {"count": 40.0}
    )
    lines = tb.markdown_table([a, b]).splitlines()
    assert lines[0] == (
        "| budget | method | model | reduction | tokens / image | SQA-IMG % | color % | count % | "
        "size % | LLaVA-Bench rule | tower GMACs | prefill GMACs | s / answer |"
    )
    assert lines[1] == "|---|---|---|---|" + "---:|" * 9
    assert lines[2] == (
        "| none | ViT (HF CLIP copy) | vit-hf | - | 64.0 | 81.2 | 97.0 | - | 80.0 | 57.3 | 0.0159 | 0.1300 | 0.241 |"
    )
    assert lines[3] == "| 16 | ToMe r=16 | vit-hf | training-free | 16.0 | 50.0 | - | 40.0 | - | - | - | - | - |"
    adaptive = tb.Result(tb.adaptive_runs()[0], RunMetrics("p", visual_tokens=5.5), {})
    assert tb.markdown_table([adaptive]).splitlines()[2].startswith("| adaptive | PruMerge | vit-hf | training-free |")
    same = tb.Result(tb.Run("DRIP", "drip", 16, short="DRIP"), RunMetrics("z", sqa_img_acc=60.0), {})
    names = [r.name for r in tb.plot_runs([a, b, same, same])]
    assert names == ["ViT (HF CLIP copy)", "ToMe r=16@16", "DRIP@16"]  # twice: one point
    b2 = tb.Result(tb.Run("FastV", "vit-hf", 16), RunMetrics("w", sqa_img_acc=50.0, visual_tokens=16.0), {})
    assert [r.name for r in tb.plot_runs([b, b2])] == ["ToMe r=16@16 = FastV@16"]  # one point, both names
    assert all(r.sqa_acc is None and r.llavabench_rule is None for r in tb.plot_runs([a, b]))  # SQA-IMG only


def test_best_per_budget_names_every_run_at_the_top(tb):
    def result(label, budget, acc):
        return tb.Result(tb.Run(label, "vit-hf", budget), RunMetrics(label, sqa_img_acc=acc), {})

    rows = [
        result("ViT", None, 90.0),
        result("ToMe", 16, 70.0),
        result("FastV", 16, 80.0),
        result("DRIP", 16, 80.0),
        result("random", 7, 50.0),
        result("none", 7, None),
    ]
    assert tb.best_per_budget(rows) == (
        "best SQA-IMG at 16 tokens: 80.0 % (FastV, DRIP)\nbest SQA-IMG at 7 tokens: 50.0 % (random)\n"
    )
