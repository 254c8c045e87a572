"""Where a training run starts: resuming by rerunning the same command, and which checkpoints may be loaded.

Resume (LLaVA's behaviour: its ``train.py`` resumes whenever ``checkpoint-*`` exists in ``output_dir``):

* no ``--resume_from_checkpoint``: the latest complete ``checkpoint-<step>`` in ``output_dir`` if there is one
  (complete = its ``trainer_state.json``, which HF Trainer writes after the weights, exists; an incomplete latest
  one, from a kill during a save, is passed over with a warning), else a fresh start;
* ``--resume_from_checkpoint True``: the same latest checkpoint, and an error when there is none;
* ``--resume_from_checkpoint PATH``: that checkpoint;
* ``--resume_from_checkpoint False``: a fresh start, refused while ``output_dir`` holds checkpoints;
* ``--overwrite_output_dir True``: start afresh (unless a PATH is given); the earlier run's checkpoints may then be
  replaced or rotated away by ``--save_total_limit``.

A run never replaces or rotates away a checkpoint that is not its own unless told to start afresh: resuming
continues the run that wrote the checkpoint (its older checkpoints are that run's, rotated as usual), and resuming
from a PATH while ``output_dir`` holds checkpoints of another run, or later ones, is refused. Nor does it replace
another run's final model (``FINAL_OUTPUTS``): a fresh start, or a resume from elsewhere, into a folder holding one
is refused unless ``--overwrite_output_dir True``. A finished run (its latest checkpoint at ``--max_steps``, or at
``--num_train_epochs``) is not trained on when rerun: with its final model saved the rerun does nothing.

Trust: DeepSpeed loads its ``global_step*/*.pt`` files with ``torch.load(weights_only=False)``, which runs any code
pickled into them. Before a checkpoint is handed to the Trainer, every pickle in it must load with
``torch.load(weights_only=True)``, allowing only the DeepSpeed and torch types real checkpoints hold
(``torch.serialization.safe_globals``, so nothing stays registered); otherwise the run stops naming the file, unless
``--trust_checkpoint True`` says the checkpoint is the user's own. DeepSpeed reads its states from
``<checkpoint>/<tag>/``, the tag read from the checkpoint's ``latest`` (``latest_universal``) file, and follows links:
a tag or a link that leads outside the checkpoint folder is refused, so every file it can load is one that was checked.
"""

from __future__ import annotations

import json
import logging
import os
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

logger = logging.getLogger(__name__)

CHECKPOINT_DIR = re.compile(r"^checkpoint-(\d+)$")
STATE_FILE = "trainer_state.json"  # written by HF Trainer after the model, optimizer and RNG states
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".pkl", ".ckpt")
NOT_LOADED = ("training_args.bin",)  # a pickled TrainingArguments: written by HF Trainer, read by nobody on resume
FINAL_OUTPUTS = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
    "mm_projector.bin",
    "adapter_model.safetensors",
    "adapter_model.bin",
    "non_lora_trainables.bin",
    "loss_curve.json",
)  # what llava.train.train saves when a run ends
LAST_OUTPUT = "loss_curve.json"  # written after the model: the final save is complete
TAG_FILES = ("latest", "latest_universal")  # DeepSpeed loads the states of the tag (a folder name) written in these


class CheckpointError(ValueError):
    """A resume that would lose or overwrite work, or a checkpoint that is not there."""


class UntrustedCheckpoint(RuntimeError):
    """A checkpoint pickle that does not load with ``torch.load(weights_only=True)`` and the allowed types."""


