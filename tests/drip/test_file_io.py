"""drip.file_io: refused pickles, truncated files and failed writes are reported with the file's name (and never with
torch's advice to load with weights_only=False), through the loaders drip and llava use."""

from __future__ import annotations

import errno
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from drip.checkpoint import read_state_dict
from drip.file_io import RefusedPickle, load_torch_weights, writing

ROOT = Path(__file__).resolve().parents[2]


class Payload:
    """Stands for any object a crafted pickle would build (unpickling it runs code)."""


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def test_a_pickle_with_objects_is_refused_naming_the_file_without_the_unsafe_advice(tmp_path):
    torch.save({"weight": torch.ones(2), "x": Payload()}, tmp_path / "evil.bin")
    with pytest.raises(RefusedPickle) as caught:
        load_torch_weights(tmp_path / "evil.bin")
    message = str(caught.value)
    assert message.startswith(f"{tmp_path / 'evil.bin'}: refused for safety") and "Payload" in message
    assert "weights_only=False" not in message and "will likely succeed" not in message
    with pytest.raises(RefusedPickle, match="evil.bin: refused for safety"):  # drip's checkpoint reader
        read_state_dict(tmp_path / "evil.bin")


def test_truncated_files_are_named(tmp_path):
    torch.save({"weight": torch.ones(100)}, tmp_path / "w.pt")
    with pytest.raises(ValueError, match=r"w\.pt: not a readable torch file, truncated or corrupt"):
        read_state_dict(_truncate(tmp_path / "w.pt"))
    save_file({"weight": torch.ones(100)}, str(tmp_path / "w.safetensors"))
    with pytest.raises(ValueError, match=r"w\.safetensors: not a readable safetensors file, truncated or corrupt"):
        read_state_dict(_truncate(tmp_path / "w.safetensors"))


def test_a_failed_write_names_the_file_and_the_full_disk(tmp_path):
    torch_disk_full = RuntimeError(
        "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file data/0: file write failed"
    )
    with pytest.raises(OSError, match=r"x\.pt: could not be written: is the disk full.*file write failed"):
        with writing(tmp_path / "x.pt"):
            raise torch_disk_full
    with pytest.raises(OSError, match=r"x\.pt: could not be written: the disk is full") as caught:
        with writing(tmp_path / "x.pt"):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert caught.value.errno == errno.ENOSPC


def test_saves_of_llava_and_drip_go_through_writing(tmp_path, monkeypatch):
    from llava.train.checkpointing import save_mm_projector

    def disk_full(*args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file")

    model = torch.nn.Module()
    model.mm_projector = torch.nn.Linear(2, 2)
    model.config = type("Config", (), {"mm_use_im_start_end": False})()
    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match=r"mm_projector\.bin: could not be written"):
        save_mm_projector(model, str(tmp_path))


ALLOWED = {"drip/file_io.py", "llava/train/resume.py"}  # resume.py reads DeepSpeed's pickles to vet them first


def places_that_torch_load_themselves(root: Path) -> list[str]:
    found = []
    for folder in ("drip", "llava", "eval", "llava_drip_demo", "benchmarks"):
        for path in sorted((root / folder).rglob("*.py")):
            rel = path.relative_to(root).as_posix()
            for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
                if rel not in ALLOWED and re.search(r"(?<![`\w.])torch\.load\(", line):
                    found.append(f"{rel}:{n}")
    return found


def test_every_weight_file_is_read_through_drip_file_io(tmp_path):
    assert places_that_torch_load_themselves(ROOT) == []
    (tmp_path / "llava").mkdir()
    (tmp_path / "llava" / "x.py").write_text("sd = torch.load(path, weights_only=True)\n")
    assert places_that_torch_load_themselves(tmp_path) == ["llava/x.py:1"]


def test_a_safetensors_write_on_a_full_disk_is_named(tmp_path):
    from safetensors import SafetensorError

    full = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space" })')
    with pytest.raises(OSError, match=r"model\.safetensors: could not be written: the disk is full") as caught:
        with writing(tmp_path / "model.safetensors"):
            raise full
    assert caught.value.errno == errno.ENOSPC


def test_the_final_training_save_names_the_folder_on_a_full_disk(tmp_path):
    from types import SimpleNamespace

    from llava.train.train import save_outputs

    def disk_full(out):
        raise OSError(errno.ENOSPC, "No space left on device")

    trainer = SimpleNamespace(state=SimpleNamespace(global_step=3, log_history=[]), save_model=disk_full)
    args = SimpleNamespace(output_dir=str(tmp_path / "run"), lora_enable=False)
    with pytest.raises(OSError, match=r"run: could not be written: the disk is full"):
        save_outputs(trainer, None, SimpleNamespace(tune_mm_mlp_adapter=False), args)


def test_a_training_checkpoint_save_on_a_full_disk_names_its_folder(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from transformers import Trainer

    from llava.train.trainer import LLaVATrainer

    def disk_full(self, model, trial):
        raise RuntimeError(
            "[enforce fail at inline_container.cc:672] . PytorchStreamWriter failed writing file "
            "data/3: file write failed"
        )

    monkeypatch.setattr(Trainer, "_save_checkpoint", disk_full)
    trainer = object.__new__(LLaVATrainer)  # only what _save_checkpoint reads
    trainer.args, trainer.state = SimpleNamespace(output_dir=str(tmp_path)), SimpleNamespace(global_step=5)
    trainer.tune_mm_mlp_adapter = False
    with pytest.raises(OSError, match=r"checkpoint-5: could not be written: is the disk full"):
        trainer._save_checkpoint(None, None)
