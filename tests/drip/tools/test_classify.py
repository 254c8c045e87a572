"""drip.tools.classify: linear probe reaches high accuracy on a separable folder; finetune trains the tower
(+ DRIP loss)."""

import argparse
import json

import numpy as np
import open_clip
import pytest
import torch
import torchvision.transforms as T
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from drip import DripVisionTransformer, get_preset
from drip.tools.classify import (
    TowerClassifier,
    check_same_classes,
    encode_images,
    finetune,
    run,
    train_linear_probe,
)
from drip.tools.files import image_folder


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """Tiny ops: a second intra-op thread only adds barrier waits on the shared 2-core machine (~20x slower)."""
    torch.set_num_threads(1)


COLOURS = {"blue": (30, 60, 220), "green": (40, 200, 60), "red": (220, 40, 40)}


def colour_folder(root, per_class, seed):
    """ROOT/<colour>/<i>.png: 32x32 noisy solid-colour images (linearly separable by mean colour)."""
    rng = np.random.default_rng(seed)
    for name, rgb in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            px = np.clip(np.array(rgb) + rng.normal(0, 12, (32, 32, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(px).save(root / name / f"{i}.png")
    return root


class DripAdapter(nn.Module):
    """Minimal image tower over DRIP for an open_clip CLIP: images -> image_embeds."""

    def __init__(self, tower: DripVisionTransformer):
        super().__init__()
        self.tower = tower

    def forward(self, images):
        return self.tower(images).image_embeds


def tiny_clip(drip: bool = False) -> open_clip.CLIP:
    torch.manual_seed(0)
    model = open_clip.model.CLIP(
        embed_dim=32,
        vision_cfg=dict(image_size=32, patch_size=8, width=32, layers=1, head_width=16),
        text_cfg=dict(context_length=16, vocab_size=49408, width=32, heads=2, layers=1),
    )
    if drip:
        cfg = get_preset("DRIP-tiny", image_size=32, embed_dim=32, layers=2, temperature_final=0.5)
        model.visual = DripAdapter(DripVisionTransformer(cfg))
    return model


PREPROCESS = T.Compose([T.ToTensor(), T.Normalize(open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)])


def test_linear_probe_separable(tmp_path):
    train = image_folder(colour_folder(tmp_path / "train", 8, seed=0), PREPROCESS)
    val = image_folder(colour_folder(tmp_path / "val", 4, seed=1), PREPROCESS)
    model = tiny_clip()
    xtr, ytr, stats = encode_images(model, DataLoader(train, batch_size=10), "cpu")
    xva, yva, _ = encode_images(model, DataLoader(val, batch_size=10), "cpu")
    assert xtr.shape == (24, 32) and ytr.tolist() == sorted(ytr.tolist()) and stats["tokens_per_image"] is None
    res = train_linear_probe((xtr, ytr), (xva, yva), 3, epochs=30, lr=0.05, batch_size=8)
    assert res["top1"] >= 0.9 and len(res["history"]) == 30
    assert res["history"][-1]["train_loss"] < res["history"][0]["train_loss"]
    # Shuffled labels cannot be learnt from the val set's point of view: the probe must not be reading labels.
    shuffled = ytr[torch.randperm(len(ytr), generator=torch.Generator().manual_seed(0))]
    assert train_linear_probe((xtr, shuffled), (xva, yva), 3, 30, 0.05, 8)["top1"] < res["top1"]


def test_finetune_drip_adds_boundary_loss_and_trains_tower_only(tmp_path):
    train = image_folder(colour_folder(tmp_path / "train", 6, seed=0), PREPROCESS)
    val = image_folder(colour_folder(tmp_path / "val", 4, seed=1), PREPROCESS)
    model = tiny_clip(drip=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    clf = TowerClassifier(model, 32, 3)
    loader = DataLoader(train, batch_size=6, shuffle=True, generator=torch.Generator().manual_seed(0))
    res = finetune(clf, loader, DataLoader(val, batch_size=12), epochs=4, lr=3e-3, weight_decay=0.0)
    assert res["boundary_loss_used"] and len(res["history"]) == 4
    assert res["top1"] >= 0.9 and res["history"][-1]["train_ce"] < 0.5 * res["history"][0]["train_ce"]
    h = res["history"][-1]
    assert h["train_boundary_loss"] > 0
    assert h["train_loss"] == pytest.approx(h["train_ce"] + h["train_boundary_loss"], rel=1e-5)
    assert 1 <= h["tokens_per_image"] <= 16 and 0 < h["boundary_rate"] <= 1
    assert 1 < h["train_tokens_per_image"] <= 16  # train mode samples boundaries at about the prior's rate
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.tower.predictors") for k in changed)
    assert any(k.startswith("visual.tower.blocks") for k in changed)
    assert not any(k.startswith(("transformer.", "token_embedding", "text_projection")) for k in changed)
    assert model.visual.tower.temperature == pytest.approx(0.5)  # annealed to the preset's final value


def test_finetune_frozen_predictor_drops_boundary_loss(tmp_path):
    train = image_folder(colour_folder(tmp_path / "train", 2, seed=0), PREPROCESS)
    model = tiny_clip(drip=True)
    pred = {k: v.clone() for k, v in model.visual.tower.predictors.state_dict().items()}
    clf = TowerClassifier(model, 32, 3)
    res = finetune(
        clf, DataLoader(train, batch_size=6), DataLoader(train, batch_size=6), 1, 1e-3, freeze_predictor=True
    )
    assert not res["boundary_loss_used"] and res["history"][0]["train_boundary_loss"] == 0
    assert all(torch.equal(pred[k], v) for k, v in model.visual.tower.predictors.state_dict().items())


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_run_modes_report(tmp_path, mode):
    colour_folder(tmp_path / "train", 4, seed=0)
    colour_folder(tmp_path / "val", 2, seed=1)
    args = argparse.Namespace(
        train_data=tmp_path / "train",
        val_data=tmp_path / "val",
        mode=mode,
        epochs=2,
        lr=1e-2,
        batch_size=5,
        weight_decay=0.0,
        freeze_predictor=False,
        workers=0,
        seed=0,
        device="cpu",
    )
    res = run(args, tiny_clip(drip=True), PREPROCESS, PREPROCESS)
    assert (res["num_classes"], res["num_train"], res["num_val"]) == (3, 12, 6)
    assert len(res["history"]) == 2 and res["top1"] == res["history"][-1]["val_top1"]
    correct = res["top1"] * res["num_val"]  # a share of the 6 val images, not e.g. a mean logit or a loss
    assert correct == pytest.approx(round(correct)) and 0 <= round(correct) <= res["num_val"]
    if mode == "linear":  # solid colours are linearly separable even in a random tower's embeddings
        assert res["top1"] > 1 / 3
    assert res["tokens_per_image"] is not None and res["boundary_rate"] is not None


def test_class_mismatch_is_reported():
    with pytest.raises(ValueError, match="val folder v has"):
        check_same_classes(["a", "b"], ["a", "c"], "t", "v")


def test_cli_linear_writes_json(tmp_path):
    from drip.tools.classify import main

    colour_folder(tmp_path / "train", 4, seed=0)
    colour_folder(tmp_path / "val", 2, seed=1)
    out = tmp_path / "run" / "classify_linear.json"
    flags = ["--train-data", str(tmp_path / "train"), "--val-data", str(tmp_path / "val"), "--epochs", "3"]
    res = main(["--model", "DRIP-tiny", *flags, "--mode", "linear", "--batch-size", "6", "--json", str(out)])
    assert json.loads(out.read_text()) == res
    assert (res["mode"], res["epochs"], res["lr"], res["num_val"]) == ("linear", 3, 1e-2, 6)
    assert res["top1"] == res["history"][-1]["val_top1"] and res["tokens_per_image"] >= 1 and len(res["history"]) == 3
    assert res["top1"] * 6 == pytest.approx(round(res["top1"] * 6)) and res["top1"] > 1 / 3
    with pytest.raises(SystemExit):
        main(["--model", "DRIP-tiny", *flags, "--mode", "probe"])
