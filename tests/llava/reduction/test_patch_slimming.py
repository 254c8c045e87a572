"""Patch Slimming: the pruned tower against a naive per-token implementation, its FLOP count against fvcore, its
composition with FastV and a training step; the schedule file's errors."""

from __future__ import annotations

import json
import math

import pytest
import torch

from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.patch_slimming import query_positions, schedule_from_dict, slim_layer
from llava.model.reduction.tower import clip_layers

N = 16  # the tiny CLIP: 32x32 images, 8x8 patches, 3 layers


def nested_kept(layers: int, seed: int) -> list[list[int]]:
    """Random nested kept patch lists, a few patches fewer each layer."""
    g = torch.Generator().manual_seed(seed)
    current, out = list(range(N)), []
    for _ in range(layers):
        keep = max(1, len(current) - int(torch.randint(1, 6, (1,), generator=g)))
        pick = sorted(torch.randperm(len(current), generator=g)[:keep].tolist())
        current = [current[i] for i in pick]
        out.append(current)
    return out


def write_schedule(path, kept: list[list[int]]) -> str:
    path.write_text(json.dumps({"format": "patch_slimming_schedule", "num_patches": N, "kept_patches": kept}))
    return str(path)


def naive_slimmed(clip, image: torch.Tensor, kept: list[list[int]]) -> tuple[list[int], torch.Tensor]:
    """One image: every layer updates only [CLS] and its kept patches, each attending (loops over heads and tokens)
    to every token still alive; the others are dropped. Returns the alive slots and their tokens."""
    vision = getattr(clip, "vision_model", clip)
    x = vision.pre_layrnorm(vision.embeddings(image[None]))[0]
    alive = {s: x[s] for s in range(N + 1)}
    for layer, patches in zip(clip_layers(clip), kept, strict=False):
        attn = layer.self_attn
        hd = attn.head_dim
        h = {s: layer.layer_norm1(alive[s]) for s in alive}
        k = {s: attn.k_proj(h[s]) for s in alive}
        v = {s: attn.v_proj(h[s]) for s in alive}
        out = {}
        for s in [0] + [p + 1 for p in patches]:
            q = attn.q_proj(h[s])
            mixed = []
            for head in range(attn.num_heads):
                c = slice(head * hd, (head + 1) * hd)
                w = torch.stack([q[c] @ k[j][c] / math.sqrt(hd) for j in alive]).softmax(0)
                mixed.append(sum(w[i] * v[j][c] for i, j in enumerate(alive)))
            y = alive[s] + attn.out_proj(torch.cat(mixed))
            out[s] = y + layer.mlp(layer.layer_norm2(y))
        alive = out
    return sorted(alive), torch.stack([alive[s] for s in sorted(alive)])


@pytest.mark.parametrize(
    "select_layer, select_feature, seed", [(-2, "patch", 0), (-1, "cls_patch", 1), (1, "patch", 2)]
)
def test_patch_slimming_matches_naive_per_sample(tiny, tmp_path, select_layer, select_feature, seed):
    model = tiny.model(mm_vision_select_layer=select_layer, mm_vision_select_feature=select_feature)
    clip = model.get_vision_tower().vision_tower
    layers = select_layer % 4
    kept = nested_kept(layers, seed)
    path = write_schedule(tmp_path / "s.json", kept)
    images = tiny.images(2)
    cut = 0 if select_feature == "cls_patch" else 1
    with torch.no_grad():
        apply_token_reduction(model, f"patch_slimming:schedule={path}")
        got = model.encode_image_features(images)
        naive = [naive_slimmed(clip, im, kept) for im in images]
        want = [model.get_model().mm_projector(tokens[cut:]) for _, tokens in naive]
    slots = torch.arange(N + 1)
    for queries in query_positions(schedule_from_dict(json.loads(open(path).read()), path)):
        slots = slots[queries]  # index selection composed over the layers: original slots of the kept tokens
    assert slots.tolist() == naive[0][0] == [0] + [p + 1 for p in kept[-1]]
    assert got.token_counts.tolist() == [len(kept[-1]) + 1 - cut] * 2
    for g, w in zip(got.features, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-5)


def test_slim_layer_keeping_everything_is_the_clip_layer(tiny):
    layer = clip_layers(tiny.model().get_vision_tower().vision_tower)[0]
    x = torch.randn(2, N + 1, 32)
    with torch.no_grad():
        want = layer(x, None)
        got = slim_layer(layer, x, torch.arange(N + 1))
    torch.testing.assert_close(got, want[0] if isinstance(want, tuple) else want, rtol=1e-5, atol=1e-5)


def test_tower_gmacs_are_what_fvcore_counts(tiny, tmp_path):
    from drip.flops import fvcore_analysis
    from llava.model.reduction.registry import encode_reduced
    from llava.model.reduction.spec import parse_token_reduction

    model = tiny.model()
    tower = model.get_vision_tower()
    methods = parse_token_reduction(f"patch_slimming:schedule={write_schedule(tmp_path / 's.json', [[1, 3, 5], [3]])}")

    class Traced(torch.nn.Module):
        def __init__(self, methods):
            super().__init__()
            self.tower, self.methods = tower, methods  # its parameters are the traced module's

        def forward(self, images):
            return torch.stack(encode_reduced(self.tower, images, self.methods).features)

    images = tiny.images(2)
    with torch.no_grad():
        counted = fvcore_analysis(Traced(methods), (images,)).by_operator()
        reported = (encode_reduced(tower, images, methods).macs / 1e9).tolist()  # the cost the features carry
    executed = sum(v for op, v in counted.items() if op != "layer_norm")  # norms are left out of the count
    assert sum(reported) * 1e9 == pytest.approx(executed, rel=1e-9)
    unpruned = float(tower(images).macs[0]) / 1e9
    assert 0 < reported[0] < unpruned
    with torch.no_grad():  # the unpruned count (same formula) against fvcore on the tower's own forward
        whole = fvcore_analysis(Traced(()), (images,)).by_operator()
    assert unpruned * 2e9 == pytest.approx(sum(v for op, v in whole.items() if op != "layer_norm"), rel=1e-9)


