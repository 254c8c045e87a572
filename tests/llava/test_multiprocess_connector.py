"""The DRIP connector on 2 ZeRO-3 CPU ranks (slow): stage 1 (connector + projector) and stage 2 from its
``mm_projector.bin`` finish with the same weights on both ranks, every rank calibrates the same eval threshold at
the end of training, the gathered connector is saved, and the checkpoint reloads with those weights and token counts.
The ranks are started through ``tests/llava/test_multiprocess.py``'s entry point (its rank reports).

    .venv/bin/python -m pytest -m slow tests/llava/test_multiprocess_connector.py
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tests.llava.test_multiprocess import launcher, run_training, train_flags

CONNECTOR = "drip:rate=0.25,estimator=box"


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    from llava_drip_demo.demo_world import WorldConfig, generate

    out = tmp_path_factory.mktemp("world")
    generate(out, WorldConfig(n_pretrain=16, n_instruct=24, n_sqa=4, n_bench=3, n_clip=4, n_zeroshot_per_class=1))
    records = [r for r in json.loads((out / "instruct.json").read_text()) if "image" in r]
    (out / "instruct_images.json").write_text(json.dumps(records))
    return out


@pytest.fixture(scope="module")
def base_llm(world, tmp_path_factory, save_tiny_base_llm) -> Path:
    return save_tiny_base_llm(world, tmp_path_factory.mktemp("base"))


@pytest.fixture(scope="module")
def clip_dir(clip_dir_64) -> Path:
    return clip_dir_64


def zero3_run(world, base_llm, clip_dir, out: Path, *extra: str):
    flags = [
        *train_flags(world, base_llm, out / "model"),
        "--vision_tower",
        str(clip_dir),
        "--mm_connector",
        CONNECTOR,
        *extra,
    ]
    result = run_training([*launcher("zero3"), *flags], out, 2)
    assert not isinstance(result, str), result
    reports, trainable = result
    assert [r["world_size"] for r in reports] == [2, 2] and reports[0]["sha256"] == reports[1]["sha256"]
    assert any("mm_connector.predictor" in n for n in trainable), sorted(trainable)[:5]
    return trainable, out / "model"


@pytest.mark.slow
def test_zero3_stage1_and_stage2_train_save_and_reload_the_connector(world, base_llm, clip_dir, tmp_path):
    from llava.model.builder import load_pretrained_model

    stage1_flags = ("--data_path", str(world / "pretrain.json"), "--version", "plain", "--tune_mm_mlp_adapter", "True")
    trained1, stage1 = zero3_run(world, base_llm, clip_dir, tmp_path / "s1", *stage1_flags)
    saved = torch.load(stage1 / "mm_projector.bin", weights_only=True)
    for name, value in trained1.items():
        if "mm_connector" in name:
            assert torch.equal(saved[name], value), name  # gathered, not an empty ZeRO-3 partition
    recorded = json.loads((stage1 / "config.json").read_text())["mm_connector"]
    assert recorded.startswith("drip:rate=0.25,estimator=box,tau=1.0,threshold=") and not recorded.endswith("=0.5")

    adapter = ("--pretrain_mm_mlp_adapter", str(stage1 / "mm_projector.bin"))
    trained2, stage2 = zero3_run(world, base_llm, clip_dir, tmp_path / "s2", *adapter)
    _, model, _, _ = load_pretrained_model(str(stage2), device="cpu")
    connector = model.get_model().get_connector()
    for name, p in connector.named_parameters():
        torch.testing.assert_close(p, trained2[f"model.mm_connector.{name}"], msg=name)
    assert model.config.mm_connector == json.loads((stage2 / "config.json").read_text())["mm_connector"]
    pixels = torch.randn(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        counts = model.encode_image_features(pixels).token_counts.tolist()
        again = load_pretrained_model(str(stage2), device="cpu")[1].encode_image_features(pixels).token_counts
    assert again.tolist() == counts and all(1 <= c <= 64 for c in counts)
