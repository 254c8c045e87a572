"""Nothing executed from a checkpoint: before a checkpoint reaches the Trainer (and DeepSpeed, which
unpickles its ``global_step*/*.pt`` files with ``weights_only=False``), every pickle in it must load weights-only.
The crafted payload here makes a folder when unpickled; it must never run unless the user says they trust it."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerState

from llava.train.resume import UntrustedCheckpoint, checkpoint_pickles, verify_checkpoint
from llava.train.train import train

ROOT = Path(__file__).resolve().parents[3]


class Payload:
    """Unpickling this calls ``os.mkdir(marker)``: harmless, and visible."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def crafted_checkpoint(out: Path, marker: Path, step: int = 3) -> Path:
    """A checkpoint laid out as HF Trainer + DeepSpeed write it, with the payload in DeepSpeed's model states."""
    ckpt = out / f"checkpoint-{step}"
    states = ckpt / f"global_step{step}"
    states.mkdir(parents=True)
    (ckpt / "latest").write_text(f"global_step{step}")
    TrainerState(global_step=step, train_batch_size=4, logging_steps=1, save_steps=step).save_to_json(
        str(ckpt / "trainer_state.json")
    )  # a real state, so that the Trainer goes on to hand the folder to DeepSpeed
    torch.save({"step": step, "weight": torch.zeros(2)}, ckpt / "rng_state.pth")
    torch.save({"module": {"w": torch.ones(2)}, "client_state": Payload(marker)}, states / "mp_rank_00_model_states.pt")
    return ckpt


def test_payload_is_refused_naming_the_file_and_never_runs(tmp_path):
    marker = tmp_path / "payload-ran"
    ckpt = crafted_checkpoint(tmp_path / "run", marker)
    before = set(map(repr, torch.serialization.get_safe_globals()))
    with pytest.raises(UntrustedCheckpoint, match=r"global_step3/mp_rank_00_model_states\.pt.*--trust_checkpoint True"):
        verify_checkpoint(ckpt)
    assert not marker.exists()
    assert set(map(repr, torch.serialization.get_safe_globals())) == before  # the allow-list was scoped to the check
    verify_checkpoint(ckpt, trust=True)  # the user vouches for it: not inspected (and so not run here either)
    assert not marker.exists()
    # The payload is real: the loading DeepSpeed does (weights_only=False) runs it.
    torch.load(ckpt / "global_step3" / "mp_rank_00_model_states.pt", weights_only=False)
    assert marker.is_dir()


def test_every_loadable_file_is_checked_but_training_args(tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "run", tmp_path / "m")
    (ckpt / "training_args.bin").write_bytes(b"pickled TrainingArguments, read by nobody on resume")
    (ckpt / "model.safetensors").write_bytes(b"not a pickle")
    names = [p.relative_to(ckpt).as_posix() for p in checkpoint_pickles(ckpt)]
    assert names == ["global_step3/mp_rank_00_model_states.pt", "rng_state.pth"]


def outside_payload(out: Path, marker: Path, how: str) -> Path:
    """A clean checkpoint whose DeepSpeed states live outside it: (a) ``latest`` names a tag that climbs out of the
    folder, (b) the tag folder is a link to an outside folder (a walk of the checkpoint does not enter it)."""
    ckpt = crafted_checkpoint(out, out.parent / "unused-marker")
    shutil.rmtree(ckpt / "global_step3")
    evil = out.parent / "evil" / "global_step3"
    evil.mkdir(parents=True)
    torch.save({"module": {}, "client_state": Payload(marker)}, evil / "mp_rank_00_model_states.pt")
    if how == "tag":
        (ckpt / "latest").write_text(os.path.relpath(evil, ckpt))  # two folders up, then evil/global_step3
    else:
        (ckpt / "global_step3").symlink_to(evil, target_is_directory=True)
    return ckpt


def deepspeed_reads(ckpt: Path) -> Path:
    """The states file DeepSpeed's ``load_checkpoint(ckpt)`` opens: ``<ckpt>/<tag from latest>/mp_rank_00_...``."""
    return Path(os.path.join(ckpt, (ckpt / "latest").read_text().strip(), "mp_rank_00_model_states.pt"))


