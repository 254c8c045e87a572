"""Packed prefill of batched generation (llava.model.packed_prefill): the prompts end to end, the KV cache scattered
into the left-padded layout, and decoding continuing from it. Greedy and beam answers equal the padded prefill's
(fp32), with PyramidDrop on and off; a backend or cache that cannot pack runs the padded prefill."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache, StaticCache

from llava.model.config import PDropConfig
from llava.model.packed_prefill import prefill_padding, wants_packed_prefill
from llava.model.packing import plan_for_model


def _batch(tiny, tower: str):
    """Four prompts of different lengths, three with an image (DRIP: a different token count each), right-padded
    as a tokenizer gives them; ``generate`` splices and left-pads them."""
    rows = [
        tiny.prompt(7, image_at=[2], seed=1),
        tiny.prompt(4, image_at=[1], seed=2),
        tiny.prompt(5, seed=3),
        tiny.prompt(9, image_at=[3], seed=4),
    ]
    ids, mask = tiny.right_pad(rows)
    return ids, mask, tiny.images(3, tower)


def _model(tiny, tower: str, pdrop: PDropConfig | None):
    model = tiny.model(tower, drip=dict(threshold=0.25) if tower == "drip" else None)
    model.generation_config.eos_token_id = None  # always max_new_tokens
    model.set_pdrop(pdrop)
    return model


class FirstLayerSlots:
    """Records the [rows, length] of the hidden states entering decoder layer 0 at the prefill (its first call)."""

    def __init__(self, model):
        self.shapes: list[tuple[int, int]] = []
        self.handle = model.get_model().layers[0].register_forward_pre_hook(self.record, with_kwargs=True)

    def record(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.shapes.append(tuple(hidden.shape[:2]))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.handle.remove()


def _generate(model, ids, mask, images, packed: bool, **kwargs):
    model.set_packed_prefill(packed)
    with FirstLayerSlots(model) as slots:
        out = model.generate(ids, images=images, attention_mask=mask, max_new_tokens=5, do_sample=False, **kwargs)
    return out, slots.shapes[0]


@pytest.mark.parametrize("pdrop", [None, PDropConfig((1,), (0.5,))], ids=["pdrop_off", "pdrop_on"])
@pytest.mark.parametrize("tower", ["clip", "drip"])
def test_packed_prefill_greedy_answers_equal_padded(tiny, tower, pdrop):
    model = _model(tiny, tower, pdrop)
    ids, mask, images = _batch(tiny, tower)
    padded, padded_slots = _generate(model, ids, mask, images, packed=False)
    packed, packed_slots = _generate(model, ids, mask, images, packed=True)
    assert packed.tolist() == padded.tolist()
    assert padded_slots[0] == 4 and packed_slots[0] * packed_slots[1] < padded_slots[0] * padded_slots[1]
    assert len({tuple(row) for row in padded.tolist()}) > 1  # answers depend on the prompt: a mix-up would show


@pytest.mark.parametrize("pdrop", [None, PDropConfig((1,), (0.5,))], ids=["pdrop_off", "pdrop_on"])
def test_packed_prefill_beams_equal_padded(tiny, pdrop):
    """HF expands every prompt into its beams before the prefill, so the pack holds 2 copies of each prompt."""
    model = _model(tiny, "drip", pdrop)
    ids, mask, images = _batch(tiny, "drip")
    kwargs = dict(num_beams=2, num_return_sequences=2)
    padded, padded_slots = _generate(model, ids, mask, images, packed=False, **kwargs)
    packed, packed_slots = _generate(model, ids, mask, images, packed=True, **kwargs)
    assert packed.shape == (8, 5) and packed.tolist() == padded.tolist()
    assert padded_slots[0] == 8 and packed_slots[0] * packed_slots[1] < padded_slots[0] * padded_slots[1]


@pytest.mark.parametrize("single_row", [None, True])
def test_prefill_cache_and_logits_equal_padded(tiny, single_row):
    """One prefill forward: next-token logits and every layer's cached keys / values at the real positions."""
    model = _model(tiny, "drip", None)
    model.set_packing(True, single_row=single_row)
    ids, mask, images = _batch(tiny, "drip")
    mm = model.prepare_multimodal_inputs(ids, mask, None, images, None, truncate=False, padding_side="left")
    out, caches = {}, {}
    for packed in (False, True):
        model.set_packed_prefill(packed)
        caches[packed] = DynamicCache(config=model.config)
        kwargs = dict(attention_mask=mm.attention_mask, position_ids=mm.position_ids, use_cache=True)
        out[packed] = model(inputs_embeds=mm.inputs_embeds, cache=caches[packed], logits_to_keep=1, **kwargs)
    torch.testing.assert_close(out[True].logits, out[False].logits, rtol=1e-5, atol=1e-5)
    real = mm.attention_mask  # [B, T]
    for a, b in zip(caches[True].layers, caches[False].layers, strict=True):
        assert a.keys.shape == b.keys.shape  # [B, kv_heads, T, head_dim]
        torch.testing.assert_close(a.keys.transpose(1, 2)[real], b.keys.transpose(1, 2)[real], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a.values.transpose(1, 2)[real], b.values.transpose(1, 2)[real], rtol=1e-5, atol=1e-5)
        assert not a.keys.transpose(1, 2)[~real].any()  # padding slots stay zero; the decode masks never read them


