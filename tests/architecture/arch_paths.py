"""The rule that no file refers to a file outside the repository (a checkout runs on its own, wherever it lies).

Caught, in every text file: a literal ``../shared`` or ``/work/...`` path, and a relative ``../x`` reference that
does not resolve inside the checkout (from the file's folder or the root). Caught in Python code (``ast``):

* climbing above the root from ``__file__``: ``Path(__file__).parents[k]``, ``.parent`` chains and nested
  ``os.path.dirname`` calls that go past the checkout's root (reaching the root itself is fine);
* a ``".."`` path component in a string constant (``os.path.join(root, "..", "data")``, ``Path(x) / ".."``): the
  climb's end depends on where the checkout lies;
* an absolute path into a user's or a machine's data (``/home/``, ``/mnt/``, ``/data/``, ``/scratch/``, ``~/``...).

Data outside the repository is reached through a flag or an environment variable the README documents (e.g.
``--data-root``), never through a default in code. ``DATA_PATH_DEFAULTS`` lists the documented exceptions, each
with where it is documented; a new entry needs a README section that tells the user what to put
there.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from arch_scan import Repo, where

OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])/work/[\w.\-/]*|(?<![\w.])(?:\.\./)+[\w.\-]+[\w.\-/]*")
ABSOLUTE = re.compile(r"^(~/|/(home|mnt|data|datasets|scratch|shared|work|root|Users|nfs|media)(/|$))")
# (file, reference) -> where the README documents that default; see the module docstring
DATA_PATH_DEFAULTS: dict[tuple[str, str], str] = {
    (
        "scripts/test.sh",
        "../shared",
    ): "README Two commands: LLAVA_STAGE1_DATA defaults to the sample beside the checkout",
    ("README.md", "../shared"): "README Two commands: where scripts/test.sh looks for the stage-1 sample",
}
# the rule and its tests name the patterns they look for
THIS_RULE = ("tests/architecture/arch_paths.py", "tests/test_layering.py", "tests/test_layering_guards.py")
# test files whose outside references are hostile input they plant in a scratch folder, with why
PLANTED: dict[str, str] = {
    "tests/llava/train/test_checkpoint_trust.py": "DeepSpeed tags that climb out of a checkpoint, to see them refused",
}


def outside(root: Path, path: Path, ref: str) -> bool:
    """Whether the relative reference ``ref`` in ``path`` points outside the checkout at ``root``."""
    if "/work/" in ref or "../shared" in ref:
        return True
    inside = [(base / ref).resolve() for base in (path.parent, root)]
    return not any(p.exists() and p.is_relative_to(root.resolve()) for p in inside)


def _text_references(repo: Repo) -> list[str]:
    out = []
    for path in repo.text_files():
        rel = path.relative_to(repo.root).as_posix()
        if rel in THIS_RULE or rel in PLANTED:
            continue
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in OUTSIDE.finditer(line):
                if outside(repo.root, path, m.group(0)) and (rel, m.group(0)) not in DATA_PATH_DEFAULTS:
                    out.append(f"{rel}:{n}: refers to {m.group(0)!r}, outside the repository")
    return out


def _is_file(node: ast.AST) -> bool:
    return isinstance(node, ast.Name) and node.id == "__file__"


def climb(node: ast.AST) -> int | None:
    """How many folders above ``__file__``'s own folder an expression reaches (0: that folder), or None when it is
    not a path derived from ``__file__``. ``__file__`` itself (and ``Path(__file__).resolve()``) is -1."""
    if _is_file(node):
        return -1
    if isinstance(node, ast.Call):
        func, args = node.func, node.args
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if name in ("Path", "PurePath", "abspath", "realpath", "fspath") and args and _is_file(args[0]):
            return -1
        if name == "dirname" and args:
            inner = climb(args[0])
            return None if inner is None else inner + 1
        if name in ("resolve", "absolute", "abspath", "realpath") and isinstance(func, ast.Attribute):
            return climb(func.value if name in ("resolve", "absolute") else args[0] if args else func.value)
    if isinstance(node, ast.Attribute) and node.attr == "parent":
        inner = climb(node.value)
        return None if inner is None else inner + 1
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
        inner = climb(node.value.value)
        k = node.slice.value if isinstance(node.slice, ast.Constant) and isinstance(node.slice.value, int) else None
        return None if inner is None or k is None else inner + 1 + k
    return None


def _code_references(repo: Repo) -> list[str]:
    out = []
    for src in repo.sources:
        if src.rel in THIS_RULE:
            continue
        depth = src.rel.count("/")  # folders between the file and the root: climbing `depth` reaches the root
        for node in ast.walk(src.tree):
            up = climb(node)
            if up is not None and up > depth:
                out.append(f"{where(src, node.lineno)}: climbs {up - depth} folder(s) above the repository root")
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                value = node.value.strip()
                if (src.rel, value) in DATA_PATH_DEFAULTS:
                    continue
                if value == ".." or value.startswith("../") and "\n" not in value and " " not in value:
                    if value == ".." or outside(repo.root, src.path, value):
                        out.append(f"{where(src, node.lineno)}: the path component {value!r} climbs out")
                elif ABSOLUTE.match(value) and "\n" not in value:
                    out.append(f"{where(src, node.lineno)}: absolute path {value!r} outside the repository")
    return out


def rule_no_reference_outside_the_repository(repo: Repo) -> list[str]:
    return sorted(set(_text_references(repo) + _code_references(repo)))
