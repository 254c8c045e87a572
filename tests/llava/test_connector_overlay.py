"""llava.tools.connector_overlay: segments drawn for 1-D segmenting connectors, a clear refusal otherwise (the
drawing on a trained real-track checkpoint is tested in tests/test_real_demo.py)."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPImageProcessor

from llava.mm_utils import process_images
from llava.tools.connector_overlay import segment_overlay, skimage_photo

PHOTO = Image.new("RGB", (48, 40), (20, 120, 200))
NOISE = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8))


def processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def test_runs_of_a_1d_connector_are_drawn_at_the_towers_size(tiny):
    overlay, tokens = segment_overlay(tiny.model("clip", mm_connector="pool1d:k=4"), processor(), PHOTO)
    assert overlay.size == (32, 32) and tokens == 4


def test_drip_segments_count_as_the_connector_pools_them_from_one_predictor_run(tiny):
    model = tiny.model("clip", mm_connector="drip:rate=0.25,estimator=box")
    connector = model.get_model().mm_connector
    with torch.no_grad():
        features = model.get_vision_tower()(process_images([NOISE], processor(), model.config))
        connector.calibrate(features)  # an untrained predictor closes no segment at threshold 0.5
    runs = []
    connector.predictor.register_forward_hook(lambda *_: runs.append(1))
    overlay, tokens = segment_overlay(model, processor(), NOISE)
    assert len(runs) == 1 and overlay.size == (32, 32)
    with torch.no_grad():
        assert tokens == int(connector(features).token_counts[0]) > 1


@pytest.mark.parametrize(("connector", "message"), [(None, "no --mm_connector"), ("pool2d:k=2", "2-D pooling")])
def test_a_model_without_segments_is_refused(tiny, connector, message):
    model = tiny.model("clip", **({"mm_connector": connector} if connector else {}))
    with pytest.raises(ValueError, match=message):
        segment_overlay(model, processor(), PHOTO)


def test_an_unknown_scikit_image_photo_is_named():
    with pytest.raises(ValueError, match="no bundled photo 'nosuch'"):
        skimage_photo("nosuch")
