"""drip.images: every image mode becomes faithful 8-bit RGB (16-bit and float greyscale scaled, not clipped to white;
transparency over white), and no module of the project opens or converts images any other way."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from drip.images import load_image, to_rgb

ROOT = Path(__file__).resolve().parents[2]
RAMP = np.linspace(0, 1, 64 * 48).reshape(48, 64)  # [H, W] in [0, 1]


def _grey(rgb: Image.Image) -> np.ndarray:
    out = np.asarray(rgb)
    assert rgb.mode == "RGB" and out.dtype == np.uint8
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    return out[..., 0].astype(int)


def test_a_16_bit_png_is_scaled_to_8_bits_not_clipped_to_white(tmp_path):
    Image.fromarray((RAMP * 65535).round().astype(np.uint16)).save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as raw:
        assert raw.mode.startswith("I")  # what PIL makes of a 16-bit greyscale PNG
    got = _grey(load_image(tmp_path / "deep.png"))
    assert np.abs(got - RAMP * 255).max() <= 1  # 65535 -> 255, 32768 -> 128, ...
    assert got.min() == 0 and got.max() == 255 and (got < 128).mean() == pytest.approx(0.5, abs=0.01)


@pytest.mark.parametrize(
    "values, mode",
    [(RAMP * 65535, "I"), (RAMP * 200, "I"), (RAMP, "F"), (RAMP * 255, "F"), (RAMP * 40000, "F")],
)
def test_wide_grey_modes_keep_their_contrast(values, mode):
    top = {1.0: 1.0, 200: 255, 255: 255, 40000: 65535, 65535: 65535}[round(float(values.max()), 4)]
    image = Image.fromarray(values.astype(np.int32 if mode == "I" else np.float32), mode)
    assert np.abs(_grey(to_rgb(image)) - values / top * 255).max() <= 1


def test_transparency_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 2), (0, 0, 0, 0))  # fully transparent black: convert("RGB") shows black
    rgba.putpixel((1, 0), (255, 0, 0, 255))
    rgba.putpixel((2, 0), (0, 0, 255, 128))
    got = np.asarray(to_rgb(rgba))
    assert got[1, 3].tolist() == [255, 255, 255] and got[0, 1].tolist() == [255, 0, 0]
    assert got[0, 2].tolist() == pytest.approx([127, 127, 255], abs=1)
    la = Image.fromarray(np.stack([np.full((2, 2), 40), np.array([[0, 255], [255, 255]])], -1).astype(np.uint8), "LA")
    assert np.asarray(to_rgb(la))[..., 0].tolist() == [[255, 40], [40, 40]]
    palette = Image.new("P", (2, 1))
    palette.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    palette.putpixel((1, 0), 1)
    palette.info["transparency"] = 0  # colour 0 (black) is transparent
    assert np.asarray(to_rgb(palette))[0].tolist() == [[255, 255, 255], [10, 200, 30]]


def test_8_bit_modes_are_pils_own_conversion():
    g = np.random.default_rng(0)
    rgb = Image.fromarray(g.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    assert to_rgb(rgb) is rgb
    for image in (rgb.convert("L"), rgb.convert("CMYK"), rgb.convert("YCbCr"), rgb.convert("1"), rgb.convert("P")):
        assert np.array_equal(np.asarray(to_rgb(image)), np.asarray(image.convert("RGB"))), image.mode


def test_unreadable_files_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.png"):
        load_image(tmp_path / "nope.png")
    (tmp_path / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(ValueError, match=r"cannot read image file .*bad\.png"):
        load_image(tmp_path / "bad.png")


LOADER = "drip/images.py"
ALLOWED_OPEN = {"llava/train/data.py"}  # opens headers only (image_problem's format check)
CONVERTS = re.compile(r"""\.convert\(\s*["']RGB["']\s*\)|Image\.open\(""")


def places_that_load_images_themselves(root: Path) -> list[str]:
    found = []
    for folder in ("drip", "llava", "eval", "llava_drip_demo", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            if rel == LOADER:
                continue
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                match = CONVERTS.search(line)
                if match and not (rel in ALLOWED_OPEN and match.group().startswith("Image.open")):
                    found.append(f"{rel}:{n}: {line.strip()}")
    return found


def test_every_image_is_loaded_through_drip_images(tmp_path):
    assert places_that_load_images_themselves(ROOT) == []
    planted = tmp_path / "llava" / "serve"
    planted.mkdir(parents=True)
    (planted / "x.py").write_text('image = Image.open(path).convert("RGB")\n')
    assert places_that_load_images_themselves(tmp_path) == [
        'llava/serve/x.py:1: image = Image.open(path).convert("RGB")'
    ]
