"""python -m drip.tools.calibrate: its numeric options are checked at parse time, before the tower is read, and it
calibrates at the temperature it is given."""

from __future__ import annotations

import json

import pytest
import torch
from PIL import Image

from drip import DripVisionTransformer, get_preset, save_drip
from drip.tools import calibrate


@pytest.mark.parametrize(
    "flag, value, expected",
    [
        ("--temperature", "-1", "> 0"),
        ("--temperature", "0", "> 0"),
        ("--temperature", "nan", "finite"),
        ("--num-images", "-1", ">= 1"),
        ("--num-images", "0", ">= 1"),
        ("--num-images", "2.5", "an integer"),
    ],
)
def test_bad_numbers_are_usage_errors_before_anything_is_read(capsys, flag, value, expected):
    with pytest.raises(SystemExit) as stop:  # --tower does not exist: the parser must stop first
        calibrate.main(["--tower", "/nope", "--images", "/nope", "--out", "/nope", flag, value])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and expected in err, err


def _tower_and_images(tmp_path, n: int = 5):
    torch.manual_seed(0)
    save_drip(DripVisionTransformer(get_preset("DRIP-tiny")), tmp_path / "tower")
    (tmp_path / "images").mkdir()
    for i in range(n):
        pixels = (torch.rand(48, 48, 3) * 255).to(torch.uint8).numpy()
        Image.fromarray(pixels).save(tmp_path / "images" / f"{i}.png")


def test_the_given_temperature_and_image_count_are_used(tmp_path, capsys):
    _tower_and_images(tmp_path)
    calibrate.main(
        [
            "--tower",
            str(tmp_path / "tower"),
            "--images",
            str(tmp_path / "images"),
            "--out",
            str(tmp_path / "out"),
            "--temperature",
            "0.25",
            "--num-images",
            "4",
        ]
    )
    report = json.loads(capsys.readouterr().out.split("[calibrate] ", 1)[1])
    assert report["temperature"] == 0.25 and report["images"] == 4


def test_a_missing_tower_or_a_corrupt_image_is_a_one_line_error_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        calibrate.main(["--tower", "/nope", "--images", str(tmp_path), "--out", str(tmp_path / "out")])
    assert stop.value.code == 2
    assert "error: DRIP tower /nope: no such file or folder" in capsys.readouterr().err
    _tower_and_images(tmp_path, n=2)
    (tmp_path / "images" / "1.png").write_bytes(b"\x89PNG\r\n\x1a\n cut short")
    argv = ["--tower", str(tmp_path / "tower"), "--images", str(tmp_path / "images"), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        calibrate.main(argv)
    assert stop.value.code == 2
    assert f"error: cannot read image file {tmp_path / 'images' / '1.png'}" in capsys.readouterr().err
