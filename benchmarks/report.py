"""Markdown tables of a ``benchmarks/run.py`` JSON file, as pasted into docs/benchmarks.md.

Usage:
  python benchmarks/report.py benchmarks/results.json [more.json ...]
"""

from __future__ import annotations

import argparse
import json

MB = 1e6  # decimal units throughout docs/benchmarks.md
GFLOP = 1e9


def fmt(value, scale=1.0, digits=2) -> str:
    """``value / scale`` with ``digits`` decimals, or "-" for a missing figure."""
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def _table(header, rows) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def report(result: dict) -> str:
    machine = result["machine"]
    out = [f"`{result['command']}` ({result['wall_s'] / 60:.0f} min): {machine['cpu']}, "
           f"{machine['threads']} threads, jax {machine['jax']}, torch {machine.get('torch', '-')}, "
           f"float32 matmul peak {result['matmul_peak_flops'] / GFLOP:.0f} GFLOP/s, load "
           f"average {machine['load_average_start'][0]:.1f} -> {machine['load_average_end'][0]:.1f}, "
           f"overrides {result['settings']['overrides'] or 'none'}, host allocator "
           f"{machine.get('host_allocator', 'system')}"
           + (f", XLA_FLAGS {machine['xla_flags']}" if machine.get("xla_flags") else "")
           + ".", ""]
    header = ("model", "s", "framework", "params", "fwd GFLOP", "step GFLOP", "fwd MB",
              "step MB", "compile s", "fwd s", "step s", "fwd % peak", "step % peak")
    rows = [(r["model"], f"{r['seconds']:g}", r["framework"], f"{r['params']:,}",
             fmt(r["fwd_matmul_flops"], GFLOP, 1), fmt(r["step_matmul_flops"], GFLOP, 1),
             fmt(r["fwd_peak_bytes"], MB, 0), fmt(r["step_peak_bytes"], MB, 0),
             fmt(r["compile_s"], 1, 1), fmt(r["fwd_s"], 1, 3), fmt(r["step_s"], 1, 3),
             f"{100 * r['fwd_fraction_of_peak']:.0f}", f"{100 * r['step_fraction_of_peak']:.0f}")
            for r in result["results"]]
    out += [_table(header, rows), ""]
    ratios = result["ratios"]
    if ratios["jax_over_torch"]:
        header = ("model", "s", "torch/JAX fwd time", "torch/JAX step time",
                  "JAX/torch fwd RSS", "JAX/torch step RSS")
        rows = [(r["model"], f"{r['seconds']:g}", fmt(1 / r["fwd_s"]), fmt(1 / r["step_s"]),
                 fmt(r["fwd_rss_peak_bytes"]), fmt(r["step_rss_peak_bytes"]))
                for r in ratios["jax_over_torch"]]
        out += ["Speed-up of JAX over PyTorch (above 1: JAX faster) and memory ratios:", "",
                _table(header, rows), ""]
    if ratios["galr_over_dprnn"]:
        header = ("pair", "framework", "s", "fwd ops", "step ops", "fwd memory", "step memory",
                  "fwd time", "step time")
        rows = [(f"{r['model']} / {r['dprnn']}", r["framework"],
                 f"{r['seconds']:g}", fmt(r["fwd_flops"], 1, 3),
                 fmt(r["step_flops"], 1, 3), fmt(r["fwd_peak_bytes"], 1, 3),
                 fmt(r["step_peak_bytes"], 1, 3), fmt(r["fwd_s"], 1, 3),
                 fmt(r["step_s"], 1, 3)) for r in ratios["galr_over_dprnn"]]
        out += ["GALR / DPRNN (paper, GALR 1.5M: operations 0.506, memory 0.639):", "",
                _table(header, rows), ""]
    if result.get("long_audio"):
        la = result["long_audio"]
        out += [f"Long audio: {la['audio_seconds']} s separated in {la['wall_seconds']} s "
                f"(real-time factor {la['real_time_factor']}), peak RSS {la['peak_rss_mb']} MB.",
                ""]
    return "\n".join(out)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("results", nargs="+", help="JSON files written by benchmarks/run.py")
    args = parser.parse_args(argv)
    for path in args.results:
        with open(path) as f:
            print(report(json.load(f)))


if __name__ == "__main__":
    main()
