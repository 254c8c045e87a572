"""``python -m llava.tools.boundary_features``: a tiny random DINOv2 over a synthetic stage-1 folder."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BitImageProcessor, Dinov2Config, Dinov2Model

from llava.tools import boundary_features


@pytest.fixture()
def stage1(tmp_path):
    (tmp_path / "images").mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.jpg")
        turns = [{"from": "human", "value": "<image>"}, {"from": "gpt", "value": f"caption {i}"}]
        records.append({"id": f"r{i}", "image": f"{i}.jpg", "conversations": turns})
    (tmp_path / "blip_laion_cc_sbu_2k.json").write_text(json.dumps(records))
    return tmp_path


def test_cache_holds_the_selected_layers_patch_tokens_and_the_split(stage1, tmp_path):
    tower_dir = tmp_path / "tower"
    torch.manual_seed(0)
    cfg = Dinov2Config(hidden_size=32, num_hidden_layers=3, num_attention_heads=4, image_size=32, patch_size=8)
    tower = Dinov2Model(cfg).eval()
    tower.save_pretrained(tower_dir)
    processor = BitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor.save_pretrained(tower_dir)
    out = tmp_path / "feats.pt"
    boundary_features.main(
        ["--tower", str(tower_dir), "--data", str(stage1), "--out", str(out), "--train-records", "4", "--batch", "3"]
    )
    data = torch.load(out, weights_only=True)
    assert data["features"].shape == (5, 16, 32)  # 4 training records + the last 12 // 10 = 1; 16 patches, no [CLS]
    assert data["ids"] == ["r0", "r1", "r2", "r3", "r11"] and data["train"].tolist() == [True] * 4 + [False]
    img = Image.open(stage1 / "images" / "11.jpg").convert("RGB")
    pix = processor(images=[img], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        want = tower(pixel_values=pix, output_hidden_states=True).hidden_states[-2][:, 1:]
    torch.testing.assert_close(data["features"][-1:].float(), want, atol=2e-2, rtol=1e-2)


def test_missing_data_folder_is_named(tmp_path, monkeypatch):
    monkeypatch.delenv(boundary_features.DATA_ENV, raising=False)
    with pytest.raises(SystemExit):
        boundary_features.main(["--tower", str(tmp_path), "--out", str(tmp_path / "x.pt")])
