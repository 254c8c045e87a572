"""benchmarks/gpu_check runs as the README documents it, from a bare checkout (the project not installed: only the
working directory puts ``drip`` and ``llava`` on the path); every section of its CPU dry run (``--device cpu
--tiny``) produces rows and meets its own checks; the report survives a failing section, is on disk after every
section, and ``--deadline`` skips what is left."""

import json
import os
import site
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks.gpu_check.report import Context, Report
from benchmarks.gpu_check.run import SECTIONS, main

ROOT = Path(__file__).resolve().parents[2]
COMMAND = "python -m benchmarks.gpu_check"  # the README's command on the GPU machine


def bare_run(args: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """Run ``python -m benchmarks.gpu_check ARGS`` in the repository root without the installed project: ``-S`` skips
    site's .pth files (the editable install's finder), PYTHONPATH gives only the third-party packages."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site.getsitepackages())}
    cmd = [sys.executable, "-S", "-m", "benchmarks.gpu_check", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=env)


def test_readme_documents_the_module_command():
    assert COMMAND in (ROOT / "README.md").read_text()


def test_dry_run_from_a_bare_checkout_every_section_ok(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = bare_run(["--device", "cpu", "--tiny", "--compile-backend", "aot_eager", "--json", str(out)])
    assert done.returncode == 0, done.stderr[-3000:]
    data = json.loads(out.read_text())
    assert data["device"] == "cpu"
    assert list(data["sections"]) == list(SECTIONS)
    for key, info in data["sections"].items():
        assert info["status"] == "ok", (key, info.get("error"), info.get("traceback"))
        assert any(r["section"] == key for r in data["rows"]), f"section {key} produced no rows"
    failed = [r for r in data["rows"] if r["ok"] is False]
    assert not failed, failed


def _ctx(deadline=None) -> Context:
    return Context(torch.device("cpu"), True, 2, 2, 1, "eager", deadline=deadline)


def test_json_is_on_disk_after_each_section_and_errors_are_recorded(tmp_path):
    path = tmp_path / "r.json"
    report, ctx, seen = Report(str(path), "cpu"), _ctx(), {}

    def first(ctx, report):
        report.row("a", 1, ok=True)

    def broken(ctx, report):
        seen["on disk"] = json.loads(path.read_text())  # written before this section started
        report.row("b", 2)
        raise RuntimeError("kernel refused")

    def after(ctx, report):
        seen["after error"] = json.loads(path.read_text())
        report.row("c", 3)

    for key, fn in (("A", first), ("B", broken), ("C", after)):
        report.run(key, key, fn, ctx)
    assert seen["on disk"]["sections"]["A"]["status"] == "ok"
    assert [r["check"] for r in seen["on disk"]["rows"]] == ["a"]
    assert seen["after error"]["sections"]["B"]["status"] == "error"
    assert "RuntimeError: kernel refused" in seen["after error"]["sections"]["B"]["error"]
    final = json.loads(path.read_text())
    assert [s["status"] for s in final["sections"].values()] == ["ok", "error", "ok"]
    assert [r["check"] for r in final["rows"]] == ["a", "b", "c"]  # the broken section's rows are kept


def test_deadline_skips_what_is_left(tmp_path):
    path = tmp_path / "r.json"
    report, ctx, ran = Report(str(path), "cpu"), _ctx(deadline=0.2), []

    def slow(ctx, report):
        ran.append("slow")
        time.sleep(0.3)

    def never(ctx, report):
        ran.append("never")

    for key, fn in (("A", slow), ("B", never), ("C", never)):
        report.run(key, key, fn, ctx)
    assert ran == ["slow"]
    statuses = {k: s["status"] for k, s in json.loads(path.read_text())["sections"].items()}
    assert statuses == {"A": "ok", "B": "skipped", "C": "skipped"}


def test_command_line_deadline_and_sections(tmp_path):
    path = tmp_path / "r.json"
    report = main(["--device", "cpu", "--tiny", "--deadline", "0", "--sections", "AH", "--json", str(path)])
    assert {k: s["status"] for k, s in report.sections.items()} == {"A": "skipped", "H": "skipped"}
    assert json.loads(path.read_text())["rows"] == []
