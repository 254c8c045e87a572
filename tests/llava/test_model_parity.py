"""Parity: our LlavaLlamaForCausalLM (splice after encode) vs transformers' LlavaForConditionalGeneration
(placeholders expanded beforehand, ``masked_scatter``), built from one tiny config with the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from llava.constants import IMAGE_TOKEN_INDEX


def _hf_model(tiny) -> LlavaForConditionalGeneration:
    config = LlavaConfig(
        vision_config=CLIPVisionConfig(**tiny.clip),
        text_config=LlamaConfig(**tiny.llama),
        image_token_index=tiny.hf_image_token_id,
        image_seq_length=16,
        vision_feature_layer=-2,
        vision_feature_select_strategy="default",
        projector_hidden_act="gelu",
    )
    return LlavaForConditionalGeneration(config).eval()


def _hf_to_ours(hf_state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename HF Llava's keys to LLaVA's layout (the key mapping a user would need for a converted checkpoint)."""
    renames = [
        ("model.vision_tower.", "model.vision_tower.vision_tower."),
        ("model.multi_modal_projector.linear_1.", "model.mm_projector.0."),
        ("model.multi_modal_projector.linear_2.", "model.mm_projector.2."),
        ("model.language_model.", "model."),
    ]
    out = {}
    for key, value in hf_state.items():
        for old, new in renames:
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out


def _paired_models(tiny):
    hf = _hf_model(tiny)
    ours = tiny.model("clip", projector="mlp2x_gelu", mm_vision_select_layer=-2)
    missing, unexpected = ours.load_state_dict(_hf_to_ours(hf.state_dict()), strict=True)
    assert not missing and not unexpected
    return hf, ours


def _batch(tiny):
    """Two samples with one image each (same size) and a text-only sample, as our ids and HF's expanded ids."""
    rows = [tiny.prompt(9, image_at=[3], seed=1), tiny.prompt(6, image_at=[1], seed=2), tiny.prompt(11, seed=3)]
    n_tokens = (tiny.clip["image_size"] // tiny.clip["patch_size"]) ** 2
    hf_rows = []
    for r in rows:
        parts = [torch.full((n_tokens,), tiny.hf_image_token_id) if t == IMAGE_TOKEN_INDEX else t.view(1) for t in r]
        hf_rows.append(torch.cat(parts))
    return rows, hf_rows, tiny.images(2, "clip")


def test_logits_match_transformers_llava(tiny):
    hf, ours = _paired_models(tiny)
    rows, hf_rows, images = _batch(tiny)
    ids, mask = tiny.right_pad(rows)
    hf_ids, hf_mask = tiny.right_pad(hf_rows)
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask, images=images)
        ref = hf(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=images)
    assert out.logits.shape == ref.logits.shape  # the splice gives each sample HF's expanded length
    real = hf_mask  # same real positions in both layouts (right padding)
    diff = (out.logits - ref.logits)[real].abs().max().item()
    assert diff < 1e-5, diff
    assert [lay.num_image_tokens for lay in out.image_layouts] == [16, 16, 0]
    assert [lay.image_start for lay in out.image_layouts] == [3, 1, -1]


def test_loss_matches_transformers_llava_with_labels(tiny):
    hf, ours = _paired_models(tiny)
    rows, hf_rows, images = _batch(tiny)
    ids, mask = tiny.right_pad(rows)
    labels = torch.where(mask & (ids != IMAGE_TOKEN_INDEX), ids, torch.full_like(ids, -100))
    hf_ids, hf_mask = tiny.right_pad(hf_rows)
    hf_labels = torch.where(hf_mask & (hf_ids != tiny.hf_image_token_id), hf_ids, torch.full_like(hf_ids, -100))
    with torch.no_grad():
        out = ours(input_ids=ids, attention_mask=mask, images=images, labels=labels)
        ref = hf(input_ids=hf_ids, attention_mask=hf_mask, pixel_values=images, labels=hf_labels)
    assert abs(out.loss.item() - ref.loss.item()) < 1e-5
    assert out.boundary_loss is None  # a CLIP tower has no boundary predictor


