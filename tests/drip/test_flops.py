"""drip.flops: fvcore counts (seed-comparable / complete) against known open_clip figures, analytic vs fvcore,
simulated token counts, monotonicity across DRIP rates, the LLaVA-side helper and the CLI."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from drip import DripVisionTransformer, get_preset
from drip.flops import (
    analytic_macs,
    batch_macs,
    count_flops,
    flops_table,
    fvcore_analysis,
    main,
    open_clip_reference,
    resolve_config,
    simulated_stage_boundaries,
    simulated_stage_counts,
    tower_gmacs,
)

# Stock fvcore on open_clip's ViT-B/32 at 224 (eval + no_grad) and with attention counted (shared/ENVIRONMENT.md).
OPEN_CLIP_B32_SEED, OPEN_CLIP_B32_COMPLETE = 2.952, 4.414


def tower(name: str, **kw) -> DripVisionTransformer:
    torch.manual_seed(0)
    return DripVisionTransformer(get_preset(name, **kw)).eval()


def fixed_count_boundaries(batch: int, n: int, k: int, seed: int = 0) -> torch.Tensor:
    """[batch, n] with exactly k boundaries per row at random positions (last position included)."""
    g = torch.Generator().manual_seed(seed)
    b = torch.zeros(batch, n)
    for row in b:
        row[torch.randperm(n - 1, generator=g)[: k - 1]] = 1.0
        row[-1] = 1.0
    return b


def test_plain_vit_b32_matches_stock_fvcore_figures():
    model = tower("ViT-B-32")  # the one full-size count in this file (~1-2 s on an idle core)
    report = count_flops(model, torch.randn(1, 3, 224, 224))
    assert report.seed_gflops == pytest.approx(OPEN_CLIP_B32_SEED, rel=5e-3)
    assert report.complete_gflops == pytest.approx(OPEN_CLIP_B32_COMPLETE, rel=5e-3)
    assert report.analytic_gflops == pytest.approx(report.complete_gflops, rel=1e-2)
    assert (report.tokens, report.predictor_gmacs, report.stage_tokens) == (49.0, 0.0, ())


def test_sdpa_handle_counts_both_matmuls():
    class Attn(nn.Module):
        def forward(self, q, k, v):
            return F.scaled_dot_product_attention(q, k, v)

    q, k, v = torch.randn(2, 3, 5, 8), torch.randn(2, 3, 7, 8), torch.randn(2, 3, 7, 4)
    with torch.no_grad():
        total = fvcore_analysis(Attn(), (q, k, v)).total()
    assert total == 2 * 3 * 5 * 7 * (8 + 4)


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("name", ["DRIP-tiny", "DRIP-2x-tiny", "H-DRIP-tiny", "ViT-tiny"])
def test_analytic_agrees_with_fvcore_on_forced_boundaries(name, layout):
    model = tower(name, post_layout=layout)
    cfg, batch = model.cfg, 3
    forced, n = [], cfg.num_patches
    for k, p in enumerate(cfg.prior):  # same count per image so that padded == packed work
        s = max(1, round(n * p * 0.8))
        forced.append(fixed_count_boundaries(batch, n, s, seed=k))
        n = s
    report = count_flops(model, torch.randn(batch, 3, 64, 64), forced or None)
    assert report.analytic_gflops == pytest.approx(report.complete_gflops, rel=1e-2)
    assert report.seed_gflops < report.complete_gflops
    assert (report.predictor_gmacs > 0) == bool(cfg.pool_at)
    if cfg.pool_at:
        assert report.stage_tokens[-1] == report.tokens == n


@pytest.mark.parametrize("layout", ["packed", "padded"])
def test_analytic_agrees_on_varying_counts(layout):
    """Per-image counts differ: packed blocks skip the padding, padded blocks compute it; batch_macs knows which."""
    model = tower("DRIP-tiny", post_layout=layout)
    g = torch.Generator().manual_seed(1)
    forced = (torch.rand(4, 64, generator=g) < torch.tensor([0.1, 0.3, 0.5, 0.9])[:, None]).float()
    report = count_flops(model, torch.randn(4, 3, 64, 64), forced)
    counts = forced.clone()
    counts[:, -1] = 1
    assert report.tokens == pytest.approx(counts.sum(-1).mean().item())
    assert report.analytic_gflops == pytest.approx(report.complete_gflops, rel=1e-2)
    per_image = sum(analytic_macs(model.cfg, [int(c)]) for c in counts.sum(-1)) / 4 / 1e9
    if layout == "packed":  # only the pooling matmul, ln_post and the attention matmuls see padding
        padded = batch_macs(model.cfg, counts.sum(-1, keepdim=True).long(), layout="padded") / 4 / 1e9
        assert per_image < report.complete_gflops < padded
    else:
        assert report.complete_gflops > 1.3 * per_image


def test_batch_macs_layouts():
    cfg = get_preset("DRIP-4x-B-16")
    equal, unequal = torch.tensor([[49], [49]]), torch.tensor([[30], [68]])
    assert batch_macs(cfg, equal, "packed") == batch_macs(cfg, equal, "padded") == 2 * analytic_macs(cfg, [49])
    assert batch_macs(cfg, unequal, "padded") > batch_macs(cfg, unequal, "packed") > 2 * analytic_macs(cfg, [49])
    with pytest.raises(ValueError, match="expected token counts \\[B, 1\\]"):
        batch_macs(cfg, torch.tensor([49, 49]))


@pytest.mark.parametrize("prior", [0.01, 0.1, 0.25, 0.33, 0.5, 0.9, 1.0])
def test_simulated_token_counts(prior):
    model = tower("DRIP-tiny", prior=(prior,))
    expected = max(1, int(64 * prior))
    assert simulated_stage_counts(model.cfg) == [expected]
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64), simulated_stage_boundaries(model.cfg, 2))
    assert out.token_counts.tolist() == [expected, expected]


def test_simulated_counts_of_presets():
    assert simulated_stage_counts(get_preset("DRIP-10x-B-32")) == [4]  # int(49 * 0.1)
    assert simulated_stage_counts(get_preset("DRIP-10x-B-16")) == [19]
    assert simulated_stage_counts(get_preset("H-DRIP-B-16")) == [98, 49]
    model = tower("H-DRIP-tiny")
    with torch.no_grad():
        report = count_flops(model, torch.randn(1, 3, 64, 64), simulated_stage_boundaries(model.cfg))
    assert report.stage_tokens == (32.0, 16.0)


def test_flops_decrease_with_rate():
    rows = flops_table(["DRIP-2x-tiny", "DRIP-tiny", "ViT-tiny"])
    assert rows[0]["complete_gflops"] > rows[1]["complete_gflops"]
    assert rows[2]["complete_ratio"] == pytest.approx(1.0)
    analytic = [analytic_macs(c, simulated_stage_counts(c)) for c in map(get_preset, ["DRIP-2x-B-16", "DRIP-4x-B-16"])]
    cfg10 = get_preset("DRIP-10x-B-16")
    analytic.append(analytic_macs(cfg10, simulated_stage_counts(cfg10)))
    vit = analytic_macs(get_preset("ViT-B-16"), [])
    assert vit > analytic[0] > analytic[1] > analytic[2]
    assert analytic[1] / vit <= 0.38  # DRIP-4x-B-16 with fixed boundaries: the efficiency target


def test_tower_gmacs_per_image():
    cfg = get_preset("DRIP-4x-B-16")
    per_image = tower_gmacs(cfg, torch.tensor([10, 49, 196]))
    assert per_image == sorted(per_image) and per_image[1] == analytic_macs(cfg, [49]) / 1e9
    # select_layer=-2: the last block (and the heads) are not needed
    assert tower_gmacs(cfg, [49], blocks=cfg.layers - 1)[0] < per_image[1]
    assert tower_gmacs(get_preset("ViT-B-16"), [196])[0] == pytest.approx(17.583, rel=1e-3)
    with pytest.raises(ValueError, match="token counts \\[B, stages\\]"):
        tower_gmacs(get_preset("H-DRIP-B-16"), [10, 20])
    assert len(tower_gmacs(get_preset("H-DRIP-B-16"), [[98, 49], [60, 20]])) == 2
    with pytest.raises(ValueError, match="must lie in 1..196"):
        analytic_macs(cfg, [0])


def test_resolve_config_and_cli(tmp_path, capsys):
    vit_l = resolve_config("ViT-L-14-336")
    assert (vit_l.pool_at, vit_l.image_size, vit_l.patch_size, vit_l.width) == ((), 336, 14, 1024)
    with pytest.raises(KeyError, match="unknown model"):
        resolve_config("ViT-Q-99")
    out = tmp_path / "flops.json"
    main(["--models", "ViT-tiny", "DRIP-tiny", "--json", str(out)])
    rows = json.loads(out.read_text())
    assert [r["model"] for r in rows] == ["ViT-tiny", "DRIP-tiny"]
    assert rows[1]["tokens"] == 16 and rows[1]["complete_ratio"] < 1
    assert "DRIP-tiny" in capsys.readouterr().out


@pytest.mark.slow
def test_our_counts_match_open_clip_model():
    """Counts open_clip's own ViT-B/32 (a second full-size model, ~3 s): same seed and complete figures as ours."""
    seed, complete = open_clip_reference("ViT-B-32")
    report = count_flops(tower("ViT-B-32"), torch.randn(1, 3, 224, 224))
    assert report.seed_gflops == pytest.approx(seed, rel=1e-3)
    assert report.complete_gflops == pytest.approx(complete, rel=1e-3)


def test_paper_convention_ratio_is_printed_beside_the_consistent_one(capsys):
    """The DRIP paper divides its DRIP rows (complete counts) by stock-fvcore ViT rows (seed counts): 0.59 for
    DRIP-4x-B-16, where the consistent ratio is 0.378. Both are reported, the convention named."""
    row = flops_table(["DRIP-4x-B-16"])[0]
    assert row["complete_ratio"] == pytest.approx(0.378, abs=2e-3)
    assert row["paper_ratio"] == pytest.approx(0.589, abs=2e-3)  # 6.646 / 11.290 (stock fvcore ViT-B/16)
    main(["--models", "DRIP-4x-B-16"])
    out = capsys.readouterr().out
    assert "paper ratio" in out and "0.589" in out and "0.378" in out and "complete / ViT seed" in out
