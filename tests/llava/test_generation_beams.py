"""Beam search and several returned sequences through ``LlavaLlamaForCausalLM.generate``, PyramidDrop on and off:
the per-sample image-token layouts are expanded with the inputs, and each prompt's beams equal that prompt alone."""

from __future__ import annotations

import pytest
import torch

from llava.model.config import PDropConfig

DECODING = {
    "beams": dict(num_beams=2, do_sample=False),
    "beams_return_2": dict(num_beams=2, num_return_sequences=2, do_sample=False),
    "sample_return_2": dict(do_sample=True, num_return_sequences=2, top_k=0),
}


@pytest.mark.parametrize("pdrop", [None, PDropConfig((1,), (0.5,))], ids=["pdrop_off", "pdrop_on"])
@pytest.mark.parametrize("decoding", sorted(DECODING))
def test_expanded_generation_per_prompt_equals_prompt_alone(tiny, pdrop, decoding):
    model = tiny.model("clip")
    model.generation_config.eos_token_id = None  # always max_new_tokens
    model.set_pdrop(pdrop)
    rows = [tiny.prompt(7, image_at=[2], seed=1), tiny.prompt(4, image_at=[1], seed=2), tiny.prompt(5, seed=3)]
    images = tiny.images(2)
    ids, mask = tiny.right_pad(rows)
    kwargs = dict(DECODING[decoding], max_new_tokens=4)
    k = kwargs.get("num_return_sequences", 1)
    torch.manual_seed(0)
    batched = model.generate(ids, images=images, attention_mask=mask, **kwargs)
    assert batched.shape == (3 * k, 4)
    if kwargs["do_sample"]:  # random draws depend on the batch: only the expansion (shape, no error) is checked
        return
    alone = [
        model.generate(row[None], images=images[i : i + 1] if i < 2 else None, **kwargs) for i, row in enumerate(rows)
    ]
    assert batched.tolist() == torch.cat(alone).tolist()


def test_beams_keep_all_equals_pdrop_off(tiny):
    """Ratio 1.0 drops nothing: beam search through PyramidDrop's decoder gives the plain decoder's beams."""
    model = tiny.model("clip")
    model.generation_config.eos_token_id = None
    rows = [tiny.prompt(7, image_at=[2], seed=1), tiny.prompt(4, image_at=[1], seed=2)]
    ids, mask = tiny.right_pad(rows)
    kwargs = dict(images=tiny.images(2), attention_mask=mask, max_new_tokens=5, num_beams=3, num_return_sequences=2)
    plain = model.generate(ids, **kwargs, do_sample=False)
    model.set_pdrop(PDropConfig((1,), (1.0,)))
    assert model.generate(ids, **kwargs, do_sample=False).tolist() == plain.tolist()
