"""Padding-free (packed) LLM batches: the pure layout functions, and the packed training forward against the padded one
(same loss and gradients at fp32 tolerance) with DRIP and CLIP towers, PyramidDrop, LoRA, gradient checkpointing and
DRIP's boundary loss."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model import PDropConfig
from llava.model.packing import (
    block_causal_mask,
    flash_kwargs,
    gather_packed,
    pack_batch,
    pack_for_model,
    padding_per_sample,
    padding_share_of,
    plan_rows,
    supports_packing,
    unpack,
)

LENGTHS = (10, 25, 7, 40, 18)


def batch(tiny, tower: str, lengths=LENGTHS, images: bool = True):
    """Right-padded prompts (one image each at position 2), labels on every real text token (position 0 included,
    so a label leaking across a sample boundary would change the loss)."""
    rows = [tiny.prompt(n, image_at=(2,) if images else (), seed=n) for n in lengths]
    ids, mask = tiny.right_pad(rows)
    labels = torch.where(mask & (ids != IMAGE_TOKEN_INDEX), ids, IGNORE_INDEX)
    out = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    if images:
        out["images"] = tiny.images(len(lengths), tower)
    return out


def loss_and_grads(model, inputs, packing: bool, seed: int = 0):
    model.set_packing(packing)
    model.zero_grad(set_to_none=True)
    torch.manual_seed(seed)  # DRIP's training-mode boundaries are sampled: the same draws for both layouts
    out = model(**inputs)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out, grads


def assert_same(model, inputs, *, packed_expected: bool = True):
    padded, g_padded = loss_and_grads(model, inputs, packing=False)
    packed, g_packed = loss_and_grads(model, inputs, packing=True)
    assert padded.packed is None
    assert (packed.packed is not None) == packed_expected
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-5, atol=1e-6)
    assert g_padded.keys() == g_packed.keys() and g_padded
    for name, grad in g_padded.items():
        torch.testing.assert_close(g_packed[name], grad, rtol=1e-4, atol=1e-6, msg=name)
    return padded, packed


# --- pure layout ----------------------------------------------------------------------------------------------------
def test_plan_rows_covers_every_sample_once_and_fills_rows():
    lengths = [37, 5, 80, 41, 12, 66, 30, 8, 79, 50]
    rows = plan_rows(lengths, slot_cost=1.0, pair_cost=0.01)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    width = max(sum(lengths[i] for i in row) for row in rows)
    assert width >= max(lengths)
    padded_slots = len(lengths) * max(lengths)
    assert len(rows) * width < 0.6 * padded_slots  # far less padding than one row per sample
    assert plan_rows(lengths, single_row=True) == [list(range(len(lengths)))]
    with pytest.raises(ValueError, match="at least one token"):
        plan_rows([3, 0])


def test_pack_unpack_positions_labels_and_mask():
    b, t, h = 3, 6, 4
    embeds = torch.randn(b, t, h)
    mask = torch.tensor([[1, 1, 1, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1]], dtype=torch.bool)  # left pad
    labels = torch.arange(b * t).view(b, t)
    packed = pack_batch(embeds, mask, labels, [[0, 2], [1]])
    assert packed.inputs_embeds.shape == (2, 7, h)
    assert packed.position_ids.tolist() == [[0, 1, 2, 0, 1, 2, 3], [0, 1, 2, 3, 4, 5, 0]]
    # the first label of every sample is ignored; filler is ignored
    assert packed.labels.tolist() == [[-100, 1, 2, -100, 15, 16, 17], [-100, 7, 8, 9, 10, 11, -100]]
    assert packed.seq_lens.tolist() == [3, 4, 6] and packed.num_real == 13
    torch.testing.assert_close(unpack(packed.inputs_embeds, packed), embeds * mask[..., None])
    torch.testing.assert_close(gather_packed(embeds, packed), packed.inputs_embeds)
    allowed = block_causal_mask(packed, torch.float32)[:, 0] == 0  # [R, C, C]
    assert allowed[0, 4].tolist() == [False, False, False, True, True, False, False]  # sample 2 sees only itself
    assert allowed[1, 6].tolist() == [False] * 6 + [True]  # the filler sees only itself
    lengths = mask.sum(1).tolist()
    assert padding_per_sample(lengths) == [3, 0, 2] and padding_share_of(lengths, [3, 0, 2]) == pytest.approx(5 / 18)
    assert padding_share_of([], []) is None
    with pytest.raises(ValueError, match="exactly once"):
        pack_batch(embeds, mask, labels, [[0, 1]])


def test_flash_kwargs_are_the_cumulative_lengths():
    embeds, mask = torch.zeros(3, 5, 2), torch.tensor([[1] * 5, [1] * 2 + [0] * 3, [1] * 4 + [0]], dtype=torch.bool)
    packed = pack_batch(embeds, mask, None, [[0, 1, 2]])
    kw = flash_kwargs(packed)
    assert kw["cu_seq_lens_q"].tolist() == [0, 5, 7, 11] and kw["max_length_q"] == 5
    assert kw["cu_seq_lens_q"].dtype == torch.int32
    with pytest.raises(ValueError, match="one-row"):
        flash_kwargs(pack_batch(embeds, mask, None, [[0], [1, 2]]))


def test_backends():
    assert supports_packing("sdpa") and supports_packing("flash_attention_2") and not supports_packing("flex_attention")


def test_pack_for_model_picks_one_row_for_flash(tiny):
    cfg = tiny.model("none").config
    embeds, mask = torch.zeros(4, 9, 64), torch.ones(4, 9, dtype=torch.bool)
    cfg._attn_implementation = "flash_attention_2"
    packed, extra = pack_for_model(cfg, embeds, mask, None)
    assert packed.inputs_embeds.shape[0] == 1 and extra["cu_seq_lens_k"].tolist() == [0, 9, 18, 27, 36]
    cfg._attn_implementation = "sdpa"
    packed, extra = pack_for_model(cfg, embeds, mask, None)
    assert extra == {} and packed.inputs_embeds.shape[0] >= 1


# --- the model: packed training forward == padded ------------------------------------------------------------------
@pytest.mark.parametrize("tower", ["drip", "clip"])
def test_packed_loss_and_gradients_equal_padded(tiny, tower):
    model = tiny.model(tower).train()
    model.get_vision_tower().requires_grad_(False)
    padded, packed = assert_same(model, batch(tiny, tower))
    real = sum(layout.seq_len for layout in padded.image_layouts)
    assert packed.packed.num_real == real
    assert packed.packed.padding_share < 1 - real / padded.logits.shape[:2].numel()  # less padding than padded
    torch.testing.assert_close(  # logits of real tokens, back in the padded layout
        unpack(packed.logits, packed.packed)[0, : padded.image_layouts[0].seq_len],
        padded.logits[0, : padded.image_layouts[0].seq_len],
        rtol=1e-5,
        atol=1e-5,
    )


def test_eager_backend_and_text_only_batch_pack(tiny):
    model = tiny.model("clip").train()
    model.config._attn_implementation = "eager"
    assert_same(model, batch(tiny, "clip", images=False))


def test_packing_off_or_no_labels_keeps_padded(tiny):
    model = tiny.model("clip")
    inputs = batch(tiny, "clip")
    with torch.no_grad():
        assert model(**{k: v for k, v in inputs.items() if k != "labels"}).packed is None
        model.set_packing(False)
        assert model(**inputs).packed is None


def test_pyramiddrop_composes_with_packing(tiny):
    model = tiny.model("drip").train()
    model.get_vision_tower().requires_grad_(False)
    model.set_pdrop(PDropConfig((1,), (0.5,)))
    inputs = batch(tiny, "drip")
    inputs["labels"][:, :4] = IGNORE_INDEX  # answers after a text prompt: PyramidDrop ranks with the token before them
    assert_same(model, inputs, packed_expected=False)  # PyramidDrop packs per stage, returns padded


def test_gradient_checkpointing_with_packing(tiny):
    model = tiny.model("drip").train()
    model.get_vision_tower().requires_grad_(False)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert model.model.gradient_checkpointing
    assert_same(model, batch(tiny, "drip"))


def test_gradient_checkpointing_reaches_the_drip_tower(tiny):
    """--gradient_checkpointing with --tune_vision_tower all: the DRIP blocks recompute in the backward pass (each
    block's forward runs twice per step) instead of keeping every tower activation."""
    model = tiny.model("drip").train()
    tower = model.get_vision_tower()
    tower.set_trainable("all")
    calls = []
    tower.vision_tower.blocks[0].mlp.register_forward_pre_hook(lambda *args: calls.append(1))  # the blocks call it

    def block_forwards() -> int:
        calls.clear()
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)
        model(**batch(tiny, "drip")).loss.backward()
        return len(calls)

    assert block_forwards() == 1
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    assert block_forwards() == 2  # the forward, and its recomputation in the backward pass
    assert tower.gradient_checkpointing and tower.vision_tower.grad_checkpointing
    assert tower.vision_tower.blocks[0].ln_1.weight.grad is not None
    model.gradient_checkpointing_disable()
    assert not tower.vision_tower.grad_checkpointing and block_forwards() == 1


