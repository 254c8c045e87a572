"""Tests for the splice of variable-length visual tokens into the LLM's input embeddings."""

import pytest
import torch
from torch import nn

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.model.splice import (
    ImageTokenLayout,
    pad_features,
    splice_image_features,
    split_packed_features,
    split_padded_features,
)

IMG = IMAGE_TOKEN_INDEX
HIDDEN = 8
PAD_ID = 0
# image-first, image-middle, text-only, two images; the images carry 3, 17, 64 and 5 tokens.
SAMPLES = [[IMG, 5, 6, 7], [1, 2, IMG, 3], [4, 5, 6], [1, IMG, 2, IMG, 3]]
TOKENS_PER_IMAGE = [3, 17, 64, 5]


class SpyEmbedding(nn.Embedding):
    """nn.Embedding that records every batch of ids it embeds."""

    def __init__(self):
        super().__init__(32, HIDDEN)
        self.calls = []

    def forward(self, ids):
        self.calls.append(ids.clone())
        return super().forward(ids)


@pytest.fixture
def embed():
    torch.manual_seed(0)
    return SpyEmbedding()


@pytest.fixture
def features():
    torch.manual_seed(1)
    return [torch.randn(n, HIDDEN) for n in TOKENS_PER_IMAGE]


def _padded(samples, side="right"):
    """Tokenizer-style batch: ids, labels (= ids, IGNORE on images) and attention mask, padded on ``side``."""
    longest = max(len(s) for s in samples)
    ids = torch.full((len(samples), longest), PAD_ID)
    labels = torch.full((len(samples), longest), IGNORE_INDEX)
    mask = torch.zeros((len(samples), longest), dtype=torch.long)
    for i, sample in enumerate(samples):
        cols = slice(0, len(sample)) if side == "right" else slice(longest - len(sample), longest)
        ids[i, cols] = torch.tensor(sample)
        labels[i, cols] = torch.tensor([IGNORE_INDEX if t == IMG else t for t in sample])
        mask[i, cols] = 1
    return ids, labels, mask


def _reference(sample, feats, embed):
    """Token-by-token expectation for one sample: (embeds [L', H], labels [L'])."""
    rows, labels, feats = [], [], list(feats)
    for token in sample:
        if token == IMG:
            image = feats.pop(0)
            rows.extend(image)
            labels.extend([IGNORE_INDEX] * image.shape[0])
        else:
            rows.append(embed.weight[token])
            labels.append(token)
    return torch.stack(rows), torch.tensor(labels)


def _images_of(sample_index, features):
    before = sum(s.count(IMG) for s in SAMPLES[:sample_index])
    return features[before : before + SAMPLES[sample_index].count(IMG)]


def _splice(embed, features, side="right", input_side="right", max_length=None, samples=SAMPLES):
    ids, labels, mask = _padded(samples, input_side)
    return splice_image_features(ids, labels, mask, features, embed, max_length=max_length, padding_side=side)


def test_every_position_holds_its_feature_or_embedding(embed, features):
    out = _splice(embed, features)
    lengths = [3 + 3, 3 + 17, 3, 3 + 64 + 5]
    assert out.inputs_embeds.shape == (4, max(lengths), HIDDEN)
    for i, sample in enumerate(SAMPLES):
        ref_embeds, ref_labels = _reference(sample, _images_of(i, features), embed)
        n = lengths[i]
        assert torch.equal(out.inputs_embeds[i, :n], ref_embeds)
        assert torch.equal(out.labels[i, :n], ref_labels)
        assert torch.equal(out.attention_mask[i], torch.arange(out.attention_mask.shape[1]) < n)
        assert out.position_ids[i, :n].tolist() == list(range(n)) and not out.position_ids[i, n:].any()
        assert not out.inputs_embeds[i, n:].any() and (out.labels[i, n:] == IGNORE_INDEX).all()


def test_layouts_for_image_first_middle_text_only_and_two_images(embed, features):
    layouts = _splice(embed, features).layouts
    assert layouts[0] == ImageTokenLayout(image_spans=((0, 3),), seq_len=6)
    assert (layouts[0].image_start, layouts[0].num_image_tokens, layouts[0].text_len) == (0, 3, 3)
    assert (layouts[1].image_start, layouts[1].num_image_tokens, layouts[1].text_len) == (2, 17, 3)
    assert (layouts[2].image_start, layouts[2].num_image_tokens, layouts[2].text_len) == (-1, 0, 3)
    assert not layouts[2].has_image and layouts[3].has_image
    assert layouts[3].image_spans == ((1, 64), (66, 5)) and layouts[3].text_len == 3


def test_embed_tokens_called_once_on_all_text_tokens(embed, features):
    _splice(embed, features)
    assert len(embed.calls) == 1
    text = [t for sample in SAMPLES for t in sample if t != IMG]
    assert embed.calls[0].tolist() == text  # padding stripped, no IMAGE_TOKEN_INDEX


