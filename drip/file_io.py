"""Weight files read safely and written with errors that name the file: one helper per concern, for drip and llava.

* ``load_torch_weights``: ``torch.load(weights_only=True)``. A file holding other Python objects is refused with a
  message naming it that says why (unpickling them would run code from the file); torch's own message suggests
  ``weights_only=False``, the unsafe way out, and names no file. A truncated or corrupt file is named too.
* ``load_safetensors``: a truncated or corrupt ``.safetensors`` file named (safetensors' error names none).
* ``writing``: around a write (``torch.save``, safetensors' ``save_file``): a failure (a full disk: torch says only
  ``enforce fail at inline_container.cc ... file write failed``) becomes an OSError naming the file, the free space
  and the cause.
* ``unwritable``: why a path cannot be written, so that a run can refuse it before it loads a model.
"""

from __future__ import annotations

import contextlib
import errno
import os
import pickle
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch


class RefusedPickle(ValueError):
    """A torch file that holds more than weights (``torch.load(weights_only=True)`` refused it)."""


def load_torch_weights(path: str | os.PathLike[str], **kwargs: Any) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True, **kwargs)`` with errors that name ``path``.

    Raises:
        FileNotFoundError: no such file. RefusedPickle: the file holds Python objects beyond tensors and plain
            containers. ValueError: a truncated or corrupt file.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True, **kwargs)
    except pickle.UnpicklingError as err:
        found = re.search(r"WeightsUnpickler error: ([^\n]*?)(?: was not an allowed global.*)?$", str(err), re.M)
        reason = found.group(1).strip() if found else "not a weights-only pickle"
        raise RefusedPickle(
            f"{path}: refused for safety: it holds Python objects other than tensors and plain containers, and "
            f"loading those would run code stored in the file ({reason}). Only weight files are read; re-save "
            "the weights alone (a state dict) from a source you trust"
        ) from None
    except (RuntimeError, EOFError, OSError) as err:  # torch's zip reader: "failed finding central directory"
        raise ValueError(f"{path}: not a readable torch file, truncated or corrupt ({err})") from None


def load_safetensors(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """``safetensors.torch.load_file(path)`` on the CPU; a truncated or corrupt file -> ValueError naming it."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path}: not a readable safetensors file, truncated or corrupt ({err})") from None


@contextlib.contextmanager
def writing(path: str | os.PathLike[str]) -> Iterator[None]:
    """Run the write of ``path`` inside; a failure -> OSError naming the file, its folder's free space and the cause
    (ENOSPC when the disk is full)."""
    from safetensors import SafetensorError  # safetensors' own write errors ("IoError(Os { code: 28 ... })")

    try:
        yield
    except (RuntimeError, OSError, SafetensorError) as err:
        text = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        folder = Path(path).parent
        try:
            free = f"{shutil.disk_usage(folder).free / 2**20:.1f} MiB free there"
        except OSError:
            free = "free space unknown"
        full = getattr(err, "errno", None) == errno.ENOSPC or "StorageFull" in text or "code: 28" in text
        cause = "the disk is full" if full else "is the disk full, or the folder not writable?"
        code = errno.ENOSPC if full else getattr(err, "errno", None) or errno.EIO
        raise OSError(code, f"{path}: could not be written: {cause} ({free}; {text})") from err


def unwritable(path: str | os.PathLike[str]) -> str | None:
    """Why ``path`` (a file or folder to be written, perhaps in folders still to be made) cannot be written, or None:
    its nearest existing ancestor is a file, or a folder where no file can be created (probed by creating one)."""
    existing = Path(os.path.abspath(path)).parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as err:
        return f"no file can be created in {existing} ({err.strerror})"
    return None
