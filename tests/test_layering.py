"""The dependency rules and house rules of the architecture (ARCHITECTURE.md, README's layout), enforced.

The rules live in ``tests/architecture/arch_rules.py`` (their list and meaning in its docstring); every Python file
of the repository is parsed (``ast``; nothing is imported) by ``arch_scan.py``. Here: the rules run on the
repository; two checks import for real, in a fresh interpreter (``import drip`` loads torch but none of open_clip,
transformers or the optional packages, and the ``eval`` scorers run without torch); and each rule is seen to fail
on a scratch copy of the repository with one violation planted (tests/test_layering_guards.py).
"""

from __future__ import annotations

import ast
import subprocess
import sys

from arch_paths import outside
from arch_rules import (
    DEMO,
    DRIP_TOWER,
    HEAVY,
    RULES,
    rule_heavy_imports_inside_functions,
    rule_no_sys_path_edits,
    rule_only_the_drip_tower_imports_drip,
)
from arch_scan import ROOT, Repo, Source, imports, is_entry_point, under

LOADED = "import sys, {modules}; print(','.join(sorted({{m.split('.')[0] for m in sys.modules}} & set(sys.argv[1:]))))"


def _loaded_by(modules: str, watched: tuple[str, ...]) -> list[str] | str:
    """Which of `watched` a fresh interpreter has loaded after `import {modules}` (or why the import failed)."""
    code = LOADED.format(modules=modules)
    proc = subprocess.run([sys.executable, "-c", code, *watched], cwd=ROOT, capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        return f"`import {modules}` failed: {proc.stderr.strip().splitlines()[-1:]}"
    return [m for m in (proc.stdout.strip().splitlines() or [""])[-1].split(",") if m]


def rule_light_package_imports(repo: Repo) -> list[str]:
    """`import drip` pulls no open_clip/transformers/optional package; the eval scorers import no torch."""
    scorers = [s.module for s in repo.sources if s.top == "eval" and is_entry_point(s.tree)]
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
    repo = Repo.scan()
    report = []
    for rule in (*RULES, rule_light_package_imports):
        found = rule(repo)
        if found:
            report.append(f"{rule.__name__} ({len(found)}):\n  " + "\n  ".join(sorted(found)))
    assert not report, "architecture rules broken:\n" + "\n".join(report)


def test_the_scan_sees_what_it_checks() -> None:
    """The scanner itself: it finds the package, its imports (relative ones resolved) and its entry points."""
    repo = Repo.scan()
    srcs = {s.rel: s for s in repo.sources}
    assert {"drip/__init__.py", "llava/train/train.py", "eval/eval_science_qa.py", DRIP_TOWER} <= set(srcs)
    assert f"{DEMO}/demo_world.py" in srcs
    tower = imports(srcs[DRIP_TOWER])
    assert any(under(i.target, "drip") and i.at_import_time for i in tower)
    assert is_entry_point(srcs["llava/train/train.py"].tree)
    assert not is_entry_point(srcs["llava/train/data.py"].tree)
    tree = ast.parse("from . import a\nfrom .b import c\ndef f():\n    import deepspeed\n")
    fake = Source(ROOT / "llava/train/x.py", "llava/train/x.py", "llava.train.x", tree)
    assert [(i.target, i.at_import_time) for i in imports(fake)] == [
        ("llava.train.a", True),
        ("llava.train.b.c", True),
        ("deepspeed", False),
    ]
    assert repo.module_of(fake, "drip.text.clip.create_clip") == "drip.text.clip"
    assert repo.module_of(srcs["benchmarks/token_budget_run.py"], "token_budget.Run") == "benchmarks.token_budget"
    assert repo.module_of(fake, "torch.nn") is None
    one = Repo(ROOT, [fake])
    assert rule_heavy_imports_inside_functions(one) == []
    bad = Source(fake.path, fake.rel, fake.module, ast.parse("import peft\nimport sys\nsys.path.insert(0, 'x')\n"))
    one.sources = [bad]
    assert len(rule_heavy_imports_inside_functions(one)) == 1 and len(rule_no_sys_path_edits(one)) == 1
    code = "from drip.images import to_rgb\nfrom drip.cost import patch_embed_macs\nimport drip.model, drip.flops\n"
    one.sources = [Source(fake.path, fake.rel, fake.module, ast.parse(code))]
    found = rule_only_the_drip_tower_imports_drip(one)  # drip.images and drip.cost are allowed, the models are not
    assert len(found) == 2 and "imports drip.model " in found[0] and "imports drip.flops " in found[1]
    assert outside(ROOT, ROOT / "README.md", "../shared/ENVIRONMENT.md")
    assert not outside(ROOT, ROOT / "scripts/v1_5/common.sh", "../..")
