"""The dependency rules and house rules of the architecture (ARCHITECTURE.md, README's layout), as functions.

Each rule takes a ``Repo`` (a checkout, parsed) and returns its violations as ``"file:line: what"`` strings; an empty
list means the rule holds. tests/test_layering.py runs them on the repository, and plants one violation per rule in
a scratch copy to see each rule fail. The rules:

* packages: ``drip`` never imports ``llava``, ``eval`` or the demo package; ``llava`` never imports ``eval`` or the
  demo; ``eval`` (scoring, no model code) never imports ``drip`` or ``llava.model``;
* inside ``llava``: ``tools`` on top of ``train`` | ``eval`` | ``serve`` (which don't import each other) on top of
  ``model`` on top of the base modules; only the DRIP tower, the connectors and ``llava.tools`` import all of
  ``drip`` (others only ``DRIP_SHARED``);
* in-package order (``ORDER``): inside a package, a module imports only modules of its own tier or lower ones;
* library code never imports ``drip.tools`` or ``llava.tools`` (the tools import the library, not the reverse);
* no import cycles among the repository's modules, function-level imports included (they only hide a cycle);
* optional heavy packages are imported inside functions only; ``print`` only in entry points;
* nothing edits ``sys.path`` (under any alias, ``from sys import path``, ``getattr``, ``site.addsitedir``);
* no monkey patches: no attribute of an imported module or class is assigned, deleted or ``setattr``-ed;
* no reference to a file outside the repository (``arch_paths``);
* no module or class defines a function or class name twice (the second silently replaces the first: a merge's copy);
* every module is at most ``MAX_LINES`` lines, counted as formatted: no ``# fmt: skip`` / ``# fmt: off`` markers;
* ``scripts/test.sh`` lints (``ruff check``) and format-checks (``ruff format --check``) every Python folder.
"""

from __future__ import annotations

import ast
import io
import re
import tokenize
from collections.abc import Callable
from fnmatch import fnmatchcase

from arch_names import rule_no_name_defined_twice
from arch_paths import rule_no_reference_outside_the_repository
from arch_scan import Repo, bound_imports, imports, is_entry_point, module_name, root_name, under, where

