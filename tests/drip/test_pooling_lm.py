"""The dynamic-pooling LM: causality (no information from future characters), training, supervised targets."""

import pytest
import torch

from drip.lm.boundaries import CharVocab, entropy_spike_targets, ngram_entropy, train_unigram, unigram_targets
from drip.lm.model import PoolingLM, PoolingLMConfig, calibrate_threshold, evaluate_bpc, lm_loss, train_lm

TEXT = "the cat sat on the mat. the dog sat on the log. a cat and a dog met on a mat.\n" * 40


def _tiny(boundary: str = "gumbel", **kw) -> PoolingLM:
    cfg = PoolingLMConfig(
        vocab_size=40,
        max_len=64,
        width=32,
        heads=4,
        pre_layers=1,
        shortened_layers=2,
        post_layers=1,
        boundary=boundary,
        predictor_hidden=16,
        **kw,
    )
    return PoolingLM(cfg)


@pytest.mark.parametrize("boundary", ["gumbel", "entropy", "unigram", "none"])
@pytest.mark.parametrize("mode", ["eval", "train"])
def test_changing_character_t_plus_1_leaves_the_logits_up_to_t_unchanged(boundary, mode):
    torch.manual_seed(0)
    model = _tiny(boundary).train(mode == "train")
    ids = torch.randint(0, 40, (3, 48))
    targets = (torch.rand(3, 48) < 0.3).float()  # supervised kinds train on given targets
    for t in (0, 7, 30, 46):
        changed = ids.clone()
        changed[:, t + 1] = (ids[:, t + 1] + 1 + torch.arange(3)) % 40
        torch.manual_seed(1)  # the same Gumbel noise for both passes
        a = model(ids, targets).logits
        torch.manual_seed(1)
        c = model(changed, targets).logits
        torch.testing.assert_close(a[:, : t + 1], c[:, : t + 1], atol=1e-5, rtol=1e-5)
        assert (a[:, t + 1] - c[:, t + 1]).abs().max() > 1e-4  # the changed character itself is seen at t + 1


def test_a_segment_is_read_only_after_it_ends():
    torch.manual_seed(0)
    model = _tiny().eval()
    ids = torch.randint(0, 40, (1, 12))
    b = torch.zeros(1, 12)
    b[0, [3, 7]] = 1  # segments [0..3] [4..7] [8..11]
    out = model(ids, boundaries=b)
    assert out.segments.tolist() == [3] and out.boundaries[0, -1] == 1
    changed = ids.clone()
    changed[0, 3] = (ids[0, 3] + 1) % 40  # inside segment 0: positions 0..2 must not see it through the segment
    again = model(changed, boundaries=b)
    torch.testing.assert_close(out.logits[:, :3], again.logits[:, :3])


def test_gumbel_training_lowers_the_loss_and_holds_the_rate_near_the_prior():
    vocab = CharVocab.from_text(TEXT)
    ids = vocab.encode(TEXT)
    torch.manual_seed(0)
    model = _tiny(prior=0.25, temperature=1.0)
    before = evaluate_bpc(model, ids, length=64)
    history = train_lm(model, ids, None, steps=80, batch=8, length=64, lr=3e-3, warmup=10)
    after = evaluate_bpc(model, ids, length=64)
    assert after["bpc"] < before["bpc"] - 1.0, (before, after)
    late = [h["rate"] for h in history[-20:]]
    assert abs(sum(late) / len(late) - 0.25) < 0.08, late
    threshold = calibrate_threshold(model, ids, length=64)  # eval boundaries at the prior's rate
    calibrated = evaluate_bpc(model, ids, length=64)
    assert 0 < threshold < 1 and abs(calibrated["boundary_rate"] - 0.25) < 0.05, calibrated
    assert calibrated["bpc"] < before["bpc"] - 1.0


def test_supervised_predictor_learns_entropy_spike_targets():
    vocab = CharVocab.from_text(TEXT)
    ids = vocab.encode(TEXT)
    targets = entropy_spike_targets(ids, len(vocab))
    assert 0.1 < targets.mean() < 0.6
    torch.manual_seed(0)
    model = _tiny("entropy")
    with pytest.raises(ValueError, match="pass targets"):
        model(ids[None, :16])
    history = train_lm(model, ids, targets, steps=60, batch=8, length=64, lr=1e-2, warmup=10)
    assert history[-1]["boundary_loss"] < history[0]["boundary_loss"] - 0.2
    model.eval()
    window = ids[None, :64]
    predicted = model(window).boundaries[0, :-1]
    agree = (predicted == targets[:63]).float().mean()
    assert agree > 0.85, agree  # always-0 would agree on ~0.74


def test_entropy_spikes_mark_rising_uncertainty():
    ids = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 3] * 20)
    h = ngram_entropy(ids, 4, order=2)
    b = entropy_spike_targets(ids, 4, order=2)
    assert torch.equal(b[1:], (h[1:] > h[:-1]).float()) and b[0] == 0
    assert b.sum() > 0 and h[ids == 0].mean() < h[ids == 1].mean()  # after "...1" the next char is 2 or 3


def test_unigram_targets_end_every_piece_and_newline():
    lines = [line for line in TEXT.split("\n") if line]
    sp = train_unigram(lines, vocab_size=40)
    text = "the cat sat.\na dog met"
    b = unigram_targets(text, sp)
    assert b[text.index("\n")] == 1 and b[-1] == 1 and b[text.index("\n") - 1] == 1
    pieces = sp.encode("the cat sat.", out_type=str)
    assert b[: len("the cat sat.")].sum() == len(pieces)
    with pytest.raises(ValueError, match="ASCII"):
        unigram_targets("café", sp)


def test_vanilla_baseline_and_loss():
    torch.manual_seed(0)
    model = _tiny("none")
    ids = torch.randint(0, 40, (2, 16))
    out = model(ids)
    total, ce = lm_loss(out, ids, 1.0)
    assert out.logits.shape == (2, 16, 40) and torch.equal(total, ce) and out.segments.tolist() == [16, 16]
    with pytest.raises(ValueError, match="shortened_layers"):
        PoolingLMConfig(boundary="gumbel", shortened_layers=0)
