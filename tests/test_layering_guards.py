"""Each architecture rule fails when its violation is planted: a guard nobody has seen fail guards nothing.

The repository is copied to a scratch folder once; each case copies that again, plants one violation (code appended
to a module, or a line of a script changed) and checks that the rule reports it at the planted file, and that the
rule holds on the unplanted copy.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import arch_rules
import pytest
from arch_rules import (
    MAX_LINES,
    OVERSIZED,
    rule_heavy_imports_inside_functions,
    rule_in_package_order,
    rule_library_never_imports_tools,
    rule_llava_layers,
    rule_module_size,
    rule_no_import_cycles,
    rule_no_monkey_patches,
    rule_no_name_defined_twice,
    rule_no_print_in_library_code,
    rule_no_reference_outside_the_repository,
    rule_no_sys_path_edits,
    rule_only_the_drip_tower_imports_drip,
    rule_package_dependencies,
    rule_ruff_checks_every_python_folder,
)
from arch_scan import ROOT, TEXT_SUFFIXES, Repo, repo_files

CYCLE = "\n\ndef _hidden():\n    from drip.model import DripVisionTransformer\n"  # drip.model imports drip.pooling
# (rule, file the violation goes in, code appended to it, text the rule's report must hold)
CASES: list[tuple[Callable[[Repo], list[str]], str, str, str]] = [
    (rule_no_import_cycles, "drip/pooling.py", CYCLE, "drip.model <-> drip.pooling"),
    # the two real cycles as they were: a function-level import back into the importer, a sibling script's import
    (rule_no_import_cycles, "drip/open_clip_integration.py", "\ndef c():\n    from drip.text import clip\n", "cycle"),
    (
        rule_no_import_cycles,
        "benchmarks/token_budget.py",
        "\ndef m():\n    from token_budget_run import main\n",
        "cycle",
    ),
    (rule_in_package_order, "llava/model/splice.py", "\nfrom llava.model.llava_arch import LlavaMetaModel\n", "above"),
    (rule_in_package_order, "drip/pooling.py", "\ndef f():\n    from drip.text.model import causal_bias\n", "above"),
    (rule_in_package_order, "drip/model.py", "\nfrom drip import get_preset\n", "imports drip, above it"),
    (
        rule_in_package_order,
        "llava_drip_demo/world/scene.py",
        "\ndef g():\n    from llava_drip_demo import demo_world\n",
        "above",
    ),
    (rule_in_package_order, "eval/io_utils.py", "\ndef g():\n    from eval.sqa_data import load_problems\n", "above"),
    (rule_library_never_imports_tools, "drip/model.py", "\nfrom drip.tools.files import load_images\n", "tool"),
    (rule_library_never_imports_tools, "llava/model/builder.py", "\nimport llava.tools.tower_export\n", "tool"),
    (rule_llava_layers, "llava/model/splice.py", "\nfrom llava.train.data import LazySupervisedDataset\n", "above"),
    (rule_llava_layers, "llava/eval/answers.py", "\nfrom llava.tools import image_reliance\n", "llava.tools"),
    (rule_package_dependencies, "drip/pooling.py", "\nimport llava.constants\n", "drip imports llava"),
    (
        rule_only_the_drip_tower_imports_drip,
        "llava/model/splice.py",
        "\nfrom drip.pooling import segment_ids\n",
        "drip",
    ),
    (rule_heavy_imports_inside_functions, "llava/model/splice.py", "\nimport deepspeed\n", "deepspeed"),
    (rule_no_print_in_library_code, "llava/model/splice.py", "\nprint('x')\n", "print"),
    (rule_no_sys_path_edits, "llava/mm_utils.py", "\nimport sys as _s\n_s.path.insert(0, 'x')\n", "sys.path"),
    (rule_no_sys_path_edits, "llava/mm_utils.py", "\nfrom sys import path as _p\n_p.append('x')\n", "import path"),
    (rule_no_sys_path_edits, "llava/mm_utils.py", "\ngetattr(__import__('sys'), 'path').append('x')\n", "getattr"),
    (rule_no_sys_path_edits, "llava/mm_utils.py", "\nimport site\nsite.addsitedir('x')\n", "addsitedir"),
    (
        rule_no_monkey_patches,
        "llava/model/splice.py",
        "\nimport transformers\ntransformers.LlamaModel.x = 1\n",
        "patch",
    ),
    (rule_no_monkey_patches, "llava/model/splice.py", "\nfrom torch import nn\nnn.Linear.forward = len\n", "torch.nn"),
    (rule_no_monkey_patches, "llava/model/splice.py", "\nfrom torch import nn\nsetattr(nn.Module, 'x', 1)\n", "nn"),
    (rule_no_monkey_patches, "tests/llava/test_splice.py", "\nimport llava.conversation as c\nc.x = None\n", "conv"),
    (rule_no_name_defined_twice, "llava/model/splice.py", "\nclass _Plan:\n    pass\n", "_Plan is defined again"),
    (
        rule_no_name_defined_twice,
        "llava/model/splice.py",
        "\nclass _Twice:\n    def f(self):\n        pass\n\n    def f(self):\n        pass\n",
        "_Twice.f is defined again",
    ),
    (rule_no_reference_outside_the_repository, "llava/model/builder.py", "\nD = '../shared/data'\n", "../shared"),
    (
        rule_no_reference_outside_the_repository,
        "llava/model/builder.py",
        "\nfrom pathlib import Path\nD = Path(__file__).resolve().parents[3] / 'data'\n",
        "climbs 1 folder(s) above",
    ),
    (
        rule_no_reference_outside_the_repository,
        "llava/model/builder.py",
        "\nimport os\nD = os.path.join(os.path.dirname(__file__), '..', 'x')\n",
        "'..' climbs out",
    ),
    (rule_no_reference_outside_the_repository, "drip/config.py", "\nD = '/home/user/data'\n", "absolute path"),
    (rule_no_reference_outside_the_repository, "README.md", "\nsee ../../other-repo/README.md\n", "../../other-repo"),
    (rule_module_size, "drip/pooling.py", "\n" + "x = 1\n" * MAX_LINES, "split it"),
    (rule_module_size, "drip/pooling.py", "\nx = [1,  2]  # fmt: skip\n", "marker"),
]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Repo]:
    """A copy of the repository's files (what the rules read: no .git, .venv, caches or playground/data), parsed."""
    out = tmp_path_factory.mktemp("pristine")
    for path in repo_files(ROOT, TEXT_SUFFIXES):
        dest = out / path.relative_to(ROOT)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest)
    return out, Repo.scan(out)