LIBRARIES = ("drip", "llava", "eval", "llava_drip_demo")
DEMO = "llava_drip_demo"
HEAVY = ("deepspeed", "flash_attn", "openai", "gradio", "lmms_eval", "peft")
LLAVA_APPS = ("llava.train", "llava.eval", "llava.serve")
LLAVA_TOOLS = "llava.tools"  # experiments and one-off tools: above model and the apps, imported by nothing in llava
TOOLS = ("drip.tools", LLAVA_TOOLS)
LLAVA_BASE = ("llava.constants", "llava.conversation", "llava.mm_utils", "llava.jsonl", "llava.prompting")
DRIP_TOWER = "llava/model/multimodal_encoder/drip_encoder.py"
# the llava modules that may import all of drip: the DRIP tower, the connectors (they reuse drip's predictor,
# estimators and pooling: no copies) and the experiments
DRIP_USERS = ("llava.model.multimodal_encoder.drip_encoder", "llava.model.connector", LLAVA_TOOLS)
# drip modules any of llava may use: model-free helpers both packages need, kept in drip (the lower one): images,
# weight files, whether flash-attn really imports (DRIP's packed attention and the LLM's attention choice), and
# drip.cost, the one cost convention and ViT block formula: drip.flops counts DRIP / ViT towers with it,
# llava.model.flops the HF towers and the token-reduction methods, so both sides of the sidecar are charged alike.
DRIP_SHARED = ("drip.images", "drip.file_io", "drip.flash", "drip.cost")
# plugin module -> the optional package it plugs into (only that package loads it, through an entry point)
PLUGINS = {"llava/eval/lmms_eval_model.py": "lmms_eval"}
MAX_LINES = 400
# Modules over MAX_LINES, each with the reason it is not split yet. This list only shrinks: a file leaves it when
# it is split (or shrinks under the cap); nothing new joins it.
OVERSIZED = {
    "tests/llava/test_eval_generation.py": "the eval tests are being edited now: split into generation / resume / "
    "command-line files after that merge",
    "tests/llava/test_builder.py": "the builder and its tests are being edited now: split after that merge",
    "benchmarks/train_step.py": "over once formatted (train_step_llm.py took the LLM part); split further after the "
    "GPU-performance merge",
}
# Import cycles not broken yet (the modules of each, sorted), each with the reason and the way out. This list only
# shrinks: an entry that no longer matches a cycle exactly is an error, and so is any other cycle.
KNOWN_CYCLES: dict[tuple[str, ...], str] = {}
# Tiers inside a package, lowest first: a module may import modules of its own tier or a lower one only. A pattern
# "p.*" is p and everything under it, "p" is that module alone; the most specific pattern places a module.
ORDER: dict[str, tuple[tuple[str, ...], ...]] = {
    "drip": (
        ("drip.*",),  # the vision library: config, boundary, pooling, layers, model, weights, flops, ...
        ("drip.text.*", "drip.lm.*"),  # the text tower and the pooling LM, built from those parts
        ("drip.open_clip_integration", "drip.text.clip"),  # open_clip models (image and pooled text towers)
        ("drip",),  # the public API
        ("drip.tools.*",),  # command-line tools and their helpers
    ),
    "llava": (
        ("llava.*",),  # constants, conversation, mm_utils, jsonl, prompting
        ("llava.model.*",),
        ("llava.train.*", "llava.eval.*", "llava.serve.*"),
        ("llava.tools.*",),
    ),
    "eval": (
        ("eval.io_utils",),  # reading and writing answer / review files
        ("eval.sqa_data", "eval.reviews", "eval.judge_client"),  # the data each scorer shares
        ("eval.*",),  # the scorers and tables (entry points)
    ),
    "llava_drip_demo": (
        ("llava_drip_demo.world.*",),  # the synthetic world: scenes, rendering, questions, datasets
        ("llava_drip_demo.*",),  # the commands built on it (demo_world, base_llm, conversions)
    ),
    "llava.model": (
        ("llava.model.*",),  # the parts: config, towers, projectors, splice, packing, PyramidDrop, reductions
        ("llava.model.llava_arch",),  # assembles the parts
        ("llava.model.language_model.*",),  # the LLM classes that mix LlavaMetaModel in
        ("llava.model.builder", "llava.model"),  # loading checkpoints; the public API
    ),
}
FORBIDDEN = {  # importer package -> packages it must not import
    "drip": ("llava", "eval", DEMO),
    "llava": ("eval", DEMO),
    "eval": ("drip", "llava.model", DEMO),
}

Rule = Callable[[Repo], list[str]]


def rule_package_dependencies(repo: Repo) -> list[str]:
    out = []
    for src in repo.sources:
        for imp in imports(src) if src.top in FORBIDDEN else ():
            if under(imp.target, FORBIDDEN[src.top]):
                out.append(f"{where(src, imp.line)}: {src.top} imports {imp.target}")
    return out


def rule_llava_layers(repo: Repo) -> list[str]:
    """tools on top of train | eval | serve on top of model on top of the base modules; the three apps never
    import each other."""
    out = []
    for src in (s for s in repo.sources if s.top == "llava" and not under(s.module, LLAVA_TOOLS)):
        own_app = next((a for a in LLAVA_APPS if under(src.module, a)), None)
        for imp in imports(src):
            app = next((a for a in LLAVA_APPS if under(imp.target, a)), None)
            if under(imp.target, LLAVA_TOOLS):
                out.append(f"{where(src, imp.line)}: {src.module} imports {imp.target} (llava.tools is above it)")
            elif app and app != own_app:
                out.append(f"{where(src, imp.line)}: {src.module} imports {imp.target} ({app} is above it)")
            elif under(src.module, LLAVA_BASE) and under(imp.target, "llava.model"):
                out.append(f"{where(src, imp.line)}: base module {src.module} imports {imp.target}")
    return out


def rule_only_the_drip_tower_imports_drip(repo: Repo) -> list[str]:
    users = ", ".join(DRIP_USERS)
    return [
        f"{where(src, imp.line)}: imports {imp.target} (only {users} may import drip in llava, others only "
        f"{', '.join(DRIP_SHARED)})"
        for src in repo.sources
        if src.top == "llava" and not under(src.module, DRIP_USERS)
        for imp in imports(src)
        if under(imp.target, "drip") and not under(imp.target, DRIP_SHARED)
    ]


def rule_library_never_imports_tools(repo: Repo) -> list[str]:
    return [
        f"{where(src, imp.line)}: library module {src.module} imports the tool {imp.target} (tools sit on top)"
        for src in repo.sources
        if src.top in LIBRARIES and not under(src.module, TOOLS)
        for imp in imports(src)
        if under(imp.target, TOOLS)
    ]


