"""Results table: runs' metric JSONs joined into Markdown, and the accuracy-vs-FLOPs PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from eval import results_table


def _run_dir(root: Path, name: str, files: dict[str, dict]) -> str:
    folder = root / name
    folder.mkdir()
    for file_name, data in files.items():
        (folder / file_name).write_text(json.dumps(data))
    return f"{name}={folder}"


def test_table_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    llava = _run_dir(
        tmp_path,
        "clip",
        {
            "sqa_result.json": {"accuracy": 69.5138, "img_accuracy": 68.2201, "total": 4241},
            "llavabench_summary.json": {"config": "clip", "categories": {"all": {"relative": 63.44}}},
            "llavabench_rule_summary.json": {"config": "clip", "categories": {"all": {"relative": 41.26}}},
            "efficiency.json": {
                "visual_tokens_mean": 576,
                "tower_gflops": 349.2,
                "llm_prefill_tflops": 8.75,
                "seconds_per_answer": 0.4126,
            },
        },
    )
    drip = _run_dir(
        tmp_path,
        "drip4x",
        {
            "sqa_result.json": {"accuracy": 67.0, "img_accuracy": None},
            "efficiency.json": {"visual_tokens_mean": 143.6, "tower_gflops": 120.0, "prefill_flops": 2.5e12},
        },
    )
    sqa_only = _run_dir(tmp_path, "textonly", {"sqa_result.json": {"accuracy": 60.0, "img_accuracy": 50.0}})
    tiny = _run_dir(
        tmp_path,
        "tiny",
        {
            "sqa_result.json": {"accuracy": 70.5, "img_accuracy": 70.56},
            "efficiency.json": {"visual_tokens_mean": 16.9, "tower_gflops": 0.007464, "llm_prefill_tflops": 2.1e-5},
        },
    )
    md, png = tmp_path / "out" / "table.md", tmp_path / "out" / "plot.png"
    no_img = _run_dir(tmp_path, "noimg", {"sqa_result.json": {"accuracy": 55.0, "img_accuracy": None}})
    runs = ["--run", llava, "--run", drip, "--run", sqa_only, "--run", tiny, "--run", no_img]
    argv = [*runs, "--output-md", str(md), "--output-png", str(png)]
    assert results_table.main(argv) == 0
    captured = capsys.readouterr()
    lines = md.read_text().splitlines()
    assert captured.out == md.read_text()
    assert lines[0].startswith(
        "| Run | SQA acc (%) | SQA-IMG acc (%) | LLaVA-Bench rel. (%) | LLaVA-Bench rule score (%) | Visual tokens |"
    )
    assert lines[2] == "| clip | 69.51 | 68.22 | 63.4 | 41.3 | 576.0 | 349.2 | 8.75 | 9.099 | 0.413 |"
    assert lines[3] == "| drip4x | 67.00 | - | - | - | 143.6 | 120 | 2.5 | 2.62 | - |"
    assert lines[4] == "| textonly | 60.00 | 50.00 | - | - | - | - | - | - | - |"
    assert lines[5] == "| tiny | 70.50 | 70.56 | - | - | 16.9 | 0.007464 | 2.1e-05 | 2.846e-05 | - |"  # no zeros
    assert "drawn as a dashed SQA-IMG line (no total_tflops): textonly" in captured.err
    assert "not plotted (no total_tflops): noimg" in captured.err
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_bad_inputs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    assert results_table.main(["--run", f"e={empty}"]) == 2
    assert "none of sqa_result.json" in capsys.readouterr().err
    bad = _run_dir(tmp_path, "bad", {"efficiency.json": {"tower_gflops": "lots"}})
    assert results_table.main(["--run", bad]) == 2
    assert "efficiency.json: tower_gflops is not a number" in capsys.readouterr().err
    no_flops = _run_dir(tmp_path, "noflops", {"sqa_result.json": {"accuracy": 1.0}})
    assert results_table.main(["--run", no_flops, "--output-png", str(tmp_path / "p.png")]) == 2
    assert "nothing to plot" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        results_table.main(["--run", "no-equals-sign"])


def test_runs_judged_by_different_models_are_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    def summary(judges: list[str]) -> dict:
        return {"llavabench_summary.json": {"categories": {"all": {"relative": 60.0}}, "judge_models": judges}}

    a = _run_dir(tmp_path, "a", summary(["gpt-4-0314"]))
    b = _run_dir(tmp_path, "b", summary(["gpt-4-0314"]))
    c = _run_dir(tmp_path, "c", summary(["local-judge"]))
    assert results_table.main(["--run", a, "--run", b]) == 0
    assert "warning" not in capsys.readouterr().err
    assert results_table.main(["--run", a, "--run", c]) == 0
    assert "not comparable (a: gpt-4-0314; c: local-judge)" in capsys.readouterr().err