def _plain_llama(tiny, ours) -> LlamaForCausalLM:
    """transformers' own LlamaForCausalLM holding our model's LLM weights (embeddings, decoder, norm, head)."""
    plain = LlamaForCausalLM(LlamaConfig(**tiny.llama)).eval()
    vision = ("model.vision_tower.", "model.mm_projector.")
    llm = {k: v for k, v in ours.state_dict().items() if not k.startswith(vision)}
    missing, unexpected = plain.load_state_dict(llm, strict=True)
    assert not missing and not unexpected
    return plain


def test_text_only_batch_equals_plain_llama(tiny):
    hf, ours = _paired_models(tiny)
    plain = _plain_llama(tiny, ours)
    rows = [tiny.prompt(8, seed=4), tiny.prompt(5, seed=5)]
    ids, mask = tiny.right_pad(rows)
    with torch.no_grad():
        reference = plain(input_ids=ids, attention_mask=mask).logits  # [2, 8, V], transformers' Llama alone
        spliced = ours(input_ids=ids, attention_mask=mask, images=[]).logits  # through the splice, no images
        direct = ours(input_ids=ids, attention_mask=mask).logits  # no images argument: straight to the LLM
        hf_llava = hf(input_ids=ids, attention_mask=mask).logits  # transformers' Llava without pixels
    real = mask  # padded positions are not compared
    for logits in (spliced, direct, hf_llava):
        assert logits.shape == reference.shape
        torch.testing.assert_close(logits[real], reference[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("tower", ["clip", "drip"])
def test_generate_returns_new_tokens_equal_to_uncached_greedy_loop(tiny, tower):
    model = tiny.model(tower, drip={"threshold": 0.25})  # DRIP: eval-mode boundaries that vary per image
    model.generation_config.eos_token_id = None  # always generate max_new_tokens
    rows = [tiny.prompt(7, image_at=[2], seed=1), tiny.prompt(4, image_at=[1], seed=2), tiny.prompt(5, seed=3)]
    ids, mask = tiny.right_pad(rows)  # the tokenizer's right padding; generate re-pads on the left after splicing
    images = tiny.images(2, tower)
    tower_calls, llm_lengths = [], []
    model.get_vision_tower().register_forward_hook(lambda *_: tower_calls.append(1))
    model.get_model().register_forward_pre_hook(
        lambda _, args, kw: llm_lengths.append(
            (kw["inputs_embeds"] if kw.get("input_ids") is None else kw["input_ids"]).shape[1]
        ),
        with_kwargs=True,
    )
    new = model.generate(ids, images=images, attention_mask=mask, max_new_tokens=4, do_sample=False)
    assert new.shape == (3, 4)  # only the new tokens
    assert len(tower_calls) == 1  # images encoded once
    assert llm_lengths[1:] == [1, 1, 1]  # decoding steps: one new token each, on the KV cache, no re-splice
    image_of = {0: images[0:1], 1: images[1:2], 2: None}
    for i, row in enumerate(rows):
        seq, expected = row, []
        for _ in range(4):
            with torch.no_grad():
                logits = model(input_ids=seq[None], images=image_of[i], use_cache=False).logits
            token = logits[0, -1].argmax()
            expected.append(int(token))
            seq = torch.cat([seq, token.view(1)])
        assert new[i].tolist() == expected, i


def test_llava_tuple_interface_wraps_prepare_multimodal_inputs(tiny):
    model = tiny.model("clip")
    rows = [tiny.prompt(6, image_at=[1], seed=1), tiny.prompt(3, seed=2)]
    ids, mask = tiny.right_pad(rows)
    labels = ids.clamp(min=0)
    images = tiny.images(1)
    with torch.no_grad():
        out = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, images)
        full = model.prepare_multimodal_inputs(ids, mask, labels, images)
        passthrough = model.prepare_inputs_labels_for_multimodal(ids, None, mask, None, labels, None)
        encoded = model.encode_images(images)
    assert out[0] is None and out[3] is None
    expected = (full.position_ids, full.attention_mask, None, full.inputs_embeds, full.labels)
    for got, want in zip(out[1:], expected, strict=True):
        assert got is want or torch.equal(got, want)
    assert full.labels[0, 1:17].eq(-100).all()  # image positions are never trained on
    assert passthrough == (ids, None, mask, None, None, labels)
    assert [tuple(e.shape) for e in encoded] == [(16, 64)]