def tier(module: str, tiers: tuple[tuple[str, ...], ...]) -> int | None:
    """Index of the tier whose most specific pattern matches ``module`` (exact beats prefix, longer prefix beats
    shorter); None when no pattern does."""
    best: tuple[int, int] | None = None  # (specificity, tier)
    for i, patterns in enumerate(tiers):
        for p in patterns:
            prefix = p.removesuffix(".*")
            if p.endswith(".*") and under(module, prefix):
                score = len(prefix)
            elif fnmatchcase(module, p):
                score = 10_000
            else:
                continue
            if best is None or score > best[0]:
                best = (score, i)
    return None if best is None else best[1]


def rule_in_package_order(repo: Repo) -> list[str]:
    out = []
    for src in repo.sources:
        for imp in (i for i in imports(src) if not i.type_checking):
            target = repo.module_of(src, imp.target)
            for package, tiers in ORDER.items():
                if target is None or not (under(src.module, package) and under(target, package)):
                    continue
                own, theirs = tier(src.module, tiers), tier(target, tiers)
                if own is not None and theirs is not None and theirs > own:
                    out.append(f"{where(src, imp.line)}: {src.module} imports {target}, above it in {package}")
    return out


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while not component or component[-1] != v:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def rule_no_import_cycles(repo: Repo) -> list[str]:
    """Modules that import each other, directly or through others (function-level imports count: they run)."""
    graph: dict[str, set[str]] = {}
    lines: dict[tuple[str, str], str] = {}
    for src in repo.sources:
        for imp in (i for i in imports(src) if not i.type_checking):
            target = repo.module_of(src, imp.target)
            if target is not None and target != src.module:
                graph.setdefault(src.module, set()).add(target)
                lines.setdefault((src.module, target), where(src, imp.line))
    out = []
    found = _cycles(graph)
    for cycle in found:
        if tuple(cycle) in KNOWN_CYCLES:
            continue
        edges = [lines[(a, b)] for a in cycle for b in cycle if (a, b) in lines]
        out.append(f"{edges[0]}: import cycle {' <-> '.join(cycle)} (imports at {', '.join(edges)})")
    for known in set(KNOWN_CYCLES) - {tuple(c) for c in found}:
        where_ = f"{known[0].replace('.', '/')}.py:1"
        out.append(f"{where_}: the cycle {' <-> '.join(known)} is gone (or changed): take it off KNOWN_CYCLES")
    return out


def rule_heavy_imports_inside_functions(repo: Repo) -> list[str]:
    srcs = [s for s in repo.sources if s.top in LIBRARIES]
    return [
        f"{where(src, imp.line)}: optional package {imp.target.split('.')[0]} imported at module import"
        for src in srcs
        for imp in imports(src)
        if imp.at_import_time and under(imp.target, HEAVY) and PLUGINS.get(src.rel) != imp.target.split(".")[0]
    ] + [
        f"{where(src, imp.line)}: imports the plugin module {imp.target} at module import (it needs {package})"
        for src in srcs
        for imp in imports(src)
        for plugin, package in PLUGINS.items()
        if imp.at_import_time and under(imp.target, (module_name(plugin),))
    ]


def rule_no_print_in_library_code(repo: Repo) -> list[str]:
    return [
        f"{where(src, node.lineno)}: print() in library code (log through `logging`, or make it an entry point)"
        for src in repo.sources
        if src.top in LIBRARIES and not is_entry_point(src.tree)
        for node in ast.walk(src.tree)
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "print"
    ]


def _sys_path_uses(tree: ast.Module, sys_names: set[str]) -> list[tuple[int, str]]:
    def is_sys(n: ast.AST) -> bool:  # a name bound to sys, or __import__("sys") / importlib.import_module("sys")
        return (isinstance(n, ast.Name) and n.id in sys_names) or (
            isinstance(n, ast.Call) and any(isinstance(a, ast.Constant) and a.value == "sys" for a in n.args)
        )

    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("path", "path_hooks", "meta_path") and is_sys(node.value):
            found.append((node.lineno, f"sys.{node.attr}"))
        elif isinstance(node, ast.ImportFrom) and node.module == "sys":
            found += [
                (node.lineno, f"from sys import {a.name}") for a in node.names if a.name.startswith(("path", "meta"))
            ]
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr":
            if node.args and is_sys(node.args[0]):
                found.append((node.lineno, "getattr(sys, ...)"))
        elif isinstance(node, ast.Attribute) and node.attr == "addsitedir":
            found.append((node.lineno, "site.addsitedir"))
    return found


