"""drip.tools.visualize: segment drawing on a real photo (scikit-image's bundled astronaut), composition of H-DRIP
stage boundaries, preprocessing, checkpoint loading and the CLI."""

import numpy as np
import pytest
import torch
from PIL import Image

from drip import DripVisionTransformer, get_preset
from drip.checkpoint import save_drip
from drip.segments import draw_segments, patch_boundaries, segment_id_map
from drip.tools.visualize import CLIP_MEAN, image_source, load_tower, main, preprocess, render

OUTLINE = (255, 255, 255)


@pytest.fixture(scope="module")
def photo() -> Image.Image:
    return image_source(None, "astronaut").resize((128, 128))  # a real 512x512 photo, shipped offline


def outline_pixels(img: Image.Image) -> int:
    return int((np.asarray(img) == OUTLINE).all(-1).sum())


def region_colours(img: Image.Image) -> set[tuple[int, int, int]]:
    """Distinct colours of the non-outline pixels."""
    a = np.asarray(img).reshape(-1, 3)
    return {tuple(p) for p in a[~(a == OUTLINE).all(-1)]}


@pytest.mark.parametrize(
    "ends",
    [[7, 15, 23, 31, 39, 47, 55, 63], [63], [2, 40, 63], list(range(64))],  # rows, one, three, every patch
)
def test_one_colour_region_per_segment(ends):
    grey = Image.new("RGB", (64, 64), (128, 128, 128))
    b = torch.zeros(64)
    b[ends] = 1.0
    out = draw_segments(grey, b, grid=8)
    assert out.size == (64, 64)
    assert len(region_colours(out)) == len(ends)
    # every patch centre carries its segment's colour: same segment -> same colour, different -> different
    a = np.asarray(out)
    ids = (b.cumsum(0) - b).long().tolist()
    centres = {i: tuple(a[(i // 8) * 8 + 4, (i % 8) * 8 + 4]) for i in range(64)}
    for i in range(64):
        for j in range(64):
            assert (centres[i] == centres[j]) == (ids[i] == ids[j])


def test_all_boundaries_vs_single_segment_on_photo(photo):
    every = draw_segments(photo, torch.ones(64), grid=8)
    single = draw_segments(photo, torch.zeros(64), grid=8)  # the last patch closes the only segment
    assert every.size == single.size == photo.size
    diff = np.abs(np.asarray(every, dtype=np.float32) - np.asarray(single, dtype=np.float32)).mean()
    assert diff > 20  # visibly different, not a few pixels
    assert outline_pixels(single) == 0
    assert outline_pixels(every) >= 2 * 7 * 128 - 7 * 7  # the 7 inner grid lines each way
    # the photo still shows through the overlay
    assert np.corrcoef(np.asarray(single).ravel(), np.asarray(photo).ravel())[0, 1] > 0.6


def test_segment_id_map_rejects_wrong_size():
    with pytest.raises(ValueError, match="grid\\*grid = 64"):
        segment_id_map(torch.ones(49), 8, 64, 64)
    ids = segment_id_map(torch.tensor([0.0, 1, 0, 1]), 2, 4, 6)  # 2x2 grid drawn on a 4x6 picture
    assert ids.shape == (4, 6) and ids[0, 0] == 0 and ids[3, 5] == 1


def test_patch_boundaries_composes_stages():
    stage1 = torch.tensor([0.0, 1, 0, 1, 1, 0, 0, 1])  # 4 segments ending at patches 1, 3, 4, 7
    stage2 = torch.tensor([1.0, 0, 0, 1])  # merges segments {0} and {1, 2, 3}
    assert patch_boundaries([stage1, stage2]).tolist() == [0, 1, 0, 0, 0, 0, 0, 1]
    assert patch_boundaries([stage1]).tolist() == stage1.tolist()


@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny", "ViT-tiny"])
def test_render_draws_the_towers_segments(photo, name):
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset(name)).eval()
    picture, out = render(tower, photo, stochastic=True)
    assert picture.size == (64, 64) and not tower.training  # the mode is restored
    count = int(out.token_counts[0])
    assert 1 < count <= 64
    stages = [b[0] for b in out.stage_boundaries] or [torch.ones(64)]
    assert int(patch_boundaries(stages).sum()) == count


def test_preprocess_crops_and_normalises():
    mean = tuple(round(255 * m) for m in CLIP_MEAN)
    x, crop = preprocess(Image.new("RGB", (100, 60), mean), 64)
    assert x.shape == (1, 3, 64, 64) and crop.size == (64, 64)
    assert x.abs().max() < 0.01  # the CLIP mean colour maps to ~0


def test_load_tower_from_checkpoint(tmp_path):
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny")).eval()
    save_drip(tower, tmp_path / "tower")
    loaded = load_tower(None, str(tmp_path / "tower")).eval()
    x, b = torch.randn(1, 3, 64, 64), torch.ones(1, 64)
    with torch.no_grad():
        assert torch.equal(loaded(x, b).image_embeds, tower(x, b).image_embeds)
    torch.save(tower.state_dict(), tmp_path / "bare.pt")
    with pytest.raises(FileNotFoundError, match="pass cfg_or_preset"):
        load_tower(None, str(tmp_path / "bare.pt"))
    assert isinstance(load_tower("DRIP-tiny", str(tmp_path / "bare.pt")), DripVisionTransformer)
    with pytest.raises(ValueError, match="--preset or --checkpoint"):
        load_tower(None, None)


def test_cli_writes_png(tmp_path, capsys):
    out = tmp_path / "seg.png"
    main(["--skimage", "astronaut", "--preset", "DRIP-tiny", "--stochastic", "--out", str(out)])
    assert Image.open(out).size == (64, 64)
    big = tmp_path / "big.png"
    main(["--skimage", "coffee", "--preset", "DRIP-tiny", "--display-size", "192", "--out", str(big)])
    assert Image.open(big).size == (192, 192)
    assert "segments over 64 patches" in capsys.readouterr().out
    with pytest.raises(ValueError, match="no image 'nonexistent'"):
        main(["--skimage", "nonexistent", "--preset", "DRIP-tiny", "--out", str(out)])


def test_cli_boundary_mode_keeps_the_segment_count(tmp_path, capsys):
    # A calibrated threshold gives the photo a count between 1 and 64; uniform draws the same number of segments.
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny"))
    tower.calibrate_eval_thresholds(torch.randn(8, 3, 64, 64))
    save_drip(tower, tmp_path / "tower")
    counts = {}
    for mode in ("learned", "uniform"):
        main(
            [
                "--skimage",
                "coffee",
                "--checkpoint",
                str(tmp_path / "tower"),
                "--boundary-mode",
                mode,
                "--out",
                str(tmp_path / f"{mode}.png"),
            ]
        )
        counts[mode] = capsys.readouterr().out.split(":")[1].split()[0]
    assert counts["learned"] == counts["uniform"] and 1 < int(counts["learned"]) < 64
    assert Image.open(tmp_path / "learned.png").tobytes() != Image.open(tmp_path / "uniform.png").tobytes()