def test_left_and_right_padding_hold_the_same_samples(embed, features):
    right = _splice(embed, features, side="right", input_side="right")
    left = _splice(embed, features, side="left", input_side="left")
    for i in range(len(SAMPLES)):
        r_mask, l_mask = right.attention_mask[i], left.attention_mask[i]
        assert torch.equal(right.inputs_embeds[i][r_mask], left.inputs_embeds[i][l_mask])
        assert torch.equal(right.labels[i][r_mask], left.labels[i][l_mask])
        assert torch.equal(right.position_ids[i][r_mask], left.position_ids[i][l_mask])
        offset = left.layouts[i].offset
        assert offset == right.inputs_embeds.shape[1] - right.layouts[i].seq_len and l_mask[offset:].all()
        shifted = tuple((start + offset, n) for start, n in right.layouts[i].image_spans)
        assert left.layouts[i].image_spans == shifted
    start, n = left.layouts[1].image_spans[0]
    assert torch.equal(left.inputs_embeds[1, start : start + n], features[1])  # positions index the padded rows


def test_input_padding_side_and_list_inputs_do_not_matter(embed, features):
    from_right = _splice(embed, features, input_side="right")
    from_left = _splice(embed, features, input_side="left")
    ids = [torch.tensor(s) for s in SAMPLES]
    from_list = splice_image_features(ids, None, None, features, embed)
    assert torch.equal(from_right.inputs_embeds, from_left.inputs_embeds)
    assert torch.equal(from_right.inputs_embeds, from_list.inputs_embeds)
    assert from_list.labels is None and from_list.layouts == from_right.layouts


def test_truncation_clips_a_cut_image_and_drops_a_lost_one(embed, features):
    out = _splice(embed, features, max_length=10)
    assert out.inputs_embeds.shape[1] == 10 and [lay.seq_len for lay in out.layouts] == [6, 10, 3, 10]
    assert out.layouts[1].image_spans == ((2, 8),) and out.layouts[3].image_spans == ((1, 9),)
    assert torch.equal(out.inputs_embeds[1, 2:10], features[1][:8])
    assert out.labels[1].tolist() == [1, 2] + [IGNORE_INDEX] * 8
    lost = splice_image_features([torch.tensor([1, 2, 3, IMG])], None, None, features[:1], embed, max_length=2)
    assert lost.layouts[0].image_spans == () and not lost.layouts[0].has_image and lost.layouts[0].text_len == 2


def test_text_only_batch_without_images(embed):
    out = _splice(embed, [], samples=[[1, 2, 3], [4]])
    assert out.inputs_embeds.shape == (2, 3, HIDDEN) and not any(lay.has_image for lay in out.layouts)
    assert torch.equal(out.inputs_embeds[1, 0], embed.weight[4])


def test_count_mismatch_names_the_sample(embed, features):
    with pytest.raises(ValueError, match=r"sample 3 has 2 image token\(s\) but only 1 of the 3"):
        _splice(embed, features[:3])
    with pytest.raises(ValueError, match=r"5 image feature tensors .* only 4 image token\(s\) .*\[1, 1, 0, 2\]"):
        _splice(embed, [*features, features[0]])


def test_feature_size_must_match_embedding_size(embed, features):
    features[2] = torch.randn(64, HIDDEN + 1)
    with pytest.raises(ValueError, match=r"image feature tensor 2 has shape \(64, 9\).*embedding size 8"):
        _splice(embed, features)


def test_bad_arguments(embed, features):
    with pytest.raises(ValueError, match="padding_side"):
        _splice(embed, features, side="middle")
    with pytest.raises(ValueError, match="same shape"):
        splice_image_features(torch.ones(2, 3, dtype=torch.long), None, torch.ones(2, 4), [], embed)


def test_gradient_reaches_image_features_and_embeddings(embed, features):
    features = [f.requires_grad_() for f in features]
    out = _splice(embed, features, side="left", input_side="left")
    weights = torch.randn_like(out.inputs_embeds)
    (out.inputs_embeds * weights).sum().backward()
    start, n = out.layouts[3].image_spans[0]
    assert torch.equal(features[2].grad, weights[3, start : start + n])
    assert embed.weight.grad is not None and embed.weight.grad[5].abs().sum() > 0


def test_features_take_the_embedding_dtype(embed, features):
    out = _splice(embed, [f.double() for f in features])
    assert out.inputs_embeds.dtype == torch.float32


def test_split_and_pad_features_round_trip():
    feats = [torch.randn(n, 4) for n in (3, 17, 1)]
    padded, counts = pad_features(feats)
    assert padded.shape == (3, 17, 4) and counts.tolist() == [3, 17, 1] and not padded[0, 3:].any()
    for original, back in zip(feats, split_padded_features(padded, counts), strict=True):
        assert torch.equal(original, back)
    for original, back in zip(feats, split_packed_features(torch.cat(feats), [3, 17, 1]), strict=True):
        assert torch.equal(original, back)
    with pytest.raises(ValueError, match="token counts"):
        split_padded_features(padded, [3, 18, 1])
    with pytest.raises(ValueError, match="sum N_i"):
        split_packed_features(torch.cat(feats), [3, 17])


def test_former_module_name_is_an_alias():
    from llava.model import multimodal_inputs, splice

    assert multimodal_inputs.splice_image_features is splice.splice_image_features
    assert multimodal_inputs.ImageTokenLayout is splice.ImageTokenLayout
