"""llava.tools.connector_overlay: segments drawn for 1-D segmenting connectors, a clear refusal otherwise (the
drawing on a trained real-track checkpoint is tested in tests/test_real_demo.py)."""

import pytest
from PIL import Image
from transformers import CLIPImageProcessor

from llava.tools.connector_overlay import segment_overlay, skimage_photo

PHOTO = Image.new("RGB", (48, 40), (20, 120, 200))


def processor() -> CLIPImageProcessor:
    return CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def test_runs_of_a_1d_connector_are_drawn_at_the_towers_size(tiny):
    overlay, tokens = segment_overlay(tiny.model("clip", mm_connector="pool1d:k=4"), processor(), PHOTO)
    assert overlay.size == (32, 32) and tokens == 4


@pytest.mark.parametrize(("connector", "message"), [(None, "no --mm_connector"), ("pool2d:k=2", "2-D pooling")])
def test_a_model_without_segments_is_refused(tiny, connector, message):
    model = tiny.model("clip", **({"mm_connector": connector} if connector else {}))
    with pytest.raises(ValueError, match=message):
        segment_overlay(model, processor(), PHOTO)


def test_an_unknown_scikit_image_photo_is_named():
    with pytest.raises(ValueError, match="no bundled photo 'nosuch'"):
        skimage_photo("nosuch")
