"""A tower, token-reduction method or connector that returns its tokens without their per-image MACs is an error
(``MissingCost``, naming it) wherever the features go next, never a silent null in the efficiency sidecar: one of
each is planted here."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from llava.eval.efficiency import VisionProbe
from llava.model.connector.fixed import Pool1dConnector
from llava.model.multimodal_encoder.base import MissingCost
from llava.model.multimodal_encoder.clip_encoder import CLIPVisionTower
from llava.model.reduction import registry, spec
from llava.model.reduction.apply import apply_token_reduction
from llava.model.reduction.tower import ToMeMethod


def generate_under_probe(tiny, model) -> VisionProbe:
    ids = tiny.prompt(6, image_at=(1,))[None]
    with torch.no_grad(), VisionProbe(model) as probe:
        model.generate(ids, images=tiny.images(1), max_new_tokens=1, do_sample=False)
    return probe


class CostlessTower(CLIPVisionTower):
    def forward(self, images):
        return dataclasses.replace(super().forward(images), macs=None)


class CostlessToMe(ToMeMethod):
    def encode(self, spec, tower, images, memo):
        return dataclasses.replace(super().encode(spec, tower, images, memo), macs=None)


class CostlessPool1d(Pool1dConnector):
    def forward(self, features):
        return dataclasses.replace(super().forward(features), macs=None)


def test_the_unplanted_model_reports_a_cost(tiny):
    probe = generate_under_probe(tiny, tiny.model("clip"))
    assert probe.token_counts == [16] and probe.gflops[0] > 0  # the unplanted model: a cost for its image


def test_a_tower_without_cost(tiny):
    model = tiny.model("clip")
    old = model.get_vision_tower()
    model.get_model().vision_tower = CostlessTower(old.vision_tower_name, old.select_layer, vision_config=tiny.clip)
    with pytest.raises(MissingCost, match="CostlessTower returned visual tokens without their cost"):
        generate_under_probe(tiny, model)
    apply_token_reduction(model, "uniform:size=2")  # a token method adds to the tower's cost: it needs one
    with pytest.raises(MissingCost, match="CostlessTower"):
        model.encode_image_features(tiny.images(1))


def test_a_method_without_cost(tiny, monkeypatch):
    model = tiny.model("clip")
    apply_token_reduction(model, "tome:r=3")
    monkeypatch.setitem(registry.IMPLEMENTATIONS, spec.ToMe, CostlessToMe)
    with pytest.raises(MissingCost, match="--token_reduction tome \\(CostlessToMe\\) on vision tower CLIPVisionTower"):
        generate_under_probe(tiny, model)


def test_a_connector_without_cost(tiny):
    model = tiny.model("clip", mm_connector="pool1d:k=4")
    connector = model.get_model().get_connector()
    model.get_model().mm_connector = CostlessPool1d(connector.spec, connector.grid, connector.has_cls)
    with pytest.raises(MissingCost, match="CLIPVisionTower \\+ CostlessPool1d returned visual tokens without"):
        generate_under_probe(tiny, model)
