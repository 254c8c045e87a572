"""Tests for PyramidDrop in the LLM (llava.model.reduction.pdrop): a tiny random Llama, DRIP-like per-sample token
counts."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import DynamicCache, LlamaConfig, LlamaForCausalLM

from llava.constants import IGNORE_INDEX
from llava.model.flops import decoder_layer_macs, llama_prefill_macs
from llava.model.reduction.pdrop import PDropCache, PDropConfig, pdrop_forward
from llava.model.reduction.pdrop_ranking import rank_positions_from_labels
from llava.model.splice import ImageTokenLayout

HIDDEN, LAYERS, VOCAB = 64, 4, 300
DROP = PDropConfig((1, 2, 3), (0.5, 0.25, 0.125))
KEEP_ALL = PDropConfig((1, 2, 3), (1.0, 1.0, 1.0))
# (text before the image, image tokens, text after): image tokens as a DRIP tower would give them, plus text only.
SAMPLES = [(4, 3, 6), (2, 17, 9), (5, 40, 3), (11, 0, 0)]


@pytest.fixture(scope="module")
def lm():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=HIDDEN,
        intermediate_size=128,
        num_hidden_layers=LAYERS,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=VOCAB,
        max_position_embeddings=256,
        initializer_range=0.2,  # peaky attention, so that rankings depend on the softmax and the causal mask
        attn_implementation="sdpa",
    )
    return LlamaForCausalLM(config).eval()


def make_batch(side="right", samples=SAMPLES, seed=1):
    """Embeddings [B, T, H], bool mask, position ids, layouts built by hand, labels (answer = the text after)."""
    g = torch.Generator().manual_seed(seed)
    lengths = [sum(s) for s in samples]
    b, t = len(samples), max(lengths)
    embeds = torch.zeros(b, t, HIDDEN)
    mask = torch.zeros(b, t, dtype=torch.bool)
    positions = torch.zeros(b, t, dtype=torch.long)
    labels = torch.full((b, t), IGNORE_INDEX)
    layouts = []
    for i, ((before, n, after), length) in enumerate(zip(samples, lengths, strict=True)):
        off = t - length if side == "left" else 0
        embeds[i, off : off + length] = torch.randn(length, HIDDEN, generator=g)
        mask[i, off : off + length] = True
        positions[i, off : off + length] = torch.arange(length)
        if after > 1:  # the last `after - 1` tokens are the answer, so the query is the token right before it
            labels[i, off + length - after + 1 : off + length] = torch.randint(0, VOCAB, (after - 1,), generator=g)
        spans = ((off + before, n),) if n else ()
        layouts.append(ImageTokenLayout(image_spans=spans, seq_len=length, offset=off))
    return embeds, mask, positions, layouts, labels


def image_counts(cfg, n):
    return [n] + [int(n * r) for r in cfg.image_token_ratio_list]


@pytest.mark.parametrize("side", ["right", "left"])
def test_ratio_one_equals_plain_llama(lm, side):
    embeds, mask, positions, layouts, labels = make_batch(side)
    with torch.no_grad():
        ref = lm(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions).logits
        out = pdrop_forward(lm.model, embeds, mask, positions, layouts, KEEP_ALL, labels=labels)
        logits = lm.lm_head(out.last_hidden_state)
    assert torch.equal(out.attention_mask, mask) and torch.equal(out.labels, labels)
    torch.testing.assert_close(logits[mask], ref[mask], atol=1e-5, rtol=1e-5)


def test_drop_counts_order_and_labels_per_sample(lm):
    embeds, mask, positions, layouts, labels = make_batch("right")
    with torch.no_grad():
        out = pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP, labels=labels, position_mode="original")
    for i, (before, n, after) in enumerate(SAMPLES):
        counts = image_counts(DROP, n)  # e.g. 40 -> 40, 20, 10, 5; 17 -> 17, 8, 4, 2; 3 -> 3, 1, 0, 0
        assert out.kept_counts[:, i].tolist() == counts
        assert out.seq_lens[:, i].tolist() == [before + after + c for c in counts]
        real = out.attention_mask[i]
        src = out.source_index[i][real]
        assert int(real.sum()) == before + after + counts[-1]
        assert bool((src[1:] > src[:-1]).all())  # raster / original order kept
        text = torch.cat([torch.arange(before), torch.arange(before + n, before + n + after)])
        assert set(text.tolist()) <= set(src.tolist())  # every text token survives
        assert torch.equal(out.labels[i][real], labels[i][src])  # labels follow the kept tokens
        assert torch.equal(out.position_ids[i][real], positions[i][src])  # original position ids
    assert out.source_index[3][out.attention_mask[3]].tolist() == list(range(11))  # text only: untouched
    with torch.no_grad():
        alone = lm.model(inputs_embeds=embeds[3:, :11]).last_hidden_state
    torch.testing.assert_close(out.last_hidden_state[3, :11], alone[0], atol=1e-5, rtol=1e-5)


def test_kept_tokens_are_the_most_attended(lm):
    """The first drop (before layer 1) keeps the image tokens that layer 1's heads, averaged over heads and then over
    the ranking queries, attend to most: checked against the plain model's eager attention maps."""
    embeds, mask, positions, layouts, labels = make_batch("right", samples=[(5, 40, 20)])
    queries = [46, 52]  # text tokens after the image, with later tokens the causal mask must hide
    lm.config._attn_implementation = "eager"
    try:
        with torch.no_grad():
            maps = lm.model(inputs_embeds=embeds, output_attentions=True).attentions[1]  # [1, heads, T, T]
    finally:
        lm.config._attn_implementation = "sdpa"
    expected = maps[0][:, queries, 5:45].mean(0).mean(0).topk(20).indices.sort().values + 5
    cfg = PDropConfig((1,), (0.5,))
    with torch.no_grad():
        out = pdrop_forward(lm.model, embeds, mask, positions, layouts, cfg, rank_positions=[queries])
        by_labels = pdrop_forward(lm.model, embeds, mask, positions, layouts, cfg, labels=labels)
    src = out.source_index[0]
    assert src[(src >= 5) & (src < 45)].tolist() == expected.tolist()
    assert not torch.equal(by_labels.source_index, out.source_index)  # another query, other tokens
    answer_query = int(torch.nonzero(labels[0] != IGNORE_INDEX).min()) - 1
    ref = pdrop_forward(lm.model, embeds, mask, positions, layouts, cfg, rank_positions=[[answer_query]])
    assert torch.equal(by_labels.source_index, ref.source_index)


