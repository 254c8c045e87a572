"""Nothing lost on a rerun: rerunning a killed run resumes from its latest checkpoint and
ends as the uninterrupted run does; ``--resume_from_checkpoint True`` means the latest; no run replaces checkpoints
it did not write unless told to start afresh; empty data and 0-step runs leave a trained model alone."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from llava.train.resume import CheckpointError, finished_run, latest_checkpoint, resume_point
from llava.train.train import train


class Killed(Exception):
    """Stands for SIGKILL: the run ends right after a checkpoint, without its final save."""


class KillAfterSave(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step >= self.step:
            raise Killed(state.global_step)


class StepLosses(TrainerCallback):
    """The losses this process logs (a resumed run's history also holds the steps loaded from its checkpoint)."""

    def __init__(self):
        self.losses: dict[int, float] = {}

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.losses[state.global_step] = logs["loss"]


def fake_checkpoint(out: Path, step: int, complete: bool = True) -> Path:
    path = out / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    return path


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_rerun_after_a_kill_resumes_to_the_uninterrupted_losses(tmp_path, run_args):
    full_log = StepLosses()
    full = train(run_args(tmp_path / "full", "--max_steps", "6"), callbacks=[full_log])
    cut = tmp_path / "cut"
    with pytest.raises(Killed):
        train(run_args(cut, "--max_steps", "6"), callbacks=[KillAfterSave(3)])
    assert (cut / "checkpoint-3").is_dir() and not (cut / "loss_curve.json").exists()
    rerun_log = StepLosses()
    rerun = train(run_args(cut, "--max_steps", "6"), callbacks=[rerun_log])  # the same command again
    assert sorted(rerun_log.losses) == [4, 5, 6], "the rerun started over instead of resuming at step 3"
    for step in (4, 5, 6):
        assert rerun_log.losses[step] == pytest.approx(full_log.losses[step], rel=1e-5, abs=1e-6), step
    torch.testing.assert_close(
        rerun.model.get_model().mm_projector[0].weight, full.model.get_model().mm_projector[0].weight
    )
    assert json.loads((cut / "loss_curve.json").read_text())["steps"] == 6
    assert [p.name for p in cut.glob("checkpoint-*")] == ["checkpoint-6"]  # its own run's older one rotated


def test_resume_rules(tmp_path):
    out = tmp_path / "run"
    assert resume_point(out, None, overwrite=False) is None  # nothing there: a fresh start
    with pytest.raises(CheckpointError, match="--resume_from_checkpoint True: no checkpoint"):
        resume_point(out, "True", overwrite=False)
    fake_checkpoint(out, 2), fake_checkpoint(out, 10), fake_checkpoint(out, 12, complete=False)
    latest = str(out / "checkpoint-10")  # by step, not by name; the incomplete checkpoint-12 is passed over
    assert latest_checkpoint(out) == Path(latest)
    assert resume_point(out, None, overwrite=False) == latest
    assert resume_point(out, "True", overwrite=False) == resume_point(out, True, overwrite=False) == latest
    assert resume_point(out, "False", overwrite=True) is None  # told to start afresh
    assert resume_point(out, str(out / "checkpoint-10"), overwrite=False) == latest
    with pytest.raises(CheckpointError, match="no such checkpoint folder"):
        resume_point(out, str(tmp_path / "nowhere"), overwrite=False)


@pytest.mark.parametrize("resume", ["False", "other-run", "earlier"])
def test_a_run_never_replaces_checkpoints_it_did_not_write(tmp_path, run_args, resume):
    out = tmp_path / "run"
    fake_checkpoint(out, 3), fake_checkpoint(out, 9)
    (out / "checkpoint-9" / "model.safetensors").write_bytes(b"weights of a run that trained 9 steps")
    other = str(fake_checkpoint(tmp_path / "other", 3))
    flag = {"False": "False", "other-run": other, "earlier": str(out / "checkpoint-3")}
    before = snapshot(out)
    with pytest.raises(CheckpointError, match="--overwrite_output_dir True"):
        train(run_args(out, "--max_steps", "3", "--resume_from_checkpoint", flag[resume]))
    assert snapshot(out) == before


def test_empty_data_is_an_error_before_anything_is_written(tmp_path, run_args):
    out = tmp_path / "run"
    out.mkdir()
    (out / "mm_projector.bin").write_bytes(b"a trained projector")
    (tmp_path / "empty.json").write_text("[]")
    with pytest.raises(ValueError, match="the list of records is empty"):
        train(run_args(out, "--max_steps", "3", "--overwrite_output_dir", "True", data=tmp_path / "empty.json"))
    assert snapshot(out) == {"mm_projector.bin": b"a trained projector"}


def test_a_run_of_zero_steps_saves_nothing(tmp_path, run_args):
    out = tmp_path / "run"
    out.mkdir()
    (out / "model.safetensors").write_bytes(b"a trained model")
    with pytest.raises(RuntimeError, match="training ran 0 steps, so nothing is saved"):
        train(run_args(out, "--num_train_epochs", "0", "--overwrite_output_dir", "True"))
    assert snapshot(out) == {"model.safetensors": b"a trained model"}


def test_rerunning_a_finished_run_does_nothing(tmp_path, run_args):
    """A finished run: a rerun resumed at the last step trained one step past --max_steps (checkpoint-5 for 4)."""
    out = tmp_path / "run"
    assert train(run_args(out, "--max_steps", "4")) is not None
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    before = snapshot(out)
    rerun = train(run_args(out, "--max_steps", "4"))  # finished: nothing trained, nothing written
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-4"]
    assert snapshot(out) == before and rerun is None
    (out / "loss_curve.json").unlink()  # as if killed after the last checkpoint, during the final save
    with pytest.raises(CheckpointError, match="end of this run .step 4 of --max_steps 4.*never saved"):
        train(run_args(out, "--max_steps", "4"))


def test_finished_run_rules(tmp_path):
    ckpt = fake_checkpoint(tmp_path, 9)
    (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": 9, "epoch": 1.5}))
    assert finished_run(ckpt, max_steps=9, num_train_epochs=3) == "step 9 of --max_steps 9"
    assert finished_run(ckpt, max_steps=12, num_train_epochs=3) is None  # more steps asked: train on
    assert finished_run(ckpt, max_steps=-1, num_train_epochs=1.5) == "epoch 1.5 of --num_train_epochs 1.5"
    assert finished_run(ckpt, max_steps=-1, num_train_epochs=2) is None


@pytest.mark.parametrize("final", ["model.safetensors", "mm_projector.bin", "adapter_model.safetensors"])
def test_a_fresh_run_never_replaces_another_runs_final_model(tmp_path, run_args, final):
    """Another run's final model: a folder holding a final model and no checkpoint was silently written over."""
    out = tmp_path / "run"
    out.mkdir()
    (out / final).write_bytes(b"the final model of another run")
    other = str(fake_checkpoint(tmp_path / "other", 3))
    for flag in ([], ["--resume_from_checkpoint", "False"], ["--resume_from_checkpoint", other]):
        with pytest.raises(CheckpointError, match=rf"holds the final model of another run \({final}\).*--overwrite"):
            train(run_args(out, "--max_steps", "3", *flag))
    assert snapshot(out) == {final: b"the final model of another run"}
    assert resume_point(out, None, overwrite=True) is None  # told to replace it