@pytest.mark.parametrize("how", ["tag", "link"])
def test_states_outside_the_checkpoint_are_refused(tmp_path, how):
    marker = tmp_path / "payload-ran"
    ckpt = outside_payload(tmp_path / "run", marker, how)
    expected = (
        r"latest: the DeepSpeed tag '\.\./\.\./evil/global_step3' leads to"
        if how == "tag"
        else "global_step3: a link to"
    )
    with pytest.raises(UntrustedCheckpoint, match=expected):
        verify_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(deepspeed_reads(ckpt), weights_only=False)  # the payload is real and where DeepSpeed looks
    assert marker.is_dir()


def test_links_and_tags_inside_the_checkpoint_pass(tmp_path):
    ckpt = crafted_checkpoint(tmp_path / "run", tmp_path / "m")
    torch.save({"module": {"w": torch.ones(2)}}, ckpt / "global_step3" / "mp_rank_00_model_states.pt")
    (ckpt / "global_step3" / "again").symlink_to(ckpt / "global_step3", target_is_directory=True)
    (ckpt / "latest").write_text(os.path.join("global_step3", "again", os.pardir, "global_step3") + "\n")
    verify_checkpoint(ckpt)  # nothing leaves the folder: every file DeepSpeed can reach was checked
    (ckpt / "global_step3" / "mp_rank_00_model_states.pt").unlink()
    (ckpt / "global_step3" / "mp_rank_00_model_states.pt").symlink_to(tmp_path / "m.pt")
    with pytest.raises(UntrustedCheckpoint, match="mp_rank_00_model_states.pt: a link to"):
        verify_checkpoint(ckpt)  # a single linked file out is refused too


@pytest.mark.parametrize("how", ["tag", "link"])
def test_rerun_refuses_states_outside_the_checkpoint(tmp_path, run_args, how):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    outside_payload(out, marker, how)
    with pytest.raises(UntrustedCheckpoint, match="outside the checkpoint"):
        train(run_args(out, "--max_steps", "3"))
    assert not marker.exists()


def test_rerun_refuses_a_crafted_checkpoint_before_loading_anything(tmp_path, run_args):
    out, marker = tmp_path / "run", tmp_path / "payload-ran"
    crafted_checkpoint(out, marker)
    with pytest.raises(UntrustedCheckpoint, match="mp_rank_00_model_states.pt"):
        train(run_args(out, "--max_steps", "3"))  # a rerun resumes from the latest checkpoint: this one
    assert not marker.exists()
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]  # nothing written, nothing rotated away


def deepspeed_run(argv: list[str]) -> subprocess.CompletedProcess:
    """``python -m llava.train.train ARGV --deepspeed scripts/zero2.json`` as one DeepSpeed rank on the CPU."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(
        os.environ,
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK="0",
        LOCAL_RANK="0",
        WORLD_SIZE="1",
        DS_ACCELERATOR="cpu",
        TORCH_EXTENSIONS_DIR=str(ROOT / ".cache" / "torch_extensions"),
    )
    env.pop("ACCELERATE_USE_CPU", None)  # it would silently drop the DeepSpeed config
    cmd = [sys.executable, "-m", "llava.train.train", *argv, "--deepspeed", "scripts/zero2.json"]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=1500)


@pytest.mark.slow
def test_deepspeed_checkpoints_pass_and_a_crafted_one_never_reaches_deepspeed(tmp_path, run_args):
    """A real ZeRO-2 checkpoint passes the check and resumes by rerun; a crafted one given by path is refused."""
    out = tmp_path / "zero2"
    first = deepspeed_run(run_args(out, "--max_steps", "3"))
    assert first.returncode == 0, first.stderr[-3000:]
    assert (out / "checkpoint-3" / "global_step3" / "mp_rank_00_model_states.pt").is_file()
    verify_checkpoint(out / "checkpoint-3")  # DeepSpeed's own types (loss scaler, ZeRO enums) are allowed
    rerun = deepspeed_run(run_args(out, "--max_steps", "4"))  # resumes at step 3 through DeepSpeed's loader
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming from" in rerun.stderr and json.loads((out / "loss_curve.json").read_text())["steps"] == 4
    marker = tmp_path / "payload-ran"
    crafted = crafted_checkpoint(tmp_path / "elsewhere", marker)
    refused = deepspeed_run(run_args(tmp_path / "fresh", "--max_steps", "4", "--resume_from_checkpoint", str(crafted)))
    assert refused.returncode != 0 and "UntrustedCheckpoint" in refused.stderr, refused.stderr[-3000:]
    assert not marker.exists(), "DeepSpeed ran the code pickled into the checkpoint"