def test_lora_with_packing(tiny):
    peft = pytest.importorskip("peft")
    model = tiny.model("clip").train()
    model.get_vision_tower().requires_grad_(False)
    lora = peft.get_peft_model(model, peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    for n, p in lora.named_parameters():  # non-zero B so the adapters change the loss
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    padded, packed = assert_same(lora, batch(tiny, "clip"))
    assert any("lora_A" in n for n, p in lora.named_parameters() if p.grad is not None)


def test_drip_boundary_loss_term_with_packing(tiny):
    model = tiny.model("drip").train()
    tower = model.get_vision_tower()
    tower.requires_grad_(False)
    tower.vision_tower.predictors.requires_grad_(True)  # --tune_vision_tower predictor
    padded, packed = assert_same(model, batch(tiny, "drip"))
    assert packed.boundary_loss.requires_grad
    torch.testing.assert_close(packed.loss, packed.lm_loss + packed.boundary_loss)


def test_unsupported_backend_runs_padded_and_says_so(tiny, caplog):
    model = tiny.model("clip")
    inputs = batch(tiny, "clip")
    model.config._attn_implementation = "flex_attention"  # not run here: only the decision is checked
    with caplog.at_level("INFO", logger="llava.model.language_model.llava_llama"):
        assert not model._packs(inputs["labels"], inputs["attention_mask"], None)
    assert "runs padded batches" in caplog.text and "flex_attention" in caplog.text
    model.config._attn_implementation = "sdpa"
    assert model._packs(inputs["labels"], inputs["attention_mask"], None)
    assert not model._packs(None, inputs["attention_mask"], None)  # no loss (generation): padded
