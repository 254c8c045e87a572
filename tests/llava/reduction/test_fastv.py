"""FastV: the image tokens kept from layer K are those the last prompt token attends most in an eager reference."""

from __future__ import annotations

import copy

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.fastv import fastv_schedule
from llava.model.reduction.pdrop import pdrop_forward
from llava.model.reduction.spec import FastV


def naive_fastv_keep(attention: torch.Tensor, last: int, start: int, n: int, ratio: float) -> list[int]:
    """One sample: attention [heads, T, T] of layer K; the image slots start..start+n-1 the last token attends
    most (mean over heads), int(n * (1 - ratio)) of them, in sequence order."""
    heads = attention.shape[0]
    score = {p: sum(float(attention[h, last, p]) for h in range(heads)) / heads for p in range(start, start + n)}
    keep = int(n * (1.0 - ratio))
    return sorted(sorted(score, key=lambda p: -score[p])[:keep])


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_fastv_keeps_the_tokens_the_last_token_attends_most(tiny, ratio):
    model = tiny.model()  # SDPA: FastV's scores must not need eager attention weights
    rows = [tiny.prompt(9, image_at=[2], seed=0), tiny.prompt(7, image_at=[4], seed=1)]
    ids, mask = tiny.right_pad(rows)
    with torch.no_grad():
        m = model.prepare_multimodal_inputs(ids, mask, None, tiny.images(2))
        spec = FastV(k=1, ratio=ratio)
        out = pdrop_forward(
            model.get_model(), m.inputs_embeds, m.attention_mask, m.position_ids, m.layouts, fastv_schedule(spec)
        )
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        ref = eager.get_model()(
            inputs_embeds=m.inputs_embeds,
            attention_mask=m.attention_mask.long(),
            position_ids=m.position_ids,
            output_attentions=True,
        )
    for i, layout in enumerate(m.layouts):
        ((start, n),) = layout.image_spans
        last = int(m.attention_mask[i].nonzero().max())
        want = naive_fastv_keep(ref.attentions[spec.k][i], last, start, n, ratio)
        src = out.source_index[i][out.attention_mask[i]].tolist()
        assert [p for p in src if start <= p < start + n] == want
        assert len(want) == int(16 * (1 - ratio))
        assert out.kept_counts[:, i].tolist() == [16, len(want)]  # layer 0 sees all, layer K = 1 on the kept ones


def test_fastv_on_the_model_drops_in_generation(tiny):
    model = tiny.model()
    apply_token_reduction(model, "fastv:k=1,ratio=0.75")
    ids, mask = tiny.right_pad([tiny.prompt(8, image_at=[2])])
    with torch.no_grad():
        plain = tiny.model()(input_ids=ids, attention_mask=mask, images=tiny.images(1)).logits
        dropped = model(input_ids=ids, attention_mask=mask, images=tiny.images(1)).logits
    assert not torch.allclose(plain[:, -1], dropped[:, -1])


def naive_fastv_hidden(llama, embeds: torch.Tensor, start: int, n: int, k: int, ratio: float) -> torch.Tensor:
    """One unpadded sample, as FastV's own code runs it (its lmms-eval KV-cache port): layers 0..k-1 on the whole
    sequence at positions 0..T-1; before layer k keep the int(n * (1 - ratio)) image tokens the last token attends
    most (mean over heads; here layer k's attention map), sorted, every text token, and give the kept tokens their
    ORIGINAL positions (``position_ids = keep_indexs``); layers k.. on them; the final norm. -> [T', H]."""
    t = embeds.shape[0]
    full = llama(inputs_embeds=embeds[None], output_attentions=True, output_hidden_states=True)
    score = full.attentions[k][0].mean(0)[-1, start : start + n]  # [n]
    top = score.topk(int(n * (1.0 - ratio))).indices + start
    keep = torch.cat([torch.arange(start), top, torch.arange(start + n, t)]).sort().values  # [T']
    hidden, positions = full.hidden_states[k][:, keep], keep[None]  # [1, T', H], [1, T']
    causal = torch.full((len(keep), len(keep)), float("-inf")).triu(1)[None, None]  # [1, 1, T', T']
    rope = llama.rotary_emb(hidden, positions)
    for layer in llama.layers[k:]:
        hidden = layer(hidden, attention_mask=causal, position_ids=positions, position_embeddings=rope)
    return llama.norm(hidden)[0]


@pytest.mark.parametrize("ratio", [0.5, 0.75])
def test_fastv_matches_the_official_behaviour_with_original_positions(tiny, ratio):
    """Hidden states and position ids of every kept token equal a per-sample reference written from FastV's code."""
    model = tiny.model(seed=3)
    rows = [tiny.prompt(9, image_at=[2], seed=0), tiny.prompt(6, image_at=[4], seed=1)]
    ids, mask = tiny.right_pad(rows)
    spec = FastV(k=1, ratio=ratio)
    with torch.no_grad():
        m = model.prepare_multimodal_inputs(ids, mask, None, tiny.images(2))
        out = pdrop_forward(
            model.get_model(), m.inputs_embeds, m.attention_mask, m.position_ids, m.layouts, fastv_schedule(spec)
        )
        eager = copy.deepcopy(model)
        eager.set_attn_implementation("eager")
        for i, layout in enumerate(m.layouts):
            ((start, n),) = layout.image_spans
            length = int(m.attention_mask[i].sum())
            want = naive_fastv_hidden(eager.get_model(), m.inputs_embeds[i, :length], start, n, spec.k, ratio)
            real = out.attention_mask[i]
            assert out.position_ids[i][real].tolist() == out.source_index[i][real].tolist()  # original positions
            torch.testing.assert_close(out.last_hidden_state[i][real], want, rtol=1e-5, atol=1e-5)