def test_composes_with_fastv_and_trains_one_step(tiny, tmp_path):
    model = tiny.model().train()
    path = write_schedule(tmp_path / "s.json", [[0, 2, 4, 6, 8, 9], [2, 4, 9]])
    apply_token_reduction(model, f"patch_slimming:schedule={path}+fastv:k=1,ratio=0.5")
    assert model.config.mm_token_reduction.startswith("patch_slimming:schedule=")
    model.get_vision_tower().set_trainable("all")
    ids, mask = tiny.right_pad([tiny.prompt(9, image_at=[2], seed=0), tiny.prompt(7, image_at=[3], seed=1)])
    labels = torch.full_like(ids, -100)
    labels[0, 6:9], labels[1, 5:7] = ids[0, 6:9], ids[1, 5:7]  # answer spans after the image
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    out = model(input_ids=ids, attention_mask=mask, images=tiny.images(2), labels=labels)
    out.loss.backward()
    layer0 = clip_layers(model.get_vision_tower().vision_tower)[0].self_attn.q_proj.weight
    assert torch.isfinite(out.loss) and layer0.grad is not None and layer0.grad.abs().sum() > 0
    before = layer0.detach().clone()
    optimizer.step()
    assert not torch.equal(before, layer0)
    with torch.no_grad():
        assert model.encode_image_features(tiny.images(1)).token_counts.tolist() == [3]  # layer -2 keeps 3


@pytest.mark.parametrize(
    "content, match",
    [
        ("{", "not valid JSON"),
        (json.dumps({"format": "x"}), "field 'format'"),
        (
            json.dumps({"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": [[1, 2], [3]]}),
            r"field 'kept_patches\[1\]'.*nested",
        ),
        (
            json.dumps({"format": "patch_slimming_schedule", "num_patches": 16, "kept_patches": [[2, 1]]}),
            r"field 'kept_patches\[0\]'.*ascending",
        ),
    ],
)
def test_bad_schedule_file_is_named_before_the_model_runs(tiny, tmp_path, content, match):
    path = tmp_path / "bad.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=rf"schedule {path}.*{match}"):
        apply_token_reduction(tiny.model(), f"patch_slimming:schedule={path}")


def test_missing_or_mismatched_schedule(tiny, tmp_path):
    import argparse

    from llava.model.reduction.apply import add_token_reduction_arg, check_token_reduction_arg

    parser = argparse.ArgumentParser()
    add_token_reduction_arg(parser)
    args = parser.parse_args(["--token_reduction", f"patch_slimming:schedule={tmp_path}/none.json"])
    with pytest.raises(SystemExit):
        check_token_reduction_arg(parser, args)
    with pytest.raises(FileNotFoundError, match="none.json: no such file"):
        apply_token_reduction(tiny.model(), args.token_reduction)
    model = tiny.model()  # layer -2 runs 2 layers; a 3-layer schedule was searched for another select_layer
    apply_token_reduction(model, f"patch_slimming:schedule={write_schedule(tmp_path / 's.json', [[1], [1], [1]])}")
    with pytest.raises(ValueError, match=r"s.json: field 'kept_patches': 3 layers, but the tower runs 2"):
        model.encode_image_features(tiny.images(1))
    with pytest.raises(ValueError, match="patch_slimming and tome cannot be combined"):  # when the flag is read
        apply_token_reduction(model, f"patch_slimming:schedule={tmp_path / 's.json'}+tome:r=2")


def test_the_schedule_file_is_parsed_once_not_per_batch(tiny, tmp_path, monkeypatch):
    """Three batches under the efficiency probe (which asks for the GMACs of each) read the schedule file once."""
    from llava.eval.efficiency import VisionProbe
    from llava.model.reduction import patch_slimming

    model = tiny.model()
    apply_token_reduction(model, f"patch_slimming:schedule={write_schedule(tmp_path / 's.json', [[1, 3, 5], [3]])}")
    parsed = []
    parse = patch_slimming.schedule_from_dict
    monkeypatch.setattr(patch_slimming, "schedule_from_dict", lambda *a: parsed.append(a[1]) or parse(*a))
    with torch.no_grad(), VisionProbe(model) as probe:
        for _ in range(3):
            model.encode_image_features(tiny.images(2))
    assert probe.token_counts == [1] * 6 and all(g is not None and g > 0 for g in probe.gflops)
    assert len(parsed) == 1, parsed


def test_a_schedule_that_is_not_utf8_is_named(tmp_path):
    from llava.model.reduction.patch_slimming import load_schedule

    (tmp_path / "s.json").write_bytes(b'{"format": "patch_slimming_schedule", "x": "\xff\xfe"}')
    with pytest.raises(ValueError, match=r"schedule .*s\.json: not UTF-8 text"):
        load_schedule(str(tmp_path / "s.json"))