def test_rank_positions_from_labels():
    labels = torch.tensor([[-100, -100, 7, 8, -100, -100, 9], [-100, -100, -100, -100, -100, -100, -100]])
    assert rank_positions_from_labels(labels) == [[1, 5], []]
    mask = torch.tensor([[True] * 6 + [False], [True] * 7])
    assert rank_positions_from_labels(labels, mask) == [[1], []]


def test_compact_positions_renumber_like_pyramiddrop(lm):
    embeds, mask, positions, layouts, _ = make_batch("right")
    with torch.no_grad():
        out = pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP, position_mode="compact")
        by_default = pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP)  # PyramidDrop's renumbering
        original = PDropConfig(DROP.layer_list, DROP.image_token_ratio_list, position_mode="original")
        by_config = pdrop_forward(lm.model, embeds, mask, positions, layouts, original)
    assert DROP.position_mode == "compact"
    assert torch.equal(by_default.position_ids, out.position_ids)
    for i in range(len(SAMPLES)):
        real = out.attention_mask[i]
        assert out.position_ids[i][real].tolist() == list(range(int(real.sum())))
        src = by_config.source_index[i][by_config.attention_mask[i]]
        assert torch.equal(by_config.position_ids[i][by_config.attention_mask[i]], positions[i][src])


def last_real(hidden, mask):
    """[B, L, H] -> [B, H] at each row's last real slot (right padding puts pads at [:, -1])."""
    last = torch.where(mask, torch.arange(mask.shape[1]), -1).amax(1)
    return hidden[torch.arange(len(mask)), last]


def greedy_with_cache(lm, embeds, mask, positions, layouts, mode, steps, cfg):
    with torch.no_grad():
        out = pdrop_forward(lm.model, embeds, mask, positions, layouts, cfg, use_cache=True, position_mode=mode)
        cache, tokens = out.past_key_values, []
        assert isinstance(cache, PDropCache)
        # every layer's cache holds only the tokens that layer saw (its stage's padded length)
        lengths = [cache.layers[i].keys.shape[-2] for i in range(LAYERS)]
        assert lengths == sorted(lengths, reverse=True) and embeds.shape[1] >= lengths[0] and lengths[-1] < lengths[0]
        last = lm.lm_head(last_real(out.last_hidden_state, out.attention_mask))
        full_mask, logits = mask, []
        for _ in range(steps):
            logits.append(last)
            tokens.append(last.argmax(-1))  # [B]
            full_mask = torch.cat([full_mask, torch.ones(len(mask), 1, dtype=torch.bool)], dim=1)  # as HF grows it
            new = lm.model.embed_tokens(tokens[-1])[:, None]  # [B, 1, H]
            step = pdrop_forward(lm.model, new, full_mask, None, None, cfg, past_key_values=cache)
            last = lm.lm_head(step.last_hidden_state[:, -1])
    grown = [cache.layers[i].keys.shape[-2] for i in range(LAYERS)]
    return torch.stack(tokens, 1), torch.stack(logits, 1), grown, lengths


def greedy_recompute(lm, embeds, mask, positions, layouts, mode, steps, cfg):
    """No cache: rerun the whole PyramidDrop prefill on the grown sequence (generated tokens appended after the
    padding, position ids continuing from each prompt's length); the ranking query stays the prompt's last token."""
    tokens, logits, b = [], [], len(mask)
    query = [[int(torch.nonzero(row).max())] for row in mask]
    next_pos = positions.masked_fill(~mask, -1).amax(1) + 1
    for s in range(steps):
        with torch.no_grad():
            out = pdrop_forward(
                lm.model, embeds, mask, positions, layouts, cfg, rank_positions=query, position_mode=mode
            )
            logits.append(lm.lm_head(last_real(out.last_hidden_state, out.attention_mask)))
            tokens.append(logits[-1].argmax(-1))
            embeds = torch.cat([embeds, lm.model.embed_tokens(tokens[-1])[:, None]], dim=1)
        mask = torch.cat([mask, torch.ones(b, 1, dtype=torch.bool)], dim=1)
        positions = torch.cat([positions, (next_pos + s)[:, None]], dim=1)
    return torch.stack(tokens, 1), torch.stack(logits, 1)


