"""Variable visual-token counts (DRIP): per-sample results in a mixed batch equal each sample alone; the DRIP tower
path end to end; who decides about gradients; bad inputs; the PyramidDrop hook."""

from __future__ import annotations

import pytest
import torch

from drip.pooling import simulated_boundaries
from llava.constants import IMAGE_TOKEN_INDEX
from llava.model.config import PDropConfig
from llava.model.splice import splice_image_features

COUNTS = (3, 17, 64)  # DRIP-tiny has 64 patches: from heavy pooling to none


def _forced_boundaries(counts=COUNTS) -> torch.Tensor:
    return torch.cat([simulated_boundaries(64, n / 64) for n in counts])  # [B, 64], exactly n boundaries per row


def test_drip_tower_forced_counts_strip_padding(tiny):
    tower = tiny.model("drip").get_vision_tower()
    images = tiny.images(3, "drip")
    with torch.no_grad():
        out = tower(images, boundaries=_forced_boundaries())
        alone = [tower(images[i : i + 1], boundaries=_forced_boundaries(COUNTS[i : i + 1])) for i in range(3)]
    assert out.token_counts.tolist() == list(COUNTS)
    assert [tuple(f.shape) for f in out.features] == [(n, 64) for n in COUNTS]
    for i in range(3):  # padding DRIP adds to batch the images never leaks into an image's features
        torch.testing.assert_close(out.features[i], alone[i].features[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_mixed_counts_batch_equals_each_sample_alone(tiny, padding_side):
    model = tiny.model("drip")
    tower, projector = model.get_vision_tower(), model.get_model().mm_projector
    with torch.no_grad():
        feats = tower(tiny.images(3, "drip"), boundaries=_forced_boundaries()).features
        feats = [projector(f) for f in feats]  # [3, 64], [17, 64], [64, 64]
    rows = [
        tiny.prompt(7, image_at=[2], seed=1),
        tiny.prompt(4, image_at=[1], seed=2),
        tiny.prompt(12, image_at=[5], seed=3),
        tiny.prompt(9, seed=4),  # text only
    ]
    owned = [[feats[0]], [feats[1]], [feats[2]], []]

    def run(ids_rows, features):
        s = splice_image_features(
            list(ids_rows), None, None, features, model.get_model().embed_tokens, padding_side=padding_side
        )
        with torch.no_grad():
            out = model(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids)
        return out.logits, s

    batched, s = run(rows, [f for own in owned for f in own])
    assert [lay.num_image_tokens for lay in s.layouts] == [3, 17, 64, 0]
    for i, row in enumerate(rows):
        alone, _ = run([row], owned[i])
        real = batched[i][s.attention_mask[i]]  # [seq_len_i, V]
        torch.testing.assert_close(real, alone[0], atol=1e-5, rtol=1e-5)


def test_drip_end_to_end_eval_mode_varied_counts(tiny):
    # Threshold at the prior (0.25): the untrained predictor's eval decisions then vary from image to image.
    model = tiny.model("drip", drip={"threshold": 0.25})
    images = tiny.images(3, "drip", seed=7)
    rows = [tiny.prompt(6, image_at=[1], seed=i) for i in range(3)]
    ids, mask = tiny.right_pad(rows)
    with torch.no_grad():
        counts = model.get_vision_tower()(images).token_counts.tolist()
        out = model(input_ids=ids, attention_mask=mask, images=images)
        alone = [model(input_ids=rows[i][None], images=images[i : i + 1]).logits[0] for i in range(3)]
    assert len(set(counts)) > 1, counts
    assert [lay.num_image_tokens for lay in out.image_layouts] == counts
    for i in range(3):
        real = out.logits[i, : out.image_layouts[i].seq_len]
        torch.testing.assert_close(real, alone[i], atol=1e-5, rtol=1e-5)


def test_frozen_tower_runs_without_grad_in_eval_mode(tiny):
    model = tiny.model("drip").train()
    tower = model.get_vision_tower()
    tower.set_trainable("none")
    feats = model.encode_image_features(tiny.images(2, "drip"))
    assert tower.training  # the caller's mode is restored
    assert not feats.boundary_loss.requires_grad  # ran under no_grad
    assert all(f.requires_grad for f in feats.features)  # the projector after it still trains
    # eval mode inside: deterministic boundaries even though the model is in train mode
    again = model.encode_image_features(tiny.images(2, "drip"))
    assert feats.token_counts.tolist() == again.token_counts.tolist()


def test_trainable_predictor_gets_boundary_loss_and_gradient(tiny):
    model = tiny.model("drip").train()
    tower = model.get_vision_tower()
    tower.set_trainable("predictor")  # --tune_vision_tower predictor
    ids = torch.stack([tiny.prompt(6, image_at=[1], seed=i) for i in range(2)])
    labels = torch.where(ids == IMAGE_TOKEN_INDEX, -100, ids)
    out = model(input_ids=ids, images=tiny.images(2, "drip"), labels=labels)
    assert out.boundary_loss.requires_grad
    torch.testing.assert_close(out.loss, out.lm_loss + out.boundary_loss)
    out.loss.backward()
    trained = {n: p.grad for n, p in tower.named_parameters() if p.requires_grad}
    assert trained and all(".predictors." in n for n in trained)
    grads = list(trained.values())
    assert all(g is not None for g in grads) and any(bool(g.abs().sum() > 0) for g in grads)


def test_image_count_mismatch_names_the_sample(tiny):
    model = tiny.model("clip")
    rows = [tiny.prompt(6, image_at=[1], seed=1), tiny.prompt(6, image_at=[1, 3], seed=2)]
    ids, mask = tiny.right_pad(rows)
    with pytest.raises(ValueError, match="sample 1 has 2 image token"):
        model(input_ids=ids, attention_mask=mask, images=tiny.images(2))
    with pytest.raises(ValueError, match="4 image feature tensors were given but the batch has only 3"):
        model(input_ids=ids, attention_mask=mask, images=tiny.images(4))
    with pytest.raises(ValueError, match="sample 0 has 1 image token"):
        model.generate(ids[:1], max_new_tokens=1)  # placeholder but no image


def test_other_bad_inputs(tiny):
    text_only = tiny.model("none")
    ids = tiny.prompt(6, image_at=[1])[None]
    with pytest.raises(ValueError, match="no vision tower"):
        text_only(input_ids=ids, images=tiny.images(1))
    model = tiny.model("clip")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        model(input_ids=ids, images=torch.zeros(3, 32, 32))
    with pytest.raises(ValueError, match="not inputs_embeds"):
        model(inputs_embeds=torch.zeros(1, 4, 64), images=tiny.images(1))


def test_prompt_longer_than_context_is_rejected(tiny):
    model = tiny.model("clip")  # max_position_embeddings 256; an image adds 16 tokens
    ids = tiny.prompt(250, image_at=[1])[None]
    with pytest.raises(ValueError, match=r"sample 0 \(265 tokens\): longer than the model.s context of 256"):
        model.generate(ids, images=tiny.images(1), max_new_tokens=2)


def test_pdrop_hook_keep_all_equals_plain_and_drop_shortens(tiny):
    model = tiny.model("drip")
    images = tiny.images(2, "drip")
    rows = [tiny.prompt(6, image_at=[1], seed=1), tiny.prompt(9, image_at=[4], seed=2)]
    ids, mask = tiny.right_pad(rows)
    b = _forced_boundaries((17, 40))
    feats = [model.get_model().mm_projector(f) for f in model.get_vision_tower()(images, boundaries=b).features]
    s = splice_image_features(rows, None, None, feats, model.get_model().embed_tokens)
    kwargs = dict(inputs_embeds=s.inputs_embeds, attention_mask=s.attention_mask, position_ids=s.position_ids)
    with torch.no_grad():
        plain = model(**kwargs).logits
        model.set_pdrop(PDropConfig((1,), (1.0,)))
        keep_all = model(**kwargs, image_layouts=s.layouts).logits
        model.set_pdrop(PDropConfig((1,), (0.5,)))
        dropped = model(**kwargs, image_layouts=s.layouts)
    assert model.config.pdrop_layer_list == [1]  # recorded for save_pretrained
    real = s.attention_mask  # padding rows are not compared: their values are arbitrary
    torch.testing.assert_close(keep_all[real], plain[real], atol=1e-5, rtol=1e-5)
    assert dropped.logits.shape[1] < plain.shape[1]  # after layer 1 each sample keeps half its image tokens


def test_pdrop_generate_passes_layouts_to_prefill_only(tiny):
    model = tiny.model("clip")
    model.generation_config.eos_token_id = None
    rows = [tiny.prompt(7, image_at=[2], seed=1), tiny.prompt(4, image_at=[1], seed=2)]
    ids, mask = tiny.right_pad(rows)
    kwargs = dict(images=tiny.images(2), attention_mask=mask, max_new_tokens=4, do_sample=False)
    plain = model.generate(ids, **kwargs)
    model.set_pdrop(PDropConfig((1,), (1.0,)))
    seen = []
    model.register_forward_pre_hook(lambda _, a, kw: seen.append(kw.get("image_layouts") is not None), with_kwargs=True)
    keep_all = model.generate(ids, **kwargs)
    assert seen == [True, False, False, False]
    assert keep_all.tolist() == plain.tolist()
    model.set_pdrop(PDropConfig((1,), (0.25,)))
    assert model.generate(ids, **kwargs).shape == (2, 4)


def test_image_list_equals_batch_tensor(tiny):
    model = tiny.model("clip")
    images = tiny.images(2)
    rows = [tiny.prompt(6, image_at=[1], seed=1), tiny.prompt(6, image_at=[2], seed=2)]
    ids, _ = tiny.right_pad(rows)
    with torch.no_grad():
        stacked = model(input_ids=ids, images=images).logits
        listed = model(input_ids=ids, images=[images[0], images[1]]).logits
        grouped = model(input_ids=ids, images=[images[:2]]).logits  # one [k, C, H, W] tensor
    assert torch.equal(stacked, listed) and torch.equal(stacked, grouped)
    with pytest.raises(ValueError, match="one shape"):
        model(input_ids=ids, images=[images[0], images[1, :, :16]])
