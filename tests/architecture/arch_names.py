"""The rule that no module or class defines a function or class name twice: the second definition silently replaces
the first (ruff's redefinition check does not cover classes), which is how a merge that repeats a block goes unseen.
A property's ``@x.setter`` / ``@x.deleter`` and ``typing.overload`` rebind a name on purpose and are allowed.
"""

from __future__ import annotations

import ast

from arch_scan import Repo, where


def _defined_twice(body: list[ast.stmt], owner: str) -> list[tuple[int, str]]:
    """(line, name) of each def / class in ``body`` (and in its classes) whose name an earlier one bound; a property's
    ``@x.setter`` and ``@overload`` are new bindings on purpose."""
    seen: set[str] = set()
    out = []
    for node in body:
        if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            continue
        on_purpose = any(
            isinstance(d, ast.Attribute) or (isinstance(d, ast.Name) and d.id == "overload")
            for d in node.decorator_list
        )
        if node.name in seen and not on_purpose:
            out.append((node.lineno, owner + node.name))
        seen.add(node.name)
        if isinstance(node, ast.ClassDef):
            out += _defined_twice(node.body, f"{owner}{node.name}.")
    return out


def rule_no_name_defined_twice(repo: Repo) -> list[str]:
    return [
        f"{where(src, line)}: {name} is defined again (the second replaces the first: keep one)"
        for src in repo.sources
        for line, name in _defined_twice(src.tree.body, "")
    ]
