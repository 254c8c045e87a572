"""The tables ``benchmarks/train_step.py`` prints: one row per (tower, layout) and the packing targets per layout.

Kept apart from the benchmark's set-up and timing; ``rows`` maps ``"<config>@<layout>"`` to that run's ``trace``
(token counts, LLM shapes, padding share), ``macs`` (analytic multiply-adds by part), ``time`` (median seconds per
step) and ``mem`` (peak MiB or None).
"""

from __future__ import annotations

TARGET_SLACK = 1.1  # DRIP step-time ratio <= real-token MAC ratio x 1.1
TARGET_PAD = 0.05  # packed: LLM padding share <= 5 % for every tower
TARGET_DRIP4X = 0.75  # packed DRIP-4x real-token MAC ratio vs ViT
TARGET_PDROP = 0.60  # packed DRIP-4x + PDrop step-time ratio vs ViT


def executed(macs: dict[str, float]) -> float:
    return macs["tower"] + macs["projector"] + macs["llm"]


def real_total(macs: dict[str, float]) -> float:
    return macs["tower_real"] + macs["projector"] + macs["llm_real"]


def print_table(rows: dict[str, dict], rounds: int, layouts: list[str]) -> None:
    batch = len(next(iter(rows.values()))["trace"].counts)
    print(
        f"\nLLaVA stage-2 training step, batch {batch}, median of {rounds} interleaved rounds; GMACs: analytic "
        "multiply-adds of the step as executed (tower forward + 3x projector and LLM), real: on real tokens only; "
        "ratios vs ViT in the same layout"
    )
    head = (
        f"{'config':<14}{'layout':<12}{'img tok':>8}{'min-max':>8}{'LLM rows x len':>16}{'pad':>6}{'GMACs':>7}"
        f"{'real':>7}{'ms/step':>9}{'peak MiB':>9}{'time r':>8}{'real r':>7}{'t/real':>7}{'vs pad':>7}"
    )
    print(head + "\n" + "-" * len(head))
    for key, r in rows.items():
        name, layout = key.split("@")
        base = rows[f"ViT@{layout}"]
        tr, macs = r["trace"], r["macs"]
        (b0, t0), (b1, t1) = tr.shapes[0], tr.shapes[-1]
        shape = f"{b0}x{t0}" if (b0, t0) == (b1, t1) else f"{b0}x{t0}>{b1}x{t1}"
        mem = f"{r['mem']:.1f}" if r.get("mem") is not None else "-"
        time_r, real_r = r["time"] / base["time"], real_total(macs) / real_total(base["macs"])
        vs_pad = r["time"] / rows[f"{name}@padded"]["time"] if f"{name}@padded" in rows else float("nan")
        print(
            f"{name:<14}{layout:<12}{tr.counts.float().mean():>8.1f}{f'{int(tr.counts.min())}-{int(tr.counts.max())}':>8}"
            f"{shape:>16}{tr.pad:>6.2f}{executed(macs) / 1e9:>7.2f}{real_total(macs) / 1e9:>7.2f}"
            f"{1e3 * r['time']:>9.1f}{mem:>9}{time_r:>8.3f}{real_r:>7.3f}{time_r / real_r:>7.3f}{vs_pad:>7.3f}"
        )
    for layout in layouts:
        print_targets(rows, layout)


def print_targets(rows: dict[str, dict], layout: str) -> None:
    """The packing targets for one layout (they are stated for the packed default)."""
    base = rows[f"ViT@{layout}"]
    verdict = lambda ok: "met" if ok else "MISSED"
    pads = {k.split("@")[0]: r["trace"].pad for k, r in rows.items() if k.endswith(f"@{layout}")}
    print(
        f"  [{layout}] LLM padding share <= {TARGET_PAD}: {verdict(max(pads.values()) <= TARGET_PAD)} "
        f"(max {max(pads.values()):.3f})"
    )
    for name in ("DRIP-2x", "DRIP-4x", "DRIP-4x+PDrop"):
        r = rows.get(f"{name}@{layout}")
        if r is None:
            continue
        time_r, real_r = r["time"] / base["time"], real_total(r["macs"]) / real_total(base["macs"])
        line = f"  [{layout}] {name}: time ratio {time_r:.3f} <= real-MAC ratio {real_r:.3f} x {TARGET_SLACK}"
        line += f" = {TARGET_SLACK * real_r:.3f}: {verdict(time_r <= TARGET_SLACK * real_r)}"
        if name == "DRIP-4x":
            line += f"; real-MAC ratio <= {TARGET_DRIP4X}: {verdict(real_r <= TARGET_DRIP4X)}"
        if name == "DRIP-4x+PDrop":
            line += f"; time ratio <= {TARGET_PDROP}: {verdict(time_r <= TARGET_PDROP)}"
        print(line)
