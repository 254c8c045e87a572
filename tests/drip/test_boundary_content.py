"""The cached-feature proxy and ``python -m drip.tools.boundary_content`` on a tiny synthetic cache."""

from __future__ import annotations

import pytest
import torch

from drip.boundary_proxy import ProxyModel, Variant, segment_variance, train_proxy
from drip.tools import boundary_content

RUNS = (2, 6, 3, 5)
CAPTIONS = [
    f"a {c} {s} on the {p}" for c in ("red", "blue", "green") for s in ("cat", "dog") for p in ("grass", "sofa")
]


def _features(m: int = 12, d: int = 8) -> torch.Tensor:
    """[m, 16, d]: each image is runs of 2, 6, 3 and 5 identical patches (clear cuts, not where uniform ones sit)."""
    g = torch.Generator().manual_seed(0)
    runs = torch.randn(m, 4, d, generator=g)
    return runs.repeat_interleave(torch.tensor(RUNS), dim=1).contiguous()


def test_segment_variance_is_zero_on_segments_that_follow_the_content():
    x = _features()
    ends = torch.zeros(12, 16)
    ends[:, [1, 7, 10, 15]] = 1
    assert segment_variance(x, ends).abs().max() < 1e-6
    assert (segment_variance(x, torch.roll(ends, 1, dims=1)) > 0).all()


@pytest.mark.parametrize(
    "variant",
    [v for v in boundary_content.VARIANTS if v.kind not in ("uniform", "random", "spikes") and v.train_predictor],
    ids=lambda v: v.name,
)
def test_every_learned_variant_trains_its_predictor(variant: Variant):
    torch.manual_seed(0)
    model = ProxyModel(variant, 8, CAPTIONS, rate=0.25, dim=16)
    before = [p.detach().clone() for p in model.predictor.parameters()]
    train_proxy(model, _features(), CAPTIONS, steps=2, seed=0, batch=6)
    changed = [not torch.equal(a, p) for a, p in zip(before, model.predictor.parameters(), strict=True)]
    assert any(changed), f"{variant.name}: the predictor got no update"


def test_task_gradient_reaches_the_predictor_only_through_a_task_estimator():
    """Without the prior and target terms: box / reinforce carry the task loss to the predictor, original does not."""
    x = _features()[:6]
    for estimator, reaches in (("box", True), ("reinforce", True), ("original", False)):
        torch.manual_seed(0)
        model = ProxyModel(Variant(estimator, "mlp", estimator), 8, CAPTIONS, rate=0.25, dim=16)
        grads = torch.autograd.grad(
            model.task_loss(x, CAPTIONS[:6]), list(model.predictor.parameters()), allow_unused=True
        )
        got = any(g is not None and g.abs().sum() > 0 for g in grads)
        assert got == reaches, estimator


def test_tool_prints_the_three_tables(tmp_path, capsys):
    cache = tmp_path / "feats.pt"
    train = torch.arange(12) < 9
    torch.save({"features": _features().half(), "captions": CAPTIONS, "train": train}, cache)
    names = ["uniform", "random", "similarity at init", "mlp box + targets"]
    boundary_content.main(
        ["--features", str(cache), "--seeds", "0", "--steps", "2", "--signal-seeds", "0", "--variants", *names]
    )
    out = capsys.readouterr().out
    assert "| similarity at init | 0.000" in out  # runs of identical patches: cuts at the changes, no variance left
    assert "## task signal" in out and "local" in out
    torch.save({"features": _features()}, cache)
    with pytest.raises(ValueError, match="missing"):
        boundary_content.main(["--features", str(cache)])
