"""DripConfig validation: every field checked, errors name the field and the allowed values;
the S-DRIP preset and its band loss."""

import pytest
import torch

from drip import DripConfig, DripVisionTransformer, get_preset
from drip.boundary import band_prior_loss


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("prior_loss", "Binomial", r"DripConfig.prior_loss = 'Binomial': expected one of 'binomial', 'band'"),
        ("band_width", -1.0, r"DripConfig.band_width = -1.0: expected a number in \[0, 1\)"),
        ("threshold", 3.0, r"DripConfig.threshold = 3.0: expected in \[0, 1\]"),
        ("threshold", (0.5, 0.5), r"expected one number or one per pooling stage \(1\)"),
        ("act", "relu", r"DripConfig.act = 'relu': expected one of 'gelu', 'quick_gelu'"),
        ("post_layout", "ragged", r"DripConfig.post_layout = 'ragged': expected one of 'padded', 'packed'"),
        ("temperature", 0.0, r"DripConfig.temperature = 0.0: expected a number > 0"),
        ("temperature_final", -1.0, r"DripConfig.temperature_final = -1.0: expected None or a number > 0"),
        ("prior_loss_weight", -0.5, r"DripConfig.prior_loss_weight = -0.5: expected a number >= 0"),
        ("embed_dim", -2, r"DripConfig.embed_dim = -2: expected an integer >= 0"),
        ("heads", 0, r"DripConfig.heads = 0: expected an integer >= 1"),
        ("predictor_hidden", 0, r"DripConfig.predictor_hidden = 0: expected an integer >= 1"),
        ("mlp_ratio", 0, r"DripConfig.mlp_ratio = 0: expected a number > 0"),
        ("ln_eps", "tiny", r"DripConfig.ln_eps = 'tiny': expected a number > 0"),
        ("stochastic_eval", "yes", r"DripConfig.stochastic_eval = 'yes': expected True or False"),
    ],
)
def test_bad_values_are_rejected_naming_field_and_allowed_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        DripConfig(**{field: value})


def test_s_drip_preset_is_a_band_of_40_to_60_percent():
    cfg = get_preset("S-DRIP-B-16")
    assert (cfg.prior_loss, cfg.prior, cfg.band_width) == ("band", (0.5,), pytest.approx(0.1))
    assert (cfg.prior[0] - cfg.band_width, cfg.prior[0] + cfg.band_width) == pytest.approx((0.4, 0.6))


def test_band_loss_is_zero_inside_the_band_and_linear_outside():
    valid = torch.ones(1, 100, dtype=torch.bool)

    def loss(rate: float) -> float:
        b = torch.zeros(1, 100)
        b[0, : round(rate * 100)] = 1
        return float(band_prior_loss(b, valid, 0.5, 0.1))

    assert loss(0.45) == loss(0.5) == loss(0.55) == 0.0 and loss(0.6) == pytest.approx(0.0, abs=1e-6)
    assert loss(0.3) == pytest.approx(0.1) and loss(0.8) == pytest.approx(0.2) and loss(0.0) == pytest.approx(0.4)
    # padding does not count: the same boundaries over half the positions are twice the rate
    half = torch.arange(100)[None] < 50
    b = torch.zeros(1, 100)
    b[0, :35] = 1
    assert float(band_prior_loss(b, half, 0.5, 0.1)) == pytest.approx(0.1)


def test_band_loss_moves_the_rate_into_the_band_and_then_stops():
    torch.manual_seed(0)
    tower = DripVisionTransformer(get_preset("DRIP-tiny", prior=(0.5,), prior_loss="band", band_width=0.1))
    with torch.no_grad():
        tower.predictors[0].fc2.bias.fill_(2.5)  # starts at ~90 % boundaries
    opt = torch.optim.Adam(tower.predictors.parameters(), lr=3e-2)
    x = torch.randn(8, 3, 64, 64)
    tower.train()
    assert float(tower(x).boundary_rate) > 0.8
    for _ in range(60):
        out = tower(x)
        opt.zero_grad()
        out.boundary_loss.backward()
        opt.step()
    rates = [float(tower(x).boundary_rate) for _ in range(5)]
    assert 0.35 <= sum(rates) / 5 <= 0.65, rates
