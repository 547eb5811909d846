"""Cost of GALR against a DPRNN of the same size, in one run: the paper's claim in miniature.

Usage:
  python benchmarks/galr_vs_dprnn.py [--config pretrained/galr_voices_8k]
      [--dprnn model.separator=dprnn model.hidden=46] [--batch 8] [--seconds 2]
      [--repeats 7] [--out benchmarks/results_galr_vs_dprnn.json]

Both models come from one config (default: the released model's recipe); the DPRNN is the
same config with ``--dprnn``'s overrides (default: 3 DPRNN blocks of 46 units, 310.7k
parameters against GALR's 306.9k, the pair experiments/real_voices.sh trains). For each it
compiles the training step (forward with dropout + PIT loss + backward + clipping + Adam,
benchmarks/jax_case.py) at the recipe's batch and crop, and reports:

* GFLOP per step: XLA's count with every LSTM loop unrolled (every step counted), and the
  matrix products alone (what PyTorch's FlopCounterMode counts);
* peak memory of the step: XLA's memory analysis of the compiled executable;
* steps/s: the medians of ``--repeats`` round-robin timings (both models in the same rounds,
  so their ratio is fair on a shared machine).

The quality side of the comparison (SI-SNRi on the held-out real speakers at equal steps)
is experiments/real_voices_table.py's; docs/pretrained.md puts the two together.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.training.host_memory import keep_freed_memory  # noqa: E402

HOST_ALLOCATOR = "kept" if keep_freed_memory() else "system"  # before XLA allocates

import jax  # noqa: E402

from galr_jax.config import load_config  # noqa: E402

import measure  # noqa: E402
from jax_case import JaxCase  # noqa: E402
from report import GFLOP, MB  # noqa: E402
from run import machine_info, make_batch  # noqa: E402

DEFAULT_DPRNN = ("model.separator=dprnn", "model.hidden=46")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="pretrained/galr_voices_8k",
                        help="a shipped config's name or a YAML path (the GALR side)")
    parser.add_argument("--dprnn", nargs="+", default=list(DEFAULT_DPRNN), metavar="KEY=VALUE",
                        help="overrides that turn the config into the DPRNN compared")
    parser.add_argument("--batch", type=int, help="default: the config's train.batch_size")
    parser.add_argument("--seconds", type=float, help="default: the config's data.crop_seconds")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results_galr_vs_dprnn.json"))
    return parser.parse_args(argv)


def measure_pair(args) -> list[dict]:
    configs = {"galr": load_config(args.config), "dprnn": load_config(args.config, args.dprnn)}
    recipe = configs["galr"]
    batch = args.batch or recipe.train.batch_size
    seconds = args.seconds or recipe.data.crop_seconds
    model = recipe.model
    mixture, sources = make_batch(batch, int(round(seconds * model.sample_rate)),
                                  model.num_sources, model.sample_rate)
    cases = {name: JaxCase(config, mixture, sources, config.train.learning_rate,
                           config.train.clip_grad_norm) for name, config in configs.items()}
    records = []
    for name, case in cases.items():
        case.run_step()  # optimizer state allocated, first call out of the timings
        stats = case.static_stats()
        records.append({"model": name, "separator": case.config.model.separator,
                        "hidden": case.config.model.hidden, "batch": batch, "seconds": seconds,
                        "params": stats["params"], "step_gflop": stats["step_flops"] / GFLOP,
                        "step_matmul_gflop": stats["step_matmul_flops"] / GFLOP,
                        "step_peak_mb": stats["step_peak_bytes"] / MB,
                        "compile_s": case.compile_s})
    times = measure.interleaved_times({n: c.run_step for n, c in cases.items()}, args.repeats)
    for record in records:
        record["step_s_all"] = times[record["model"]]
        record["step_s"] = measure.median(times[record["model"]])
        record["steps_per_s"] = 1.0 / record["step_s"]
    return records


def print_table(records: list[dict]) -> None:
    galr, dprnn = records
    print(f"batch {galr['batch']} x {galr['seconds']:g} s, {jax.device_count()} device(s), "
          f"{jax.devices()[0].platform}")
    print("| model | params | GFLOP/step | matmul GFLOP/step | peak MB | steps/s |")
    print("|---|---|---|---|---|---|")
    for r in records:
        print(f"| {r['separator']} (hidden {r['hidden']}) | {r['params'] / 1e3:.1f}k | "
              f"{r['step_gflop']:.1f} | {r['step_matmul_gflop']:.1f} | {r['step_peak_mb']:.0f} | "
              f"{r['steps_per_s']:.2f} |")
    print(f"| GALR / DPRNN | {galr['params'] / dprnn['params']:.3f} | "
          f"{galr['step_gflop'] / dprnn['step_gflop']:.3f} | "
          f"{galr['step_matmul_gflop'] / dprnn['step_matmul_gflop']:.3f} | "
          f"{galr['step_peak_mb'] / dprnn['step_peak_mb']:.3f} | "
          f"{galr['steps_per_s'] / dprnn['steps_per_s']:.3f} |")


def main(argv=None) -> None:
    args = parse_args(argv)
    records = measure_pair(args)
    print_table(records)
    out = {"settings": {"config": args.config, "dprnn": args.dprnn, "repeats": args.repeats},
           "machine": machine_info(measure.cpu_threads()), "records": records}
    pathlib.Path(args.out).write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