@pytest.fixture
def scratch(pristine: tuple[Path, Repo], tmp_path: Path) -> Callable[..., Repo]:
    """A fresh copy of the pristine one; call it with (file, edit) pairs to plant, get the checkout parsed."""
    folder, parsed = pristine
    shutil.copytree(folder, tmp_path / "repo")
    root = tmp_path / "repo"

    def plant(*edits: tuple[str, Callable[[str], str]]) -> Repo:
        for rel, edit in edits:
            (root / rel).write_text(edit((root / rel).read_text(encoding="utf-8")), encoding="utf-8")
        return parsed.moved_to(root, tuple(rel for rel, _ in edits))

    return plant


@pytest.mark.parametrize("rule, rel, code, expected", CASES, ids=lambda v: getattr(v, "__name__", None))
def test_a_planted_violation_fails_its_rule(scratch, rule, rel, code, expected):
    assert rule(scratch()) == [], "the rule must hold on the unplanted copy"
    found = rule(scratch((rel, lambda text: text + code)))
    assert any(rel in f and expected in f for f in found), found


def test_ruff_must_cover_every_python_folder(scratch):
    assert rule_ruff_checks_every_python_folder(scratch()) == []
    found = rule_ruff_checks_every_python_folder(scratch(("scripts/test.sh", lambda t: t.replace(" benchmarks", ""))))
    assert any("benchmarks/" in f for f in found), found


def test_the_format_check_must_run(scratch):
    found = rule_ruff_checks_every_python_folder(
        scratch(("scripts/test.sh", lambda t: t.replace("format --check", "x")))
    )
    assert any("ruff format --check" in f for f in found), found


def test_the_oversized_list_only_shrinks(scratch):
    rel = next(iter(OVERSIZED))
    found = rule_module_size(scratch((rel, lambda _: "x = 1\n")))  # split: now small, so it must leave the list
    assert any(f.startswith(rel) and "take it off" in f for f in found), found


def test_known_cycles_match_exactly_and_only_shrink(scratch, monkeypatch):
    monkeypatch.setitem(arch_rules.KNOWN_CYCLES, ("drip.model", "drip.pooling"), "planted")
    found = rule_no_import_cycles(scratch())
    assert any("drip.model <-> drip.pooling is gone" in f for f in found), found  # listed, but no such cycle
    planted = scratch(("drip/pooling.py", lambda text: text + CYCLE))
    report = next(f for f in rule_no_import_cycles(planted) if "import cycle" in f)
    cycle = tuple(report.split("import cycle ")[1].split(" (imports")[0].split(" <-> "))  # every module of it
    monkeypatch.setitem(arch_rules.KNOWN_CYCLES, cycle, "planted")
    monkeypatch.delitem(arch_rules.KNOWN_CYCLES, ("drip.model", "drip.pooling"))
    assert not any("drip.pooling" in f for f in rule_no_import_cycles(planted))  # listed exactly: allowed
