"""The README is the manual and docs/ holds the measured results: what that promise needs, checked.

* every link of the README and of the docs pages leads to a file of the checkout (and to a heading there, when it
  names one), and every docs page is linked from the README;
* every ``python -m MODULE`` and ``python benchmarks/X.py`` the README shows names a module or file that exists;
* no issue numbers in code, docs or tests (commit messages carry them): a reference says what it means by name.

Each check is a function of the text, so the tests below also see each one catch a planted violation.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

from arch_scan import ROOT, TEXT_SUFFIXES, repo_files

LINK = re.compile(r"\]\(([^)\s]+)\)")
COMMAND = re.compile(r"python3? (?:-m ([A-Za-z_][\w.]*)|((?:benchmarks|eval|scripts)/[\w/]+\.py))")
ISSUE_NUMBER = re.compile(r"\bissues?\s?#?\d+|\(#\d+\)", re.IGNORECASE)
PLACEHOLDERS = {"X"}  # `python -m drip.tools.X`: the README's way of naming a family of tools


def anchor(heading: str) -> str:
    """GitHub's anchor of a markdown heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(text: str) -> set[str]:
    """The anchors of every heading outside fenced code blocks."""
    out, fenced = set(), False
    for line in text.splitlines():
        if line.startswith("```"):
            fenced = not fenced
        elif not fenced and re.match(r"#{1,6} ", line):
            out.add(anchor(line.lstrip("#")))
    return out


def broken_links(path: Path) -> list[str]:
    """The relative links in the markdown file ``path`` whose file (or heading) does not exist."""
    text, out = path.read_text(encoding="utf-8"), []
    for ref in LINK.findall(text):
        if re.match(r"[a-z]+:", ref):  # http(s):, mailto:
            continue
        file, _, heading = ref.partition("#")
        target = (path.parent / file) if file else path
        if not target.exists():
            out.append(f"{path.name}: {ref} (no such file)")
        elif heading and heading not in anchors(target.read_text(encoding="utf-8")):
            out.append(f"{path.name}: {ref} (no such heading)")
    return out


def unlinked_pages(readme: str, docs: list[Path]) -> list[str]:
    """The docs pages the README does not link."""
    linked = {ref.partition("#")[0] for ref in LINK.findall(readme)}
    return [p.name for p in docs if f"docs/{p.name}" not in linked]


def missing_commands(readme: str, root: Path) -> list[str]:
    """The modules (``python -m``) and script files (``python path.py``) the README shows that do not exist."""
    out = []
    for module, file in COMMAND.findall(readme):
        if file and not (root / file).is_file():
            out.append(file)
        elif module and module.split(".")[-1] not in PLACEHOLDERS and module.split(".")[0] != "pip":
            top = module.split(".")[0]
            if (root / top).is_dir() and importlib.util.find_spec(module) is None:
                out.append(module)
    return sorted(set(out))


def issue_numbers(path: Path, text: str) -> list[str]:
    """Lines of ``text`` (the file ``path``) that cite an issue by number."""
    return [
        f"{path}:{n}: {m.group(0)!r}"
        for n, line in enumerate(text.splitlines(), 1)
        for m in ISSUE_NUMBER.finditer(line)
    ]


def test_readme_and_docs_links_resolve():
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    assert [b for p in pages for b in broken_links(p)] == []


def test_every_docs_page_is_linked_from_the_readme():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert unlinked_pages(readme, sorted((ROOT / "docs").glob("*.md"))) == []


def test_every_command_the_readme_shows_exists():
    assert missing_commands((ROOT / "README.md").read_text(encoding="utf-8"), ROOT) == []


def test_no_issue_numbers_in_code_docs_or_tests():
    found = [
        hit
        for path in repo_files(ROOT, TEXT_SUFFIXES)
        for hit in issue_numbers(path.relative_to(ROOT), path.read_text(encoding="utf-8", errors="replace"))
    ]
    assert found == []


def test_each_check_catches_a_planted_violation(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "kept.md").write_text("# Kept\n\n## A section\n")
    (tmp_path / "docs" / "orphan.md").write_text("# Orphan\n")
    readme = tmp_path / "README.md"
    readme.write_text(
        "# Manual\n\n[ok](docs/kept.md#a-section) [gone](docs/gone.md) [bad](docs/kept.md#no-section) [self](#manual)\n"
        "```\n# not a heading\n```\n"
        "python -m llava.tools.no_such_tool --x; python benchmarks/no_such.py; python -m drip.tools.X; python -m pip\n"
    )
    assert broken_links(readme) == [
        "README.md: docs/gone.md (no such file)",
        "README.md: docs/kept.md#no-section (no such heading)",
    ]
    assert anchors(readme.read_text()) == {"manual"}
    assert unlinked_pages(readme.read_text(), sorted((tmp_path / "docs").glob("*.md"))) == ["orphan.md"]
    (tmp_path / "llava").mkdir()
    assert missing_commands(readme.read_text(), tmp_path) == ["benchmarks/no_such.py", "llava.tools.no_such_tool"]
    word = "issue"  # the planted citations are built here, so this file cites no issue itself
    cited = f"see {word.title()} 18, {word}s 3 and (#{12}); {word}#7"
    assert len(issue_numbers(Path("x.py"), cited)) == 4
    assert issue_numbers(Path("x.py"), "a known issue; 18 issues-free lines") == []
