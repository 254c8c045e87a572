"""The LLaVA-side cost module (llava.model.flops): one home for the LLM's analytic multiply-adds, importable without
PyramidDrop's decoder; and the module-size rule for the llava package."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from transformers import LlamaConfig

from llava.model.config import PDropConfig
from llava.model.flops import decoder_layer_macs, llama_prefill_macs, rank_macs, staged_prefill_macs

REPO = Path(__file__).resolve().parents[2]
CONFIG = LlamaConfig(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    num_key_value_heads=2,
    vocab_size=300,
)


def test_counting_flops_does_not_import_pyramiddrop():
    # torch comes with ``import drip`` (the package of drip.cost, the shared block formula); the decoder never comes
    code = "import sys, llava.model.flops; print(sorted(m for m in sys.modules if 'pdrop' in m or 'transformers' in m))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "['llava.model.reduction.pdrop_schedule']"  # the keep rule only; no decoder
    code = "import sys, llava.eval.efficiency; print('llava.model.reduction.pdrop' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == "False"


def test_staged_prefill_follows_the_schedule():
    head = CONFIG.hidden_size * CONFIG.vocab_size
    assert staged_prefill_macs(CONFIG, 10, 40, None) == llama_prefill_macs(CONFIG, [50] * 4)
    # layers 0-1 see all 40 image tokens, 2 sees int(40 * 0.5), 3 sees int(40 * 0.25); each drop ranks its input
    layers = [decoder_layer_macs(CONFIG, n) for n in (50, 50, 30, 20)]
    ranks = [rank_macs(CONFIG, 50), rank_macs(CONFIG, 30)]
    assert staged_prefill_macs(CONFIG, 10, 40, PDropConfig((2, 3), (0.5, 0.25))) == sum(layers) + sum(ranks) + head
    assert staged_prefill_macs(CONFIG, 10, 0, PDropConfig((2, 3), (0.5, 0.25))) == llama_prefill_macs(CONFIG, [10] * 4)


def test_no_llava_module_over_400_lines():
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in (REPO / "llava").rglob("*.py")}
    long = {name: n for name, n in sizes.items() if n > 400}
    assert not long, f"modules over 400 lines: {long}"