def test_what_cannot_pack_runs_padded(tiny):
    model = _model(tiny, "clip", None)
    cfg, mask = model.config, torch.tensor([[False, True, True], [True, True, True]])
    empty = DynamicCache(config=cfg)
    assert wants_packed_prefill(True, cfg, False, None, mask, empty, 3)
    assert not wants_packed_prefill(False, cfg, False, None, mask, empty, 3)  # --packed_prefill False
    assert not wants_packed_prefill(True, cfg, False, torch.zeros(2, 3), mask, empty, 3)  # training: labels
    assert not wants_packed_prefill(True, cfg, False, None, mask, None, 3)  # no cache to fill
    assert not wants_packed_prefill(True, cfg, False, None, torch.ones(2, 3, dtype=torch.bool), empty, 3)  # no pad
    static = StaticCache(config=cfg, max_cache_len=8)
    assert not wants_packed_prefill(True, cfg, False, None, mask, static, 3)  # another cache layout
    filled = DynamicCache(config=cfg)
    filled.update(torch.zeros(2, 2, 3, 16), torch.zeros(2, 2, 3, 16), 0)
    assert not wants_packed_prefill(True, cfg, False, None, mask, filled, 1)  # a decode step
    cfg._attn_implementation = "flash_attention_2"
    assert wants_packed_prefill(True, cfg, False, None, mask, empty, 3)
    assert not wants_packed_prefill(True, cfg, True, None, mask, empty, 3)  # PyramidDrop needs SDPA / eager
    model.set_pdrop(PDropConfig((1,), (0.5,)))
    assert not model.prefill_packs()
    cfg._attn_implementation = "sdpa"
    assert model.prefill_packs()
    model.set_packed_prefill(False)
    assert not model.prefill_packs()


def test_prefill_padding_counts_filler_or_left_padding(tiny):
    cfg = tiny.model("clip").config  # sdpa: rows planned by cost
    lengths = [30, 10, 12, 25]
    assert prefill_padding(cfg, lengths, packed=False) == (0 + 20 + 18 + 5)
    rows = plan_for_model(cfg, lengths)
    width = max(sum(lengths[i] for i in row) for row in rows)
    assert prefill_padding(cfg, lengths, packed=True) == len(rows) * width - sum(lengths)
    assert prefill_padding(cfg, lengths, packed=True, single_row=True) == 0
    assert prefill_padding(cfg, [7, 7], packed=True) == prefill_padding(cfg, [7, 7], packed=False) == 0
