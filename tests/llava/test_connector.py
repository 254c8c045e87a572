"""The connector between tower and projector (``--mm_connector``): the flag, the DRIP connector's estimators and
threshold, the fixed-pooling baselines, and its composition with packing, PyramidDrop, generation and the sidecar."""

from __future__ import annotations

import pytest
import torch

from llava.constants import IGNORE_INDEX, IMAGE_TOKEN_INDEX
from llava.eval.efficiency import VisionProbe
from llava.model import PDropConfig
from llava.model.config import MultimodalConfig
from llava.model.connector.spec import DripConnectorSpec, Pool1dSpec, canonical, parse_connector

DRIP = "drip:rate=0.25,estimator=box"


def test_flag_round_trip_and_errors():
    spec = parse_connector("drip:rate=0.125, estimator=local,hidden=16")
    assert spec == DripConnectorSpec(rate=0.125, estimator="local", hidden=16)
    assert parse_connector(canonical(spec)) == spec
    assert parse_connector("pool1d:k=4") == Pool1dSpec(4) and parse_connector("none") is None
    for bad, message in [
        ("drip:rate=2", "rate must lie in"),
        ("drip:estimator=st", "estimator must be one of"),
        ("pool3d:k=2", "unknown connector"),
        ("pool1d:size=2", "KEY=VALUE with KEY one of k"),
        ("pool2d:k=x", "is not an integer"),
        ("drip:eval_rule=median", "eval_rule must be one of threshold, expected_count"),
    ]:
        with pytest.raises(ValueError, match=message):
            parse_connector(bad)


def test_released_config_has_no_connector_and_a_recorded_one_is_canonical(tiny):
    model = tiny.model("clip")
    assert MultimodalConfig.from_config(model.config).connector is None and model.get_model().get_connector() is None
    cfg = MultimodalConfig(connector="drip:estimator=box")
    assert cfg.connector == "drip:rate=0.25,estimator=box,tau=1.0,threshold=0.5"


@pytest.mark.parametrize("text,counts", [("pool1d:k=4", [4, 4]), ("pool1d:k=3", [6, 6]), ("pool2d:k=2", [4, 4])])
def test_fixed_pooling_connectors_average_runs_and_windows(tiny, text, counts):
    model = tiny.model("clip", mm_connector=text)
    images = tiny.images(2)
    with torch.no_grad():
        raw = torch.stack(model.get_vision_tower()(images).features)  # [2, 16, 32], a 4x4 grid
        pooled = model.get_model().get_connector()(model.get_vision_tower()(images))
    assert pooled.token_counts.tolist() == counts
    assert model.get_model().get_connector().expected_tokens() == counts[0]  # what length-aware batching counts
    if text == "pool1d:k=3":  # runs 0-2, 3-5, ..., 15 alone
        torch.testing.assert_close(pooled.features[0][1], raw[0, 3:6].mean(0))
        torch.testing.assert_close(pooled.features[0][5], raw[0, 15])
    if text == "pool2d:k=2":  # window (0, 1): patches 2, 3, 6, 7
        torch.testing.assert_close(pooled.features[1][1], raw[1, [2, 3, 6, 7]].mean(0))