def checkpoints(output_dir: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every ``checkpoint-<step>`` folder in ``output_dir``, by step."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_DIR.match(p.name))]
    return sorted(found)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step (incomplete later ones are passed over with a warning)."""
    for _, path in reversed(checkpoints(output_dir)):
        if (path / STATE_FILE).is_file():
            return path
        logger.warning("%s has no %s (killed while saving?): passed over", path, STATE_FILE)
    return None


def _names(paths: list[Path]) -> str:
    return ", ".join(p.name for p in paths)


def _explicit(path: Path, output_dir: Path, overwrite: bool) -> Path:
    if not path.is_dir():
        raise CheckpointError(f"--resume_from_checkpoint {path}: no such checkpoint folder")
    match = CHECKPOINT_DIR.match(path.name)
    same_run = path.resolve().parent == output_dir.resolve() and match is not None
    later = [  # complete checkpoints that are not this checkpoint's past (an incomplete one is a kill's leftover)
        p
        for step, p in checkpoints(output_dir)
        if (p / STATE_FILE).is_file() and not (same_run and step <= int(match.group(1)))
    ]
    if later and not overwrite:
        raise CheckpointError(
            f"--resume_from_checkpoint {path}: {output_dir} holds {_names(later)}, not from this run's past; saving "
            "would overwrite or rotate them away. Pass --overwrite_output_dir True to allow it, or use another "
            "--output_dir"
        )
    if not same_run and not overwrite:
        _refuse_replacing_final_model(output_dir, f"resuming from {path}")
    return path


def final_outputs(output_dir: Path) -> list[str]:
    """The names of ``FINAL_OUTPUTS`` present in ``output_dir``."""
    return [name for name in FINAL_OUTPUTS if (output_dir / name).exists()]


def _refuse_replacing_final_model(output_dir: Path, what: str) -> None:
    found = final_outputs(output_dir)
    if found:
        raise CheckpointError(
            f"{output_dir} holds the final model of another run ({', '.join(found)}) and no checkpoint of it to "
            f"resume; {what} would replace it. Pass --overwrite_output_dir True to replace it, or use another "
            "--output_dir"
        )


def finished_run(checkpoint: str | Path, max_steps: int, num_train_epochs: float) -> str | None:
    """Why the run is already finished at ``checkpoint`` (e.g. "step 9 of --max_steps 9"), or None when it is not.

    HF Trainer resumed at the last step still trains one step more before it checks ``max_steps``; a finished run
    must not be resumed at all. ``max_steps > 0`` decides as in HF; else the epochs the checkpoint reached.
    """
    state_file = Path(checkpoint) / STATE_FILE
    try:
        state = json.loads(state_file.read_text(encoding="utf-8"))
        step, epoch = int(state["global_step"]), float(state.get("epoch") or 0.0)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{state_file}: unreadable trainer state ({err})") from None
    if max_steps > 0:
        return f"step {step} of --max_steps {max_steps}" if step >= max_steps else None
    if epoch >= num_train_epochs - 1e-6:
        return f"epoch {epoch:g} of --num_train_epochs {num_train_epochs:g}"
    return None


def resume_point(output_dir: str | Path, resume_from_checkpoint: str | bool | None, overwrite: bool) -> str | None:
    """The checkpoint folder to resume from, or None for a fresh start (rules in the module docstring).

    Raises CheckpointError when the choice would lose work or names nothing.
    """
    out = Path(output_dir)
    value = str(resume_from_checkpoint).strip() if resume_from_checkpoint not in (None, "") else ""
    if value and value.lower() not in ("true", "false", "none"):
        return str(_explicit(Path(value), out, overwrite))
    if overwrite:
        if checkpoints(out) or final_outputs(out):
            replaced = [*(p.name for p in _paths(out)), *final_outputs(out)]
            logger.warning("--overwrite_output_dir: starting afresh; %s may be replaced", ", ".join(replaced))
        return None
    if value.lower() == "false" and checkpoints(out):
        raise CheckpointError(
            f"--resume_from_checkpoint False, but {out} holds {_names(_paths(out))}: a fresh start would replace "
            "them. Pass --overwrite_output_dir True to start afresh, or drop the flag to resume"
        )
    if not checkpoints(out):
        _refuse_replacing_final_model(out, "a fresh start")
    latest = latest_checkpoint(out)
    if latest is None and checkpoints(out):
        raise CheckpointError(
            f"{out}: no complete checkpoint among {_names(_paths(out))}; --overwrite_output_dir True starts afresh"
        )
    if latest is None and value.lower() == "true":
        raise CheckpointError(f"--resume_from_checkpoint True: no checkpoint-* folder in {out}")
    if latest is not None:
        logger.info("resuming from %s (the latest checkpoint in --output_dir)", latest)
    return None if latest is None else str(latest)


def _paths(output_dir: Path) -> list[Path]:
    return [p for _, p in checkpoints(output_dir)]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def _refuse_links_out(root: Path) -> None:
    """Every link in the checkpoint must lead inside it: DeepSpeed follows links that a walk of the folder skips."""
    real_root = root.resolve()
    for folder, dirs, files in os.walk(root):  # links to folders are listed, not entered
        for name in (*dirs, *files):
            path = Path(folder, name)
            if path.is_symlink() and not _inside(path.resolve(), real_root):
                raise UntrustedCheckpoint(
                    f"{path}: a link to {path.resolve()}, outside the checkpoint {root}. Files there were not checked "
                    "and would be loaded as code-carrying pickles; copy them into the checkpoint instead"
                )


def _refuse_tags_out(root: Path) -> None:
    """The tag in ``latest`` names the folder DeepSpeed loads from (``<checkpoint>/<tag>/*.pt``): it must lie inside."""
    real_root = root.resolve()
    for name in TAG_FILES:
        tag_file = root / name
        if not tag_file.is_file():
            continue
        tag = tag_file.read_text(encoding="utf-8", errors="replace").strip()
        target = (root / tag).resolve()
        if not _inside(target, real_root):
            raise UntrustedCheckpoint(
                f"{tag_file}: the DeepSpeed tag {tag!r} leads to {target}, outside the checkpoint {root}; DeepSpeed "
                "would load unchecked pickles from there. A tag is a folder name inside the checkpoint (global_stepN)"
            )


def checkpoint_pickles(checkpoint: str | Path) -> list[Path]:
    """Every file in the checkpoint that ``torch.load`` may be asked to read (HF's and DeepSpeed's states).

    Raises UntrustedCheckpoint when a link, or the DeepSpeed tag in ``latest``, leads outside the checkpoint: the
    files listed (every regular file in the folder, links not followed) are then all that can be loaded.
    """
    root = Path(checkpoint)
    _refuse_links_out(root)
    _refuse_tags_out(root)
    found = [Path(folder, name) for folder, _, files in os.walk(root) for name in files]
    files = (p for p in sorted(found) if not p.is_symlink() and p.suffix in PICKLE_SUFFIXES)
    return [p for p in files if p.name not in NOT_LOADED]


def _numpy_types() -> list:
    """What HF Trainer's ``rng_state*.pth`` holds beside tensors: numpy's RNG state, an array of uint32."""
    multiarray = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    reconstruct = multiarray._reconstruct
    # Files written under numpy 1.x name the function by its old module path; the same function either way.
    return [
        reconstruct,
        (reconstruct, "numpy.core.multiarray._reconstruct"),
        np.ndarray,
        np.dtype,
        type(np.dtype(np.uint32)),
    ]


def allowed_checkpoint_types() -> list:
    """The non-tensor types that real HF Trainer and DeepSpeed (ZeRO 1-3) checkpoints pickle, beside torch's own."""
    import argparse

    allowed: list = [argparse.Namespace, *_numpy_types()]
    try:
        from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
        from deepspeed.runtime.zero.config import ZeroStageEnum
        from deepspeed.utils.tensor_fragment import fragment_address
    except ImportError:  # no DeepSpeed: its checkpoints then cannot be resumed anyway
        return allowed
    return [*allowed, ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


def verify_checkpoint(checkpoint: str | Path, trust: bool = False) -> None:
    """Refuse (UntrustedCheckpoint, naming the file) a checkpoint with a pickle that is not weights only.

    ``trust``: the user vouches for the checkpoint (``--trust_checkpoint True``); it is then not inspected.
    """
    if trust:
        logger.warning("--trust_checkpoint: %s is loaded without checking its pickles", checkpoint)
        return
    allowed = allowed_checkpoint_types()
    for path in checkpoint_pickles(checkpoint):
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(path, map_location="cpu", weights_only=True, mmap=zipfile.is_zipfile(path))
        except Exception as err:  # noqa: BLE001 - whatever stops a weights-only load stops the resume
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise UntrustedCheckpoint(
                f"{path}: does not load with torch.load(weights_only=True) ({reason}). Loading it as DeepSpeed does "
                "could run code hidden in it. Resume only from checkpoints you made, with --trust_checkpoint True"
            ) from None