def rule_no_sys_path_edits(repo: Repo) -> list[str]:
    """No code touches the module search path: ``sys.path`` (``path_hooks``, ``meta_path``) under any alias, ``from
    sys import path``, ``getattr(sys, ...)``, ``__import__("sys").path`` or ``site.addsitedir``. Nothing here needs
    to read it either, so any use counts."""
    out = []
    for src in repo.sources:
        sys_names = {name for name, target in bound_imports(src).items() if target == "sys"}
        for line, what in _sys_path_uses(src.tree, sys_names):
            out.append(f"{where(src, line)}: {what}: edits the import path (install the package instead)")
    return out


def rule_no_monkey_patches(repo: Repo) -> list[str]:
    """No attribute of an imported module or class is assigned, deleted or set with ``setattr`` / ``delattr``
    (third-party or ours: that is patching a class or writing another module's globals)."""
    out = []
    for src in repo.sources:
        imported = bound_imports(src)
        for node in ast.walk(src.tree):
            targets: list[ast.AST] = []
            if isinstance(node, ast.Assign | ast.Delete):
                targets = node.targets
            elif isinstance(node, ast.AugAssign | ast.AnnAssign):
                targets = [node.target]
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.args:
                targets = [node.args[0]] if node.func.id in ("setattr", "delattr") else []
                targets = [ast.Attribute(value=t, attr="?") for t in targets]
            for t in targets:
                name = root_name(t) if isinstance(t, ast.Attribute) else None
                if name in imported:
                    out.append(f"{where(src, node.lineno)}: patches {imported[name]} ({ast.unparse(t)})")
    return out


FMT_MARKER = re.compile(r"#\s*fmt:\s*(skip|off)\b")


def format_markers(text: str) -> list[int]:
    """Lines holding a ``fmt: skip`` / ``fmt: off`` comment (comments only: a docstring may name them)."""
    tokens = tokenize.generate_tokens(io.StringIO(text).readline)
    return [t.start[0] for t in tokens if t.type == tokenize.COMMENT and FMT_MARKER.search(t.string)]


def rule_module_size(repo: Repo) -> list[str]:
    """At most MAX_LINES lines per module, as ruff formats it (so no ``fmt: skip`` / ``off`` markers)."""
    out = []
    for src in repo.sources:
        text = src.path.read_text(encoding="utf-8")
        lines = text.splitlines()
        out += [
            f"{src.rel}:{n}: a `fmt: skip`/`off` marker (the size cap counts formatted lines)"
            for n in format_markers(text)
        ]
        if len(lines) > MAX_LINES and src.rel not in OVERSIZED:
            out.append(f"{src.rel}:1: {len(lines)} lines (at most {MAX_LINES}: split it)")
    for rel in OVERSIZED:
        path = repo.root / rel
        if path.exists() and len(path.read_text(encoding="utf-8").splitlines()) <= MAX_LINES:
            out.append(f"{rel}:1: now within {MAX_LINES} lines: take it off OVERSIZED")
    return out


RUFF_COMMANDS = ("ruff check", "ruff format --check")


def rule_ruff_checks_every_python_folder(repo: Repo) -> list[str]:
    script = (repo.root / "scripts" / "test.sh").read_text(encoding="utf-8")
    folders = {s.top for s in repo.sources if "/" in s.rel}
    out = []
    for command in RUFF_COMMANDS:
        line = next((ln for ln in script.splitlines() if command in ln and not ln.lstrip().startswith("#")), "")
        covered = set(line.split(command, 1)[-1].split())
        out += [f"scripts/test.sh: `{command}` does not cover {f}/" for f in sorted(folders - covered)]
    return out


RULES: tuple[Rule, ...] = (
    rule_package_dependencies,
    rule_llava_layers,
    rule_only_the_drip_tower_imports_drip,
    rule_library_never_imports_tools,
    rule_in_package_order,
    rule_no_import_cycles,
    rule_heavy_imports_inside_functions,
    rule_no_print_in_library_code,
    rule_no_sys_path_edits,
    rule_no_monkey_patches,
    rule_no_name_defined_twice,
    rule_no_reference_outside_the_repository,
    rule_module_size,
    rule_ruff_checks_every_python_folder,
)
