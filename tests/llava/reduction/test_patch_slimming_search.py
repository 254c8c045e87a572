"""The Patch Slimming search: significance scores against a naive head-path enumeration on an eager tower's own
attention maps, the tolerance's known extremes, the per-layer fine-tuning, and the command line."""

from __future__ import annotations

import copy
import itertools
import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import CLIPVisionConfig, CLIPVisionModel

from llava.model.reduction.patch_slimming import load_schedule
from llava.model.reduction.slimming_search import SearchConfig, search_schedule, significance
from llava.model.reduction.tower import clip_layers

N = 16


@pytest.fixture
def clip(tiny):
    torch.manual_seed(0)
    return CLIPVisionModel(CLIPVisionConfig(**tiny.clip)).eval()


def naive_scores(clip, images, layer: int, masks: dict[int, list[int]]) -> list[float]:
    """Per patch: sum over images of (mean over head paths of ||A[:, i]||^2) * sum_h ||(P_h V_h)[i]||^2, with every
    path's A = diag(m_top) P_top ... diag(m_{layer+1}) P_{layer+1} multiplied out on its own."""
    eager = copy.deepcopy(clip)
    eager.set_attn_implementation("eager")
    out = eager(images, output_hidden_states=True, output_attentions=True)
    attn = clip_layers(eager)[layer].self_attn
    heads, hd, t = attn.num_heads, attn.head_dim, N + 1
    above = sorted(masks)
    scores = [0.0] * N
    for b in range(images.shape[0]):
        v = attn.v_proj(clip_layers(eager)[layer].layer_norm1(out.hidden_states[layer][b]))  # [T, D]
        p = out.attentions[layer][b]
        for i in range(1, t):
            u = sum(
                float(sum(p[h, i, j] * v[j, h * hd : (h + 1) * hd] for j in range(t)).pow(2).sum())
                for h in range(heads)
            )
            paths = []
            for combo in itertools.product(range(heads), repeat=len(above)):
                a = torch.eye(t)
                for level, h in zip(above, combo, strict=True):
                    rows = torch.tensor([s == 0 or s - 1 in masks[level] for s in range(t)], dtype=torch.float32)
                    a = (rows[:, None] * out.attentions[level][b, h]) @ a  # the higher layer on the left
                paths.append(float(a[:, i].pow(2).sum()))
            scores[i - 1] += sum(paths) / len(paths) * u
    return scores


def test_significance_matches_naive_path_enumeration(clip, tiny):
    images = tiny.images(2)
    masks = {2: [1, 5, 9], 1: [1, 3, 5, 9, 12]}
    with torch.no_grad():
        got = significance(clip, images, 0, masks, batch_size=1)
        want = naive_scores(clip, images, 0, masks)
        top = significance(clip, images, 2, {}, batch_size=2)
        want_top = naive_scores(clip, images, 2, {})
    torch.testing.assert_close(got, torch.tensor(want), rtol=1e-4, atol=0)
    torch.testing.assert_close(top, torch.tensor(want_top), rtol=1e-4, atol=0)


def test_tolerance_extremes(clip, tiny):
    images = tiny.images(3)
    loose = search_schedule(clip, images, SearchConfig(keep=4, epsilon=1e9, r0=3, select_layer=-1)).schedule
    with torch.no_grad():
        want_top = sorted(torch.tensor(naive_scores(clip, images, 2, {})).argsort(descending=True)[:4].tolist())
    assert loose.kept == (tuple(want_top),) * 3  # r = 0 is accepted: every layer keeps the top layer's patches
    exact = search_schedule(clip, images, SearchConfig(keep=4, epsilon=0.0, r0=5, select_layer=-1))
    assert exact.schedule.kept[:2] == (tuple(range(N)),) * 2 and exact.schedule.kept[2] == tuple(want_top)
    assert exact.errors == [0.0, 0.0, 0.0]  # keeping every patch below reproduces the layer above exactly
    middle = search_schedule(
        clip, images, SearchConfig(keep=4, epsilon=0.5 * loose.search["errors"][1], r0=1, select_layer=-1)
    )
    assert 4 < len(middle.schedule.kept[1]) < N and middle.errors[1] < 0.5 * loose.search["errors"][1]


def test_finetuning_lowers_the_error_and_leaves_the_input_model(clip, tiny):
    images = tiny.images(3)
    before = {k: v.clone() for k, v in clip.state_dict().items()}
    plain = search_schedule(clip, images, SearchConfig(keep=3, epsilon=1e9, select_layer=-2))
    tuned = search_schedule(clip, images, SearchConfig(keep=3, epsilon=1e9, select_layer=-2, finetune_steps=5, lr=1e-2))
    assert tuned.schedule.kept == plain.schedule.kept  # same masks (r = 0), so the errors compare
    assert tuned.errors[0] < plain.errors[0]
    assert all(torch.equal(v, clip.state_dict()[k]) for k, v in before.items())
    changed = [
        not torch.equal(a, b)
        for a, b in zip(clip_layers(clip), clip_layers(tuned.model), strict=True)
        for a, b in [(a.mlp.fc1.weight, b.mlp.fc1.weight)]
    ]
    assert changed == [True, False, False]  # only the pruned layer below the top is tuned


def test_bad_search_config(clip, tiny):
    with pytest.raises(ValueError, match="keep=17 exceeds the 16 patches"):
        search_schedule(clip, tiny.images(1), SearchConfig(keep=17, epsilon=0.1))
    with pytest.raises(ValueError, match="r0 must be >= 1"):
        SearchConfig(keep=2, epsilon=0.1, r0=0)


def test_command_line_writes_a_schedule_the_model_runs(clip, tiny, tmp_path):
    from llava.model.reduction.apply import apply_token_reduction
    from llava.tools import patch_slimming_search

    clip.save_pretrained(tmp_path / "clip")
    rng = np.random.default_rng(0)
    (tmp_path / "images").mkdir()
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i}.png")
    common = [
        "--vision_tower",
        str(tmp_path / "clip"),
        "--images",
        str(tmp_path / "images"),
        "--keep",
        "5",
        "--epsilon",
        "0.01",
        "--r0",
        "4",
        "--output",
        str(tmp_path / "s.json"),
        "--device",
        "cpu",
    ]
    with pytest.raises(SystemExit):
        patch_slimming_search.main([*common, "--finetune_steps", "2"])  # the tuned weights would be lost
    assert patch_slimming_search.main([*common, "--finetune_steps", "2", "--output_tower", str(tmp_path / "t")]) == 0
    schedule = load_schedule(str(tmp_path / "s.json"))
    assert schedule.num_layers == 2 and len(schedule.kept[1]) == 5 and schedule.search["epsilon"] == 0.01
    assert json.loads((tmp_path / "t" / "config.json").read_text())["hidden_size"] == 32
    model = tiny.model()
    apply_token_reduction(model, f"patch_slimming:schedule={tmp_path / 's.json'}")
    with torch.no_grad():
        assert model.encode_image_features(tiny.images(2)).token_counts.tolist() == [5, 5]
