"""Training data refused or left out before training: an empty file, an ``image`` that is not
one file name, and missing, corrupt or truncated images are found when the dataset is built, naming the record and
the file; ``--skip_bad_images`` logs, counts and leaves such records out, also when an image fails only to decode."""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from transformers import AutoTokenizer

from llava.model.multimodal_encoder.base import clip_image_processor
from llava.train.data import DatasetOptions, LazySupervisedDataset, image_problem
from llava.train.preprocess import MalformedSample


def options(world: Path, skip: bool = False) -> DatasetOptions:
    return DatasetOptions("v1", str(world / "images"), "pad", 256, image_token_budget=64, skip_bad_images=skip)


def dataset(tmp_path: Path, records: list, world: Path, base_llm: Path, skip: bool = False) -> LazySupervisedDataset:
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    tok = AutoTokenizer.from_pretrained(base_llm)
    return LazySupervisedDataset(str(path), tok, clip_image_processor(64), options(world, skip))


def good(world: Path, k: int = 0) -> dict:
    return [r for r in json.loads((world / "instruct.json").read_text()) if "image" in r][k]


def encoded(fmt: str) -> bytes:
    pixels = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype("uint8")
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def bad_images(world: Path) -> dict[str, str]:
    """File names (in the world's image folder) of images that fail in different ways."""
    folder = world / "images"
    png, jpeg = encoded("PNG"), encoded("JPEG")
    (folder / "cut.jpg").write_bytes(jpeg[: len(jpeg) // 2])  # a download cut short
    (folder / "cut.png").write_bytes(png[: len(png) // 2])
    (folder / "noise.png").write_bytes(b"this is not an image")
    garbled = bytearray(png)  # header and end marker intact, pixel data broken: found only when decoded
    at = garbled.index(b"IDAT") + 40
    garbled[at : at + 20] = bytes(20)
    (folder / "garbled.png").write_bytes(bytes(garbled))
    (folder / "fine.jpg").write_bytes(jpeg)
    return {"cut_jpeg": "cut.jpg", "cut_png": "cut.png", "noise": "noise.png", "garbled": "garbled.png"}


def test_empty_data_file_is_an_error(tmp_path, world, base_llm):
    with pytest.raises(ValueError, match=r"data\.json: the list of records is empty"):
        dataset(tmp_path, [], world, base_llm)


@pytest.mark.parametrize("value,got", [(None, "got null"), (["a.png", "b.png"], "got a list of 2"), ("", "got ''")])
def test_image_field_that_is_not_one_file_name(tmp_path, world, base_llm, value, got):
    rec = dict(good(world), id="odd", image=value)
    with pytest.raises(MalformedSample, match=rf"record 1 \(id=odd\): 'image' must be one image file name.*{got}"):
        dataset(tmp_path, [good(world), rec], world, base_llm)


@pytest.mark.parametrize(
    "kind,message", [("cut_jpeg", "truncated JPEG"), ("cut_png", "truncated PNG"), ("noise", "not a readable image")]
)
def test_bad_image_is_found_when_the_dataset_is_built(tmp_path, world, base_llm, bad_images, kind, message):
    rec = dict(good(world), id="bad", image=bad_images[kind])
    with pytest.raises(ValueError, match=rf"record 1 \(id=bad\): image file .*{bad_images[kind]} .*{message}"):
        dataset(tmp_path, [good(world), rec], world, base_llm)


def test_cheap_check_passes_good_images(world, bad_images):
    assert image_problem(str(world / "images" / "fine.jpg")) is None
    assert image_problem(str(world / "images" / good(world)["image"])) is None
    assert "does not exist" in image_problem(str(world / "images" / "nowhere.png"))


def test_skip_bad_images_logs_counts_and_leaves_them_out(tmp_path, world, base_llm, bad_images, caplog):
    records = [dict(good(world), id=kind, image=name) for kind, name in bad_images.items()]
    records.insert(2, dict(good(world), id="ok"))
    records.append(dict(good(world), id="missing", image="nowhere.png"))
    with caplog.at_level(logging.WARNING, logger="llava.train.data"):
        ds = dataset(tmp_path, records, world, base_llm, skip=True)
    assert sorted(ds.bad_images) == [0, 1, 3, 5]  # garbled.png (4) passes the cheap check
    assert "cut.jpg" in ds.bad_images[0] and "id=cut_jpeg" in ds.bad_images[0]
    assert "nowhere.png" in ds.bad_images[5]
    assert "left out 4 record(s)" in caplog.text
    assert ds[0]["image"].shape == (3, 64, 64)  # records 0 and 1 are left out: record 2 comes back
    ds[4]  # garbled: fails to decode now, is counted, and the next usable record comes back
    assert 4 in ds.bad_images and "garbled.png" in ds.bad_images[4]


def test_image_that_fails_to_decode_names_record_and_file(tmp_path, world, base_llm, bad_images):
    ds = dataset(tmp_path, [dict(good(world), id="garbled", image=bad_images["garbled"])], world, base_llm)
    with pytest.raises(ValueError, match=r"record 0 \(id=garbled\).*garbled\.png.*--skip_bad_images"):
        ds[0]


def test_all_images_bad_is_an_error_even_when_skipping(tmp_path, world, base_llm, bad_images):
    with pytest.raises(ValueError, match="every record's image is unusable"):
        dataset(tmp_path, [dict(good(world), image=bad_images["noise"])], world, base_llm, skip=True)
