"""LLaVA's LM loss as the boundary-signal loss (llava.tools.lm_row_loss) and its tool (llava.tools.boundary_signal)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from llava.constants import IGNORE_INDEX
from llava.tools import boundary_signal
from llava.tools.lm_row_loss import lm_row_loss, per_sample_lm_loss


def test_per_sample_lm_loss_hand_computed():
    logits = torch.randn(2, 4, 5, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([[IGNORE_INDEX, 3, 1, IGNORE_INDEX], [IGNORE_INDEX, IGNORE_INDEX, IGNORE_INDEX, 2]])
    # row 0: positions 0 and 1 predict labels 3 and 1; row 1: position 2 predicts 2
    row0 = F.cross_entropy(logits[0, 0:1], torch.tensor([3])) + F.cross_entropy(logits[0, 1:2], torch.tensor([1]))
    row1 = F.cross_entropy(logits[1, 2:3], torch.tensor([2]))
    torch.testing.assert_close(per_sample_lm_loss(logits, labels), torch.stack([row0 / 2, row1]))
    assert per_sample_lm_loss(logits, torch.full_like(labels, IGNORE_INDEX)).tolist() == [0.0, 0.0]


@pytest.fixture(scope="module")
def args(world, base_llm):
    return boundary_signal.parse_args(
        [
            "--data-path",
            str(world / "instruct.json"),
            "--image-folder",
            str(world / "images"),
            "--base-llm",
            str(base_llm),
            "--batch",
            "2",
            "--seeds",
            "0",
            "--max-length",
            "256",
        ]
    )


def test_row_loss_with_the_towers_own_boundaries_is_the_models_lm_loss(args):
    # Known answer: forcing the boundaries the tower would pick itself gives each sample exactly the LM loss the
    # model computes for that sample alone (its training loss: labels, splice, packing and all).
    tokenizer, model = boundary_signal.build_model(args, 0)
    tower = boundary_signal._with_autograd(model).get_vision_tower()
    ds = boundary_signal.LazySupervisedDataset(
        args.data_path,
        tokenizer,
        tower.image_processor,
        boundary_signal.DatasetOptions("v1", args.image_folder, "pad", 256, tower.num_patches),
    )
    batch = boundary_signal.image_batch(ds, tokenizer, 2, seed=0)
    with torch.no_grad():
        own = tower.vision_tower(batch["images"]).boundaries  # [2, N] eval boundaries
        rows = lm_row_loss(model, batch)(own, torch.tensor([1, 0]))
        for r, i in enumerate([1, 0]):
            one = {k: v[i : i + 1] for k, v in batch.items()}
            expected = model(**one).loss
            assert float(rows[r]) == pytest.approx(float(expected), rel=1e-4)
        flipped = own.clone()
        flipped[:, :8] = 1 - flipped[:, :8]  # other boundaries: another loss (the forced ones are used)
        assert not torch.allclose(lm_row_loss(model, batch)(flipped, torch.tensor([1, 0])), rows)


def test_tool_reports_both_estimators(args, capsys):
    reports = boundary_signal.main(
        [
            "--data-path",
            args.data_path,
            "--image-folder",
            args.image_folder,
            "--base-llm",
            args.base_llm,
            "--batch",
            "2",
            "--seeds",
            "0",
            "--max-length",
            "256",
        ]
    )
    assert [(e, s) for e, s, _ in reports] == [("straight_through", 0), ("local", 0)]
    for _, _, r in reports:
        assert r.flips == 2 * 63 and 0 <= r.sign_agreement <= 1 and -1 <= r.spearman <= 1
    out = capsys.readouterr().out
    assert "straight_through mean" in out and "local            mean" in out