@pytest.mark.parametrize(
    "side,mode,cfg",
    [
        ("left", "original", DROP),
        ("right", "original", DROP),
        ("left", "compact", DROP),
        ("right", "compact", PDropConfig((0, 2), (0.5, 0.25))),  # a drop before layer 0 too
    ],
)
def test_generation_with_cache_after_drops_equals_recompute(lm, side, mode, cfg):
    embeds, mask, positions, layouts, _ = make_batch(side)
    steps = 4
    tokens, logits, grown, before = greedy_with_cache(lm, embeds, mask, positions, layouts, mode, steps, cfg)
    assert grown == [n + steps for n in before]
    ref_tokens, ref_logits = greedy_recompute(lm, embeds, mask, positions, layouts, mode, steps, cfg)
    assert torch.equal(tokens, ref_tokens)
    torch.testing.assert_close(logits, ref_logits, atol=1e-4, rtol=1e-4)


def test_prefill_flops_fall_as_counted(lm):
    """FlopCounterMode (eager attention: SDPA on CPU is invisible to it) agrees with the analytic count per layer."""
    embeds, mask, positions, layouts, _ = make_batch("right", samples=[(6, 40, 14)])
    lm.config._attn_implementation = "eager"
    measured = {}
    try:
        for name, cfg in (("full", KEEP_ALL), ("drop", DROP)):
            with torch.no_grad(), FlopCounterMode(display=False) as counter:
                out = pdrop_forward(lm.model, embeds, mask, positions, layouts, cfg)
            measured[name] = (counter.get_total_flops(), out.seq_lens[:, 0].tolist())
    finally:
        lm.config._attn_implementation = "sdpa"
    for flops, lens in measured.values():
        ranked = [lens[i - 1] for i in DROP.layer_list]  # each ranking sees the sequence entering its layer
        analytic = 2 * llama_prefill_macs(lm.config, lens, ranked, lm_head_tokens=0)  # FlopCounterMode: 2 per MAC
        assert flops == pytest.approx(analytic, rel=1e-3)
    assert measured["drop"][1] == [60, 40, 30, 25]
    plain = 2 * sum(decoder_layer_macs(lm.config, 60) for _ in range(LAYERS))
    assert measured["drop"][0] < 0.75 * plain < measured["full"][0]


def lm_loss(lm, out):
    logits = lm.lm_head(out.last_hidden_state)  # [B, L, V]
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), out.labels[:, 1:].flatten())


def test_training_loss_and_gradients(lm):
    embeds, mask, positions, layouts, labels = make_batch("right")
    embeds.requires_grad_(True)
    plain = lm(inputs_embeds=embeds, attention_mask=mask.long(), position_ids=positions, labels=labels).loss
    (grad_plain,) = torch.autograd.grad(plain, embeds)
    kept = lm_loss(lm, pdrop_forward(lm.model, embeds, mask, positions, layouts, KEEP_ALL, labels=labels))
    (grad_kept,) = torch.autograd.grad(kept, embeds)
    torch.testing.assert_close(kept, plain, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(grad_kept, grad_plain, atol=1e-6, rtol=1e-4)
    dropped = lm_loss(lm, pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP, labels=labels))
    last_layer = lm.model.layers[-1].mlp.down_proj.weight
    grads = torch.autograd.grad(dropped, [embeds, last_layer])
    assert all(bool(torch.isfinite(g).all()) and float(g.abs().sum()) > 0 for g in grads)
    assert not torch.allclose(dropped, plain)


def test_bad_inputs_raise_clear_errors(lm):
    embeds, mask, positions, layouts, _ = make_batch("right")
    with pytest.raises(ValueError, match="decoder layers"):
        pdrop_forward(lm.model, embeds, mask, positions, layouts, PDropConfig((1, 4), (0.5, 0.25)))
    bad = list(layouts)
    bad[3] = ImageTokenLayout(image_spans=((8, 5),), seq_len=11)  # runs into row 3's padding
    with pytest.raises(ValueError, match=r"layouts\[3\]"):
        pdrop_forward(lm.model, embeds, mask, positions, bad, DROP)
    with pytest.raises(ValueError, match=r"rank_positions\[2\]"):
        pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP, rank_positions=[[0], [0], [10], [0]])
    filled = DynamicCache(config=lm.config)
    filled.update(torch.zeros(1, 2, 3, 16), torch.zeros(1, 2, 3, 16), 0)
    with pytest.raises(TypeError, match="PDropCache"):
        pdrop_forward(lm.model, embeds, mask, positions, layouts, DROP, past_key_values=filled)
    with pytest.raises(ValueError, match="ratios"):
        PDropConfig((1, 2), (0.25, 0.5))
