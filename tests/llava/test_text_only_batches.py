"""A training batch without images still runs the vision tower and projector (a zero-contribution path), so that
under ZeRO-3 every rank joins the same parameter all-gathers; the loss is unchanged and the projector (and a
trainable DRIP boundary predictor) get a zero gradient instead of none. Eval / generation forwards do not pay it."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX


def text_batch(tiny):
    ids, mask = tiny.right_pad([tiny.prompt(7, seed=1), tiny.prompt(5, seed=2)])
    return dict(input_ids=ids, attention_mask=mask, labels=ids.masked_fill(~mask, IGNORE_INDEX))


@pytest.mark.parametrize("tower", ["clip", "drip"])
def test_text_only_training_batch_touches_tower_and_projector(tiny, tower):
    model = tiny.model(tower)
    ran = []
    for name in ("vision_tower", "mm_projector"):
        getattr(model.get_model(), name).register_forward_hook(lambda *_, n=name: ran.append(n))
    batch = text_batch(tiny)
    with torch.no_grad():
        reference = model(**batch).loss  # eval: no tower, no projector
    assert ran == []
    model.train()
    if tower == "drip":  # a trainable boundary predictor: its prior loss joins the objective, scaled to 0
        model.get_vision_tower().vision_tower.predictors.requires_grad_(True)
    out = model(**batch)
    assert ran == ["vision_tower", "mm_projector"]
    torch.testing.assert_close(out.loss, reference, rtol=0, atol=1e-6)
    out.loss.backward()
    projector = dict(model.get_model().mm_projector.named_parameters())
    assert all(p.grad is not None and not p.grad.any() for p in projector.values()), "projector: zero grads"
    if tower == "drip":
        assert out.boundary_loss is not None and out.boundary_loss.requires_grad
        assert float(out.boundary_loss.detach()) == 0.0
        predictor = list(model.get_vision_tower().vision_tower.predictors.parameters())
        assert all(p.grad is not None and not p.grad.any() for p in predictor)


def test_image_batch_unchanged_and_text_only_without_tower(tiny):
    """Batches with images take the usual path; a model without a tower has nothing to touch."""
    model = tiny.model("clip").train()
    ids, mask = tiny.right_pad([tiny.prompt(6, image_at=[1], seed=1)])
    images = tiny.images(1)
    with_images = model(input_ids=ids, attention_mask=mask, images=images).logits
    model.eval()
    torch.testing.assert_close(model(input_ids=ids, attention_mask=mask, images=images).logits, with_images)
    plain = tiny.model("none").train()
    assert not plain.needs_vision_touch(None)
    assert plain(**text_batch(tiny)).loss is not None