@pytest.mark.parametrize("k", [4, 3, 5])  # 16 patches: 4 divides N, 3 and 5 leave a shorter last run
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pool1d_connector_is_the_reductions_pool1d_on_drips_run_segments(tiny, k, dtype):
    """The connector pools with the training-free reduction's ``pool1d`` (image by image the same tokens), and its
    tokens are DRIP's segment means on the run boundaries it draws (``run_boundaries``)."""
    from drip.pooling import pool_segments
    from llava.model.connector.fixed import run_boundaries
    from llava.model.reduction.pool1d import pool1d

    model = tiny.model("clip", mm_connector=f"pool1d:k={k}").to(dtype)
    with torch.no_grad():
        raw = model.get_vision_tower()(tiny.images(2).to(dtype))
        pooled = model.get_model().get_connector()(raw)
    patches = torch.stack(raw.features)  # [2, 16, 32]
    segments = pool_segments(patches.float(), run_boundaries(16, k, 2, patches.device))
    assert pooled.token_counts.tolist() == segments.counts.tolist() == [-(-16 // k)] * 2
    for got, p, want in zip(pooled.features, patches, segments.tokens, strict=True):
        assert got.dtype == dtype
        torch.testing.assert_close(got, pool1d(p, k), rtol=0, atol=0)
        torch.testing.assert_close(got.float(), want, **({} if dtype == torch.float32 else dict(rtol=1e-2, atol=1e-2)))


@pytest.mark.parametrize("text", ["pool1d:k=3", "pool2d:k=2"])
def test_fixed_pooling_costs_one_add_per_patch_and_channel(tiny, text):
    model = tiny.model("clip", mm_connector=text)
    with torch.no_grad():
        raw = model.get_vision_tower()(tiny.images(2))  # 2 x [16, 32]
        pooled = model.get_model().get_connector()(raw)
    assert (pooled.macs - raw.macs).tolist() == [16 * 32] * 2  # the tower's cost plus one add per patch and channel


def test_cls_token_passes_unpooled_in_front(tiny):
    model = tiny.model("clip", mm_connector="pool1d:k=4", mm_vision_select_feature="cls_patch")
    with torch.no_grad():
        raw = model.get_vision_tower()(tiny.images(1))
        pooled = model.get_model().get_connector()(raw)
    assert pooled.token_counts.tolist() == [5]
    assert model.get_model().get_connector().expected_tokens() == 5
    torch.testing.assert_close(pooled.features[0][0], raw.features[0][0])
    torch.testing.assert_close(pooled.features[0][1], raw.features[0][1:5].mean(0))


def test_connector_refuses_a_tower_that_pools(tiny):
    model = tiny.model("drip", mm_connector=DRIP)  # DRIP-tiny pools inside the tower
    with pytest.raises(ValueError, match="pools the full 8x8 patch grid"):
        model.encode_image_features(tiny.images(2, "drip"))


def test_the_expected_count_rule_gives_each_image_its_expected_segments_where_a_threshold_collapses(tiny):
    from drip.boundary import training_rate

    model = tiny.model("clip", mm_connector="drip:rate=0.25,threshold=0.999,eval_rule=expected_count")
    assert model.config.mm_connector.endswith("threshold=0.999,eval_rule=expected_count")  # recorded as given
    connector = model.get_model().get_connector()
    with torch.no_grad():
        features = model.get_vision_tower()(tiny.images(3))
        expected = training_rate(connector.logits(connector.split(features)[1]), 1.0).sum(-1).round().clamp(min=1)
        counted = connector(features).token_counts
        assert counted.tolist() == expected.long().tolist() and (counted > 1).all()
        assert connector.segment_tokens(connector.patch_boundaries(features)).tolist() == counted.tolist()
        connector.spec = DripConnectorSpec(rate=0.25, threshold=0.999)  # DRIP's global threshold: one token each
        assert connector(features).token_counts.tolist() == [1, 1, 1]


def lm_batch(tiny, n: int = 3):
    rows = [tiny.prompt(8 + 3 * i, image_at=(2,), seed=i) for i in range(n)]
    ids, mask = tiny.right_pad(rows)
    labels = torch.where(mask & (ids != IMAGE_TOKEN_INDEX), ids, IGNORE_INDEX)
    return dict(input_ids=ids, attention_mask=mask, labels=labels, images=tiny.images(n))


@pytest.mark.parametrize("estimator", ["original", "box", "straight_through", "local"])
def test_lm_loss_gradient_reaches_the_predictor_except_for_the_original(tiny, estimator):
    model = tiny.model("clip", mm_connector=f"drip:rate=0.25,estimator={estimator}").train()
    model.get_vision_tower().requires_grad_(False)
    connector = model.get_model().get_connector()
    connector.set_prior_loss_weight(0.0)  # the LM loss alone
    torch.manual_seed(0)
    out = model(**lm_batch(tiny))
    assert out.boundary_loss is not None and out.boundary_loss.requires_grad  # the prior joins the loss
    out.loss.backward()
    grad = connector.predictor.fc1.weight.grad
    if estimator == "original":
        assert not grad.any()  # integer boundaries: only the prior (weight 0 here) reaches the predictor
    else:
        assert grad is not None and grad.abs().sum() > 0
    assert model.get_model().mm_projector[0].weight.grad.abs().sum() > 0


def test_threshold_stays_fp32_through_bf16_and_calibration_keeps_the_training_rate(tiny):
    from llava.model.connector.calibrate import calibrate_connector

    model = tiny.model("clip", mm_connector=DRIP)
    connector = model.get_model().get_connector()
    images = tiny.images(16, seed=3)
    threshold = calibrate_connector(model, list(images))
    assert MultimodalConfig.from_config(model.config).connector.endswith(f"threshold={threshold!r}")
    model.to(torch.bfloat16)
    assert connector.eval_threshold.dtype == torch.float32 and connector.predictor.fc1.weight.dtype == torch.bfloat16
    assert connector.eval_threshold.item() == threshold  # not rounded to bf16
    with torch.no_grad():
        counts = model.encode_image_features(images.to(torch.bfloat16)).token_counts
    # eval keeps the rate training samples (0.25 at init: logit(0.25) bias, tiny weights) up to the last-patch rule
    assert 0.15 < counts.float().mean().item() / 16 < 0.4, counts.tolist()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_threshold_stays_fp32_through_every_cast(tiny, dtype):
    """``.half()`` / ``.bfloat16()``, ``.to(dtype=, device=)`` and DeepSpeed's parameter cast leave the threshold
    exact and fp32 (1/3 rounds in both half dtypes)."""
    from types import SimpleNamespace

    from llava.train.train import cast_parameters_for_deepspeed

    method = "half" if dtype == torch.float16 else "bfloat16"
    casts = {
        "method": lambda m: getattr(m, method)(),
        "to": lambda m: m.to(dtype=dtype, device="cpu"),
        "deepspeed": lambda m: cast_parameters_for_deepspeed(
            m,
            SimpleNamespace(deepspeed="scripts/zero3.json", bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16),
        ),
    }
    for name, cast in casts.items():
        model = tiny.model("clip", mm_connector=DRIP)
        connector = model.get_model().get_connector()
        connector.set_eval_threshold(1 / 3)
        cast(model)
        assert connector.predictor.fc1.weight.dtype == dtype, name
        assert connector.eval_threshold.dtype == torch.float32 and connector.eval_threshold.item() == float(
            torch.tensor(1 / 3)
        ), name


def test_packed_training_forward_equals_padded_with_the_drip_connector(tiny):
    model = tiny.model("clip", mm_connector=DRIP).train()
    model.get_vision_tower().requires_grad_(False)
    inputs = lm_batch(tiny, 4)
    results = {}
    for packing in (False, True):
        model.set_packing(packing)
        model.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # same boundary draws
        out = model(**inputs)
        out.loss.backward()
        results[packing] = (out, model.get_model().get_connector().predictor.fc1.weight.grad.clone())
    (padded, g_padded), (packed, g_packed) = results[False], results[True]
    assert packed.packed is not None and padded.packed is None
    torch.testing.assert_close(packed.loss, padded.loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(g_packed, g_padded, rtol=1e-4, atol=1e-6)


def test_pyramiddrop_composes_with_the_connector(tiny):
    model = tiny.model("clip", mm_connector="pool1d:k=2")
    model.set_pdrop(PDropConfig((1,), (0.5,)))
    with torch.no_grad():
        out = model(**{k: v for k, v in lm_batch(tiny).items() if k != "labels"})
    assert torch.isfinite(out.logits).all()
    assert [layout.num_image_tokens for layout in out.image_layouts] == [8, 8, 8]


def test_batched_generation_and_sidecar_counts_follow_the_connector(tiny):
    model = tiny.model("clip", mm_connector=DRIP, initializer_range=0.1)
    connector = model.get_model().get_connector()
    connector.set_eval_threshold(0.25)  # roughly half the patches close a segment: counts vary per image
    images = tiny.images(4, seed=7)
    prompts = [tiny.prompt(5 + i, image_at=(1,), seed=i) for i in range(4)]
    with torch.no_grad():
        expected = connector(model.get_vision_tower()(images)).token_counts.tolist()
        single = [
            model.generate(p[None], images=images[i : i + 1], max_new_tokens=3, do_sample=False)
            for i, p in enumerate(prompts)
        ]
        ids, mask = left_pad(prompts)
        with VisionProbe(model) as probe:
            batched = model.generate(ids, attention_mask=mask, images=images, max_new_tokens=3, do_sample=False)
    assert len(set(expected)) > 1
    assert probe.token_counts == expected
    tower_only = float(model.get_vision_tower()(images[:1]).macs[0]) / 1e9
    assert probe.gflops[0] > tower_only  # tower + the predictor's GMACs
    assert [row.tolist() for row in batched] == [s[0].tolist() for s in single]


def left_pad(rows):
    length = max(len(r) for r in rows)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, length - len(r) :], mask[i, length - len(r) :] = r, 1
    return ids, mask


def test_web_demo_reports_pooled_tokens_and_draws_the_connectors_segments(tiny):
    from PIL import Image

    from llava.serve.web import tower_figures

    image = Image.new("RGB", (32, 32), (200, 30, 30))
    for text, drawn in [("pool1d:k=4", True), ("pool2d:k=2", False)]:
        model = tiny.model("clip", mm_connector=text)
        tokens, gflops, overlay = tower_figures(model, tiny.images(1), image)
        assert tokens == 4 and gflops > 0
        assert (overlay is not None) == drawn  # 1-D runs are segments; 2-D windows draw none
