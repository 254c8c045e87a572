"""The scanner behind tests/test_layering.py: every Python file of a checkout, parsed (``ast``; nothing is imported).

``Repo.scan(root)`` holds the parsed sources of the checkout at ``root`` (the repository, or a scratch copy a guard test
plants a violation in); ``imports(src)`` lists what a source imports, relative imports resolved, each marked with
whether it runs when the module is imported; ``module_of`` maps an imported name to the repository module it lives in.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {"checkpoints", "runs", "build", "dist", "node_modules"}
TEXT_SUFFIXES = (".py", ".sh", ".toml", ".json", ".md", ".cfg", ".txt", ".yaml", ".yml")


@dataclass(frozen=True)
class Import:
    target: str  # dotted name: "llava.train.data" or, for `from a.b import c`, "a.b.c"
    line: int
    at_import_time: bool  # not inside a function body (module or class level, outside `if TYPE_CHECKING`)
    type_checking: bool = False  # under `if TYPE_CHECKING`: never runs


@dataclass
class Source:
    path: Path
    rel: str  # posix path relative to the checkout's root
    module: str  # dotted module name ("llava.train.data"; "__init__" dropped)
    tree: ast.Module

    @property
    def top(self) -> str:
        return self.rel.split("/")[0]

    @property
    def is_package(self) -> bool:
        return self.rel.endswith("__init__.py")


def repo_files(root: Path, suffixes: tuple[str, ...]) -> Iterator[Path]:
    """Files of the checkout with one of ``suffixes``, outside hidden folders, build outputs and playground/data."""
    for path in sorted(root.rglob("*")):
        parts = path.relative_to(root).parts
        if any(p.startswith(".") or p in SKIP_DIRS or p == "__pycache__" for p in parts[:-1]):
            continue
        if parts[:2] == ("playground", "data") or not path.is_file() or not path.name.endswith(suffixes):
            continue
        yield path


def module_name(rel: str) -> str:
    name = rel.removesuffix(".py").replace("/", ".")
    return name.removesuffix(".__init__")


def parse(root: Path, path: Path) -> Source:
    rel = path.relative_to(root).as_posix()
    return Source(path, rel, module_name(rel), ast.parse(path.read_text(encoding="utf-8"), rel))


@dataclass
class Repo:
    root: Path
    sources: list[Source]

    @classmethod
    def scan(cls, root: Path = ROOT) -> Repo:
        return cls(root, [parse(root, p) for p in repo_files(root, (".py",))])

    def moved_to(self, root: Path, changed: tuple[str, ...] = ()) -> Repo:
        """The same checkout copied to ``root``, where the files ``changed`` (relative paths) were edited: those are
        parsed again, the others keep their trees."""
        same = [replace(s, path=root / s.rel) for s in self.sources if s.rel not in changed]
        return Repo(root, same + [parse(root, root / rel) for rel in changed if rel.endswith(".py")])

    @cached_property
    def modules(self) -> dict[str, Source]:
        return {s.module: s for s in self.sources}

    def text_files(self) -> Iterator[Path]:
        return repo_files(self.root, TEXT_SUFFIXES)

    def module_of(self, src: Source, target: str) -> str | None:
        """The repository module an import of ``target`` in ``src`` loads: the longest dotted prefix that is a module
        (``drip.text.clip.create_model`` -> ``drip.text.clip``), or a sibling script imported by bare name
        (``from token_budget import x`` in ``benchmarks/token_budget_run.py``). None for other packages."""
        parts = target.split(".")
        for n in range(len(parts), 0, -1):
            if ".".join(parts[:n]) in self.modules:
                return ".".join(parts[:n])
        folder = src.rel.rsplit("/", 1)[0] if "/" in src.rel else ""
        sibling = f"{folder}/{parts[0]}.py" if folder else f"{parts[0]}.py"
        return module_name(sibling) if module_name(sibling) in self.modules else None


def is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def resolve(src: Source, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    package = src.module.split(".")
    if not src.is_package:
        package = package[:-1]
    base = package[: len(package) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def imports(src: Source) -> list[Import]:
    found: list[Import] = []

    def visit(node: ast.AST, import_time: bool, typing_only: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                found.extend(Import(a.name, child.lineno, import_time, typing_only) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = resolve(src, child)
                for a in child.names:
                    target = f"{base}.{a.name}" if a.name != "*" else base
                    found.append(Import(target, child.lineno, import_time, typing_only))
            in_function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            typing = is_type_checking(child)
            visit(child, import_time and not in_function and not typing, typing_only or typing)

    visit(src.tree, True, False)
    return found


def under(name: str, prefixes: tuple[str, ...] | str) -> bool:
    prefixes = (prefixes,) if isinstance(prefixes, str) else prefixes
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def where(src: Source, line: int) -> str:
    return f"{src.rel}:{line}"


def is_entry_point(tree: ast.Module) -> bool:
    for node in tree.body:
        if isinstance(node, ast.FunctionDef) and node.name == "main":
            return True
        if isinstance(node, ast.If) and isinstance(node.test, ast.Compare):
            names = [n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)]
            if "__name__" in names:
                return True
    return False


def bound_imports(src: Source) -> dict[str, str]:
    """Local name -> the dotted name an import binds it to (``import a.b`` binds ``a``; ``from a import b as c``
    binds ``c`` to ``a.b``), over the whole module (function-level imports included)."""
    names: dict[str, str] = {}
    for node in ast.walk(src.tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                names[a.asname or a.name.split(".")[0]] = a.name if a.asname else a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom):
            base = resolve(src, node)
            names.update({a.asname or a.name: f"{base}.{a.name}" for a in node.names if a.name != "*"})
    return names


def root_name(node: ast.AST) -> str | None:
    """``a`` for ``a.b.c`` (attribute chains, calls and subscripts on the way down); None otherwise."""
    while isinstance(node, ast.Attribute | ast.Subscript | ast.Call):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None
