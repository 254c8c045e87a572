"""Checkpoints of ``python -m drip.tools.train``: open_clip_train's file format (``epoch_N.pt``, ``epoch_latest.pt``)
plus every rank's RNG states, so that ``--resume latest`` continues exactly; a latest file a kill cut short falls back
to the next older one."""

from __future__ import annotations

import argparse
import logging
import os
from typing import Any

import torch
from torch import nn

from drip.file_io import RefusedPickle, load_torch_weights, writing


def latest_checkpoints(args: argparse.Namespace) -> list[str] | None:
    """Newest first: epoch_latest.pt (with --save-most-recent, as open_clip_train), then epoch_N.pt by falling N;
    None if there is none. The later entries are the fallbacks ``resume_run`` tries when a file does not load."""
    epochs = [f[6:-3] for f in os.listdir(args.checkpoint_path) if f.startswith("epoch_") and f.endswith(".pt")]
    numbered = sorted((int(e) for e in epochs if e.isdigit()), reverse=True)
    found = [os.path.join(args.checkpoint_path, f"epoch_{n}.pt") for n in numbered]
    latest = os.path.join(args.checkpoint_path, "epoch_latest.pt")
    if args.save_most_recent and os.path.exists(latest):
        found.insert(0, latest)
    return found or None


def load_resume_checkpoint(args: argparse.Namespace) -> dict[str, Any]:
    """Load args.resume (a local file weights-only through ``drip.file_io``, a remote one with open_clip_train's
    pt_load); under --resume latest a file that does not load (a save cut short by a kill) is skipped with a warning
    for the next older one (``args.resume_fallbacks``). A file refused for safety stops the run, naming it."""
    from open_clip_train.file_utils import pt_load

    candidates = [args.resume, *getattr(args, "resume_fallbacks", [])]
    for i, path in enumerate(candidates):
        try:
            ckpt = load_torch_weights(path) if os.path.exists(path) else pt_load(path, map_location="cpu")
        except RefusedPickle as e:
            raise SystemExit(f"cannot resume: {e}") from None
        except (ValueError, RuntimeError, EOFError) as e:  # a truncated file (torch's zip reader: RuntimeError)
            if i + 1 == len(candidates):
                raise SystemExit(f"cannot resume: checkpoint {path} does not load ({e})") from e
            logging.warning("checkpoint %s does not load (%s); resuming from %s", path, e, candidates[i + 1])
            continue
        args.resume = path
        return ckpt
    raise AssertionError("unreachable")


def resume_run(args: argparse.Namespace, model: nn.Module, optimizer, scaler) -> tuple[int, dict | None]:
    """Load an open_clip_train checkpoint (same format as its main, plus our RNG states); returns the epoch to
    start from and this rank's saved RNG state (None when the checkpoint has none for this world size)."""
    if args.resume is None:
        return 0, None
    ckpt = load_resume_checkpoint(args)
    if "epoch" not in ckpt:  # a bare state dict: fine-tune from it
        model.load_state_dict(ckpt)
        return 0, None
    sd = ckpt["state_dict"]
    if not args.distributed and next(iter(sd)).startswith("module"):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    model.load_state_dict(sd)
    if optimizer is not None:
        optimizer.load_state_dict(ckpt["optimizer"])
    if scaler is not None and "scaler" in ckpt:
        scaler.load_state_dict(ckpt["scaler"])
    logging.info("resuming %s (epoch %d)", args.resume, ckpt["epoch"])
    rng = ckpt.get("drip_rng_states")
    if rng is None or len(rng) != args.world_size:
        logging.warning(
            "%s holds no RNG states for %d rank(s): the resumed run draws other random numbers "
            "(noise, data order) than an uninterrupted one would",
            args.resume,
            args.world_size,
        )
        return int(ckpt["epoch"]), None
    return int(ckpt["epoch"]), rng[args.rank]


def save_checkpoint(args: argparse.Namespace, model: nn.Module, optimizer, scaler, completed: int, rng: list) -> None:
    """open_clip_train's checkpoint files: epoch_N.pt (and epoch_latest.pt with --save-most-recent), plus every
    rank's RNG states (``drip_rng_states``, a list by rank) so that ``--resume latest`` continues exactly."""
    ckpt = {
        "epoch": completed,
        "name": args.name,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "drip_rng_states": rng,
    }
    if scaler is not None:
        ckpt["scaler"] = scaler.state_dict()
    if completed == args.epochs or (args.save_frequency > 0 and completed % args.save_frequency == 0):
        path = os.path.join(args.checkpoint_path, f"epoch_{completed}.pt")
        with writing(path):
            torch.save(ckpt, path)
    previous = os.path.join(args.checkpoint_path, f"epoch_{completed - 1}.pt")
    if args.delete_previous_checkpoint and os.path.exists(previous):
        os.remove(previous)
    if args.save_most_recent:
        tmp = os.path.join(args.checkpoint_path, "tmp.pt")
        with writing(tmp):
            torch.save(ckpt, tmp)
        os.replace(tmp, os.path.join(args.checkpoint_path, "epoch_latest.pt"))
