"""drip.tools.report: rows join zero-shot, classify, training metrics and FLOPs per run; missing sources stay empty."""

import json

import pytest
import torch

from drip.flops import flops_table
from drip.tools.report import collect_run, main, markdown_table, summarise_metrics


@pytest.fixture(autouse=True)
def _one_thread(_seed_and_threads):
    """Tiny ops: a second intra-op thread only adds barrier waits on the shared 2-core machine (~20x slower)."""
    torch.set_num_threads(1)


def write_run(d, model, top1, top5, tokens=None, rate=None, metrics=(), linear=None, log="metrics.jsonl"):
    d.mkdir(parents=True)
    zs = {"model": model, "top1": top1, "top5": top5, "tokens_per_image": tokens, "boundary_rate": rate}
    (d / "zero_shot.json").write_text(json.dumps(zs))
    if metrics:
        (d / log).write_text("".join(json.dumps(m) + "\n" for m in metrics) + "\n")
    if linear is not None:
        (d / "classify_linear.json").write_text(json.dumps({"model": model, "mode": "linear", "top1": linear}))
    return d


def test_metrics_average_per_epoch_then_over_epochs():
    rows = [
        {"epoch": 1, "step_time_s": 1.0, "peak_mem_mb": 100, "tokens_per_image": 20, "boundary_rate": 0.3},
        {"epoch": 1, "step_time_s": 3.0, "peak_mem_mb": 300, "tokens_per_image": 18, "boundary_rate": 0.28},
        {"epoch": 2, "step_time_s": 4.0, "peak_mem_mb": 200, "tokens_per_image": 16, "boundary_rate": 0.25},
    ]
    m = summarise_metrics(rows)
    assert m["step_time_s"] == pytest.approx((2.0 + 4.0) / 2)  # not the flat mean 8/3
    assert m["peak_mem_mb"] == 300 and m["epochs"] == 2
    assert (m["train_tokens_per_image"], m["train_boundary_rate"]) == (16, 0.25)  # the last epoch
    assert summarise_metrics([{"epoch": 0}])["step_time_s"] is None


def test_report_joins_rows(tmp_path, capsys):
    steps = [{"epoch": e, "step_time_s": t, "peak_mem_mb": mem} for e, t, mem in [(1, 0.5, 900), (2, 0.7, 950)]]
    write_run(tmp_path / "vit", "ViT-tiny", 0.40, 0.80, metrics=steps)
    # drip.tools.train's per-epoch log: CPU memory is RSS (marked in the table)
    drip_metrics = [
        {"epoch": e, "step_time_s": 0.2, "cpu_max_rss_mb": m, "tokens_per_image": 17.0} for e, m in [(1, 400), (2, 410)]
    ]
    write_run(
        tmp_path / "drip", "DRIP-tiny", 0.35, 0.75, 16.5, 0.26, drip_metrics, linear=0.9, log="drip_metrics.jsonl"
    )
    (tmp_path / "bare").mkdir()
    (tmp_path / "bare" / "params.txt").write_text("batch_size: 4\nmodel: not-a-preset\n")
    out = tmp_path / "table.md"
    rows = main(
        ["--runs", f"B={tmp_path / 'vit'}", f"D={tmp_path / 'drip'}", f"X={tmp_path / 'bare'}", "--out", str(out)]
    )
    by = {r["run"]: r for r in rows}
    ref = {r["model"]: r for r in flops_table(["ViT-tiny", "DRIP-tiny"])}
    assert by["B"]["model"] == "ViT-tiny" and by["D"]["model"] == "DRIP-tiny" and by["X"]["model"] == "not-a-preset"
    assert (by["B"]["zs_top1"], by["B"]["zs_top5"], by["D"]["zs_top1"]) == (0.40, 0.80, 0.35)
    assert by["B"]["gflops_complete"] == pytest.approx(ref["ViT-tiny"]["complete_gflops"])
    assert by["D"]["gflops_seed"] == pytest.approx(ref["DRIP-tiny"]["seed_gflops"])
    assert by["D"]["gflops_seed"] < by["B"]["gflops_seed"]
    assert by["B"]["step_time_s"] == pytest.approx(0.6) and by["B"]["peak_mem_mb"] == 950
    assert by["D"]["tokens_per_image"] == 16.5  # the eval-time figure wins over the training log's
    assert (by["D"]["peak_mem_mb"], by["D"]["peak_mem_source"]) == (410, "cpu_max_rss_mb")
    assert by["D"]["linear_top1"] == 0.9 and by["B"]["linear_top1"] is None
    assert by["X"]["gflops_seed"] is None and by["X"]["zs_top1"] is None
    table = out.read_text()
    assert table == capsys.readouterr().out
    lines = table.splitlines()
    assert lines[0].startswith("| run | model | ZS top-1 (%) | ZS top-5 (%) | linear top-1 (%) |")
    assert "finetune" not in lines[0]  # optional column without any value is left out
    cells = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[1:-1]] for line in lines[2:]}
    assert cells["B"][:5] == ["B", "ViT-tiny", "40.0", "80.0", ""]
    assert cells["D"][4] == "90.0" and cells["X"][2:] == [""] * (len(cells["X"]) - 2)
    assert cells["D"][-2:] == ["410 (RSS)", "0.200"] and cells["B"][-2:] == ["950", "0.600"]


def test_report_errors(tmp_path):
    with pytest.raises(SystemExit):
        main(["--runs", "no-equals-sign"])
    with pytest.raises(FileNotFoundError, match="run 'A': directory not found"):
        collect_run("A", tmp_path / "missing")
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "metrics.jsonl").write_text('{"epoch": 1}\n{oops\n')
    with pytest.raises(ValueError, match=r"metrics.jsonl, line 2: not valid JSON"):
        collect_run("R", tmp_path / "r")
    write_run(tmp_path / "m", "ViT-tiny", 0.1, 0.2, linear=0.5)
    (tmp_path / "m" / "classify_linear.json").write_text(json.dumps({"model": "DRIP-tiny", "mode": "linear"}))
    with pytest.raises(ValueError, match="files name different models"):
        collect_run("M", tmp_path / "m")


def test_markdown_table_empty_cells():
    row = {"run": "a", "model": "m", "zs_top1": 0.5}
    assert markdown_table([row]).splitlines()[2].startswith("| a | m | 50.0 |  |")
