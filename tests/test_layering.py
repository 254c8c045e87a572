"""The dependency rules and house rules of the architecture (ARCHITECTURE.md, README's layout), enforced.

Every Python file of the repository is parsed (``ast``; nothing is imported) and checked against:

* ``drip`` never imports ``llava``, ``eval`` or the demo package; ``llava`` never imports ``eval`` or the demo
  package; ``eval`` (scoring, no model code) never imports ``drip`` or ``llava.model``;
* inside ``llava``: ``train``, ``eval`` and ``serve`` don't import each other, and nothing below them (``model``,
  ``constants``, ``conversation``, ``mm_utils``, ...) imports any of them; the base modules don't import ``model``;
* inside ``llava``, only the DRIP tower (``llava/model/multimodal_encoder/drip_encoder.py``) and the DRIP connector
  (``llava/model/connector/``) import ``drip``;
* optional heavy packages (deepspeed, flash_attn, openai, gradio, lmms_eval, peft) are imported inside functions
  only (or under ``if TYPE_CHECKING``), never when a module is imported; a plugin module that subclasses one of
  their classes (``PLUGINS``) imports its own package at module level, and no module imports it at import time;
* library code logs instead of printing: ``print`` only in entry points (a module with ``if __name__ ==
  "__main__"`` or a top-level ``main()``);
* nothing edits ``sys.path``; no file refers to a path outside the repository (``../shared``, ``/work/...``);
* ruff (``scripts/test.sh``) lints every top-level folder that holds Python files.

Two checks import for real, in a fresh interpreter: ``import drip`` loads torch but none of open_clip,
transformers or the optional packages, and the ``eval`` scorers run without torch.

Each rule lists every violation it finds, and the one test reports them all in one message.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP_DIRS = {"checkpoints", "runs", "build", "dist", "node_modules"}
LIBRARIES = ("drip", "llava", "eval", "llava_drip_demo")
DEMO = "llava_drip_demo"
HEAVY = ("deepspeed", "flash_attn", "openai", "gradio", "lmms_eval", "peft")
LLAVA_APPS = ("llava.train", "llava.eval", "llava.serve")
LLAVA_BASE = ("llava.constants", "llava.conversation", "llava.mm_utils", "llava.jsonl", "llava.prompting")
DRIP_TOWER = "llava/model/multimodal_encoder/drip_encoder.py"
DRIP_CONNECTOR = "llava/model/connector/"  # the package: predictor, estimators, pooling and segments from drip
# plugin module -> the optional package it plugs into (only that package loads it, through an entry point)
PLUGINS = {"llava/eval/lmms_eval_model.py": "lmms_eval"}
TEXT_SUFFIXES = (".py", ".sh", ".toml", ".json", ".md", ".cfg", ".txt", ".yaml", ".yml")


@dataclass(frozen=True)
class Import:
    target: str  # dotted name: "llava.train.data" or, for `from a.b import c`, "a.b.c"
    line: int
    at_import_time: bool  # not inside a function body (module or class level, outside `if TYPE_CHECKING`)


@dataclass
class Source:
    path: Path
    rel: str  # posix path relative to ROOT
    module: str  # dotted module name ("llava.train.data"; "__init__" dropped)
    tree: ast.Module

    @property
    def top(self) -> str:
        return self.rel.split("/")[0]


def _repo_files(suffixes: tuple[str, ...]) -> Iterator[Path]:
    for path in sorted(ROOT.rglob("*")):
        parts = path.relative_to(ROOT).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p == "__pycache__" for p in parts[:-1]):
            continue
        if parts[:2] == ("playground", "data") or not path.is_file() or not path.name.endswith(suffixes):
            continue
        yield path


def _module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def sources() -> list[Source]:
    out = []
    for path in _repo_files((".py",)):
        rel = path.relative_to(ROOT).as_posix()
        out.append(Source(path, rel, _module_name(rel), ast.parse(path.read_text(encoding="utf-8"), rel)))
    return out


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(src: Source, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = src.module.split(".")
    if not src.rel.endswith("__init__.py"):
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(src: Source) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, import_time: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, import_time) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = _resolve(src, child)
                found.extend(Import(f"{base}.{a.name}" if a.name != "*" else base, child.lineno, import_time)
                             for a in child.names)  # fmt: skip
            inside = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) or _is_type_checking(child)
            visit(child, import_time and not inside)

    visit(src.tree, True)
    return found


def _under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _where(src: Source, line: int) -> str:
    return f"{src.rel}:{line}"


# --- the rules: each returns "file:line: what" strings ------------------------------------------------------------

FORBIDDEN = {  # importer package -> packages it must not import
    "drip": ("llava", "eval", DEMO),
    "llava": ("eval", DEMO),
    "eval": ("drip", "llava.model", DEMO),
}


def rule_package_dependencies(srcs: list[Source]) -> list[str]:
    out = []
    for src in srcs:
        for imp in imports(src) if src.top in FORBIDDEN else ():
            if _under(imp.target, FORBIDDEN[src.top]):
                out.append(f"{_where(src, imp.line)}: {src.top} imports {imp.target}")
    return out


def rule_llava_layers(srcs: list[Source]) -> list[str]:
    """train | eval | serve on top of model on top of the base modules; the three apps never import each other."""
    out = []
    for src in (s for s in srcs if s.top == "llava"):
        own_app = next((a for a in LLAVA_APPS if _under(src.module, a)), None)
        for imp in imports(src):
            app = next((a for a in LLAVA_APPS if _under(imp.target, a)), None)
            if app and app != own_app:
                out.append(f"{_where(src, imp.line)}: {src.module} imports {imp.target} ({app} is above it)")
            elif _under(src.module, LLAVA_BASE) and _under(imp.target, "llava.model"):
                out.append(f"{_where(src, imp.line)}: base module {src.module} imports {imp.target}")
    return out


def rule_only_the_drip_tower_imports_drip(srcs: list[Source]) -> list[str]:
    return [
        f"{_where(src, imp.line)}: imports {imp.target} (only {DRIP_TOWER} and {DRIP_CONNECTOR} may import drip "
        "inside llava)"
        for src in srcs
        if src.top == "llava" and src.rel != DRIP_TOWER and not src.rel.startswith(DRIP_CONNECTOR)
        for imp in imports(src)
        if _under(imp.target, "drip")
    ]


def rule_heavy_imports_inside_functions(srcs: list[Source]) -> list[str]:
    return [
        f"{_where(src, imp.line)}: optional package {imp.target.split('.')[0]} imported at module import"
        for src in srcs
        if src.top in LIBRARIES
        for imp in imports(src)
        if imp.at_import_time and _under(imp.target, HEAVY) and PLUGINS.get(src.rel) != imp.target.split(".")[0]
    ] + [
        f"{_where(src, imp.line)}: imports the plugin module {imp.target} at module import (it needs {package})"
        for src in srcs
        if src.top in LIBRARIES
        for imp in imports(src)
        for plugin, package in PLUGINS.items()
        if imp.at_import_time and _under(imp.target, (_module_name(plugin),))
    ]


def _is_entry_point(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            if "__name__" in names:
                return True
    return False


def rule_no_print_in_library_code(srcs: list[Source]) -> list[str]:
    return [
        f"{_where(src, node.lineno)}: print() in library code (log through `logging`, or make it an entry point)"
        for src in srcs
        if src.top in LIBRARIES and not _is_entry_point(src.tree)
        for node in ast.walk(src.tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def rule_no_sys_path_edits(srcs: list[Source]) -> list[str]:
    out = []
    for src in srcs:
        for node in ast.walk(src.tree):
            target = node.func.value if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) else None
            targets = node.targets if isinstance(node, ast.Assign) else [target] if target is not None else []
            for t in targets:
                if isinstance(t, ast.Attribute) and t.attr == "path" and getattr(t.value, "id", "") == "sys":
                    out.append(f"{_where(src, node.lineno)}: edits sys.path (install the package instead)")
    return out


OUTSIDE = re.compile(r"\.\./shared\b|(?<![\w.])/work/[\w.\-/]*|(?<![\w.])(?:\.\./)+[\w.\-]+[\w.\-/]*")


def _outside(path: Path, ref: str) -> bool:
    if "/work/" in ref or "../shared" in ref:
        return True
    inside = [(base / ref).resolve() for base in (path.parent, ROOT)]
    return not any(p.exists() and p.is_relative_to(ROOT) for p in inside)


def rule_no_reference_outside_the_repository(srcs: list[Source]) -> list[str]:
    out = []
    for path in _repo_files(TEXT_SUFFIXES):
        if path.resolve() == Path(__file__).resolve():
            continue  # this file names the patterns it looks for
        rel = path.relative_to(ROOT).as_posix()
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for m in OUTSIDE.finditer(line):
                if _outside(path, m.group(0)):
                    out.append(f"{rel}:{n}: refers to {m.group(0)!r}, outside the repository")
    return out


def rule_ruff_lints_every_python_folder(srcs: list[Source]) -> list[str]:
    script = (ROOT / "scripts" / "test.sh").read_text(encoding="utf-8")
    line = next((ln for ln in script.splitlines() if "ruff check" in ln), "")
    linted = set(line.split("ruff check", 1)[-1].split())
    folders = {s.top for s in srcs if "/" in s.rel}
    return [f"scripts/test.sh: ruff does not lint {f}/" for f in sorted(folders - linted)]


RULES: tuple[Callable[[list[Source]], list[str]], ...] = (
    rule_package_dependencies,
    rule_llava_layers,
    rule_only_the_drip_tower_imports_drip,
    rule_heavy_imports_inside_functions,
    rule_no_print_in_library_code,
    rule_no_sys_path_edits,
    rule_no_reference_outside_the_repository,
    rule_ruff_lints_every_python_folder,
)

LOADED = "import sys, {modules}; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set(sys.argv[1:]))))"


def _loaded_by(modules: str, watched: tuple[str, ...]) -> list[str] | str:
    """Which of `watched` a fresh interpreter has loaded after `import {modules}` (or why the import failed)."""
    code = LOADED.format(modules=modules)
    proc = subprocess.run([sys.executable, "-c", code, *watched], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"`import {modules}` failed: {proc.stderr.strip().splitlines()[-1:]}"
    return [m for m in (proc.stdout.strip().splitlines() or [""])[-1].split(",") if m]


def rule_light_package_imports(srcs: list[Source]) -> list[str]:
    """`import drip` pulls no open_clip/transformers/optional package; the eval scorers import no torch."""
    scorers = [s.module for s in srcs if s.top == "eval" and _is_entry_point(s.tree)]
    out = []
    for modules, watched, why in (
        ("drip", ("open_clip", "transformers", "timm", "fvcore", *HEAVY), "`import drip` should import torch only"),
        (", ".join(scorers), ("torch",), "eval is scoring only, no torch"),
    ):
        loaded = _loaded_by(modules, watched)
        if loaded:
            out.append(loaded if isinstance(loaded, str) else f"`import {modules}` loads {', '.join(loaded)} ({why})")
    return out


def test_architecture_rules_hold() -> None:
    srcs = sources()
    report = []
    for rule in (*RULES, rule_light_package_imports):
        found = rule(srcs)
        if found:
            report.append(f"{rule.__name__} ({len(found)}):\n  " + "\n  ".join(sorted(found)))
    assert not report, "architecture rules broken:\n" + "\n".join(report)


def test_the_scan_sees_what_it_checks() -> None:
    """The scanner itself: it finds the package, its imports (relative ones resolved) and its entry points."""
    srcs = {s.rel: s for s in sources()}
    assert {"drip/__init__.py", "llava/train/train.py", "eval/eval_science_qa.py", DRIP_TOWER} <= set(srcs)
    assert f"{DEMO}/demo_world.py" in srcs
    tower = imports(srcs[DRIP_TOWER])
    assert any(_under(i.target, "drip") and i.at_import_time for i in tower)
    assert _is_entry_point(srcs["llava/train/train.py"].tree)
    assert not _is_entry_point(srcs["llava/train/data.py"].tree)
    tree = ast.parse("from . import a\nfrom .b import c\ndef f():\n    import deepspeed\n")
    fake = Source(ROOT / "llava/train/x.py", "llava/train/x.py", "llava.train.x", tree)
    assert [(i.target, i.at_import_time) for i in imports(fake)] == [
        ("llava.train.a", True),
        ("llava.train.b.c", True),
        ("deepspeed", False),
    ]
    assert rule_heavy_imports_inside_functions([fake]) == []
    bad = Source(fake.path, fake.rel, fake.module, ast.parse("import peft\nimport sys\nsys.path.insert(0, 'x')\n"))
    assert len(rule_heavy_imports_inside_functions([bad])) == 1 and len(rule_no_sys_path_edits([bad])) == 1
    uses_drip = ast.parse("from drip.pooling import pool_segments\n")
    connector = Source(
        ROOT / "llava/model/connector/x.py", "llava/model/connector/x.py", "llava.model.connector.x", uses_drip
    )
    builder = Source(ROOT / "llava/model/builder.py", "llava/model/builder.py", "llava.model.builder", uses_drip)
    assert rule_only_the_drip_tower_imports_drip([connector]) == []
    assert len(rule_only_the_drip_tower_imports_drip([builder])) == 1
    assert _outside(ROOT / "README.md", "../shared/ENVIRONMENT.md")
    assert not _outside(ROOT / "scripts/v1_5/common.sh", "../..")
