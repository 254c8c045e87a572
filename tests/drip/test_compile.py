"""``tower.compile_blocks()``: the runs of blocks between pooling stages are compiled with dynamic shapes, so batches
with new per-image token counts reuse the graphs (the count read and the packed layout stay eager), and the compiled
tower gives the eager tower's outputs, hidden states included."""

import copy

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from drip import DripVisionTransformer, get_preset


def _towers(name: str, layout: str):
    torch.manual_seed(0)
    eager = DripVisionTransformer(get_preset(name, post_layout=layout)).eval()
    with torch.no_grad():
        for p in eager.predictors:  # varied counts per image, as a trained predictor gives
            p.fc2.weight.normal_(std=1.0)
    compiled = copy.deepcopy(eager)
    compiled.compile_blocks(backend="eager")  # dynamo's graph capture decides graphs and recompiles
    return eager, compiled


@pytest.mark.parametrize("layout", ["packed", "padded"])
@pytest.mark.parametrize("name", ["DRIP-tiny", "H-DRIP-tiny"])
def test_new_token_counts_reuse_the_graphs(name, layout):
    torch._dynamo.reset()
    counters.clear()
    eager, compiled = _towers(name, layout)
    cfg, seen, compiles = eager.cfg, set(), []
    for k in range(5):
        x = torch.randn(4, 3, cfg.image_size, cfg.image_size, generator=torch.Generator().manual_seed(k))
        with torch.no_grad():
            ref, got = eager(x, output_hidden_states=k % 2 == 1), compiled(x, output_hidden_states=k % 2 == 1)
        assert torch.equal(ref.token_counts, got.token_counts)
        torch.testing.assert_close(got.image_embeds, ref.image_embeds, rtol=1e-5, atol=1e-5)
        if ref.hidden_states is not None:
            for a, b in zip(ref.hidden_states, got.hidden_states, strict=True):
                torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
        seen.add(tuple(ref.token_counts.tolist()))
        compiles.append(counters["frames"]["total"])
    assert len(seen) >= 4, "the batches must differ in their token counts"
    assert compiles[2] == compiles[-1], (
        f"frame compiles after each batch: {compiles}"
    )  # no recompile after the first two
    runs = len(cfg.pool_at) + 1  # runs of blocks, each with and without recorded hidden states
    assert counters["stats"]["unique_graphs"] <= 2 * runs, counters["stats"]
    assert sum(counters["graph_break"].values()) == 0, dict(counters["graph_break"])
