"""Benchmark GALR and DPRNN in JAX against the PyTorch reference, in one run.

Usage:
  python benchmarks/run.py [--quick] [--out FILE] [--configs NAME ...] [--seconds S ...]
                           [--set runtime.compute_dtype=bfloat16] [--long-audio SECONDS]

For every model config and input length it builds the JAX model and the PyTorch
reference, measures parameters, operations, peak memory and compile time, then times
the forward and the train step of both frameworks round-robin (with a large matmul
that measures the machine's peak in the same rounds), prints a table and writes JSON.
docs/benchmarks.md explains every number.

PyTorch's OpenMP threads busy-wait between parallel regions by default; on a machine
shared with other processes that makes the reference several times slower than it
really is. Unless OMP_WAIT_POLICY is already set, this script sets it to PASSIVE
before PyTorch loads, and records the value in the JSON.

Both frameworks run with the host allocator settings that ``train.py`` uses
(:mod:`galr_jax.training.host_memory`: freed memory stays in the process, so no call pays for
page faults on its buffers); ``GALR_JAX_SYSTEM_MALLOC=1`` measures glibc's defaults.
The JSON records which. The long-audio run (a subprocess) measures ``galr-separate``
as it runs, without them.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import subprocess
import sys
import tempfile
import time

# Must precede the first import of torch (libgomp reads it once); see the module docstring.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from galr_jax.training.host_memory import keep_freed_memory  # noqa: E402

HOST_ALLOCATOR = "kept" if keep_freed_memory() else "system"  # before XLA or torch allocate

import jax  # noqa: E402
import numpy as np  # noqa: E402

from galr_jax.config import add_override_argument, load_config  # noqa: E402

import measure  # noqa: E402
from jax_case import JaxCase  # noqa: E402
from report import GFLOP, MB, fmt  # noqa: E402

FULL_CONFIGS = ("galr_1.5m", "galr_2.3m", "dprnn")
QUICK_CONFIGS = ("galr_1.5m", "dprnn")
FULL_SECONDS = (4.0, 1.0)
QUICK_SECONDS = (1.0,)
FULL_REPEATS = 7
QUICK_REPEATS = 3
BATCH = 4
MATMUL_SIZE = 2048
# Published recipe (spec sec. 5): Adam 1e-3, clipping at global norm 5.
LEARNING_RATE = 1e-3
CLIP_NORM = 5.0
# GALR / DPRNN in the paper's abstract: 49.4% fewer operations, 36.1% less memory.
PAPER_OPS_RATIO = 0.506
PAPER_MEMORY_RATIO = 0.639
# The paper's low-cost GALR against DPRNN, at window 16 and at window 2.
GALR_DPRNN_PAIRS = {"galr_1.5m": "dprnn", "galr_w2": "dprnn_w2"}
LONG_AUDIO_CONFIG = "galr_1.5m"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"configs {', '.join(QUICK_CONFIGS)}, {QUICK_SECONDS[0]:g} s only, "
                             f"{QUICK_REPEATS} repeats (a few minutes on 2 cores)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results.json"),
                        help="JSON output file (default: benchmarks/results.json)")
    parser.add_argument("--configs", nargs="+",
                        help="config names in configs/ or YAML paths "
                             f"(default: {' '.join(FULL_CONFIGS)})")
    parser.add_argument("--seconds", nargs="+", type=float,
                        help="input lengths in seconds (default: 4 1)")
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--repeats", type=int, help="timed rounds (default: 7, quick: 3)")
    parser.add_argument("--frameworks", nargs="+", default=["jax", "torch"],
                        choices=["jax", "torch"])
    add_override_argument(parser, dest="set")
    parser.add_argument("--long-audio", type=float, metavar="SECONDS",
                        help=f"also separate a synthetic recording this long with "
                             f"{LONG_AUDIO_CONFIG} (benchmarks/long_audio.py); 3600 for the target")
    args = parser.parse_args(argv)
    if args.long_audio and args.set:
        parser.error("--long-audio separates with the config as it is; drop --set")
    args.configs = args.configs or list(QUICK_CONFIGS if args.quick else FULL_CONFIGS)
    args.seconds = args.seconds or list(QUICK_SECONDS if args.quick else FULL_SECONDS)
    args.repeats = args.repeats or (QUICK_REPEATS if args.quick else FULL_REPEATS)
    return args


def config_path(name: str) -> pathlib.Path:
    path = pathlib.Path(name)
    if path.suffix in (".yaml", ".yml"):
        return path
    return REPO / "configs" / f"{name}.yaml"


def make_batch(batch: int, num_samples: int, num_sources: int, sample_rate: int):
    """Random sources and their sum, ``[B, T]`` and ``[B, C, T]`` float32."""
    rng = np.random.default_rng(sample_rate)
    sources = rng.standard_normal((batch, num_sources, num_samples), dtype=np.float32)
    return sources.sum(axis=1), sources


def case_classes(frameworks):
    classes = {"jax": JaxCase}
    if "torch" in frameworks:
        try:
            from torch_case import TorchCase
        except ImportError as e:
            raise SystemExit(f"--frameworks torch needs PyTorch ({e}); pip install torch==2.13.0")
        classes["torch"] = TorchCase
    return [classes[name] for name in frameworks]


def benchmark_one(name, seconds, args, classes, matmul, matmul_times):
    """All figures of one config at one input length, every framework in the same rounds."""
    config = load_config(config_path(name), args.set)
    model = config.model
    num_samples = int(round(seconds * model.sample_rate))
    mixture, sources = make_batch(args.batch, num_samples, model.num_sources, model.sample_rate)
    cases = [cls(config, mixture, sources, LEARNING_RATE, CLIP_NORM) for cls in classes]
    records = []
    for case in cases:
        case.run_forward()
        case.run_step()  # allocates optimizer state before memory is measured
        record = {"model": name, "seconds": seconds, "batch": args.batch,
                  "framework": case.framework, **case.static_stats(), **case.rss_stats(),
                  **case.device_stats(),
                  "compile_s": case.compile_s, "fwd_compile_s": case.fwd_compile_s}
        for key in ("fwd", "step"):  # eager PyTorch has no compiled executable to analyse
            measured = record.get(f"{key}_device_peak_bytes", record[f"{key}_rss_peak_bytes"])
            record.setdefault(f"{key}_peak_bytes", measured)
        records.append(record)
    runs = {"matmul": matmul}
    for case in cases:
        runs[f"{case.framework}/fwd"] = case.run_forward
        runs[f"{case.framework}/step"] = case.run_step
    times = measure.interleaved_times(runs, args.repeats)
    matmul_times.extend(times.pop("matmul"))
    for record in records:
        for key in ("fwd", "step"):
            samples = times[f"{record['framework']}/{key}"]
            record[f"{key}_s"] = measure.median(samples)
            record[f"{key}_s_all"] = samples
    print(f"  {name} {seconds:g} s: " + ", ".join(
        f"{r['framework']} fwd {r['fwd_s']:.3f} s step {r['step_s']:.3f} s" for r in records),
        flush=True)
    return records


def _ratio(a, b):
    return None if a is None or b is None or not b else a / b


def add_derived(records, matmul_peak_flops):
    """FLOP/s as a fraction of the matmul peak, and the two families of ratios."""
    for r in records:
        r["fwd_flops_per_s"] = r["fwd_matmul_flops"] / r["fwd_s"]
        r["step_flops_per_s"] = r["step_matmul_flops"] / r["step_s"]
        r["fwd_fraction_of_peak"] = r["fwd_flops_per_s"] / matmul_peak_flops
        r["step_fraction_of_peak"] = r["step_flops_per_s"] / matmul_peak_flops
    index = {(r["model"], r["seconds"], r["framework"]): r for r in records}
    jax_over_torch, galr_over_dprnn = [], []
    for (model, seconds, framework), r in index.items():
        torch_r = index.get((model, seconds, "torch"))
        if framework == "jax" and torch_r:
            jax_over_torch.append({
                "model": model, "seconds": seconds,
                **{k: _ratio(r[k], torch_r[k]) for k in (
                    "fwd_s", "step_s", "fwd_matmul_flops", "step_matmul_flops",
                    "fwd_rss_peak_bytes", "step_rss_peak_bytes")}})
        dprnn_r = index.get((GALR_DPRNN_PAIRS.get(model), seconds, framework))
        if dprnn_r:
            galr_over_dprnn.append({
                "model": model, "dprnn": GALR_DPRNN_PAIRS[model],
                "framework": framework, "seconds": seconds,
                **{k: _ratio(r[k], dprnn_r[k]) for k in (
                    "fwd_flops", "step_flops", "fwd_matmul_flops", "step_matmul_flops",
                    "fwd_peak_bytes", "step_peak_bytes", "fwd_s", "step_s")},
                "paper_ops_ratio": PAPER_OPS_RATIO, "paper_memory_ratio": PAPER_MEMORY_RATIO})
    return {"jax_over_torch": jax_over_torch, "galr_over_dprnn": galr_over_dprnn}


def print_tables(records, ratios, machine) -> None:
    print(f"\n{machine['cpu']}, {machine['threads']} threads, "
          f"matmul peak {machine['matmul_peak_flops'] / 1e9:.1f} GFLOP/s, load average "
          f"{machine['load_average_start'][0]:.1f} -> {machine['load_average_end'][0]:.1f}")
    header = ("model", "sec", "fw", "params", "fwd GF", "step GF", "fwd MB", "step MB",
              "compile s", "fwd s", "step s", "fwd %pk")
    rows = [(r["model"], f"{r['seconds']:g}", r["framework"], f"{r['params']:,}",
             fmt(r["fwd_flops"], GFLOP, 1), fmt(r["step_flops"], GFLOP, 1),
             fmt(r["fwd_peak_bytes"], MB, 0), fmt(r["step_peak_bytes"], MB, 0),
             fmt(r["compile_s"], 1, 1), fmt(r["fwd_s"], 1, 3), fmt(r["step_s"], 1, 3),
             fmt(100 * r["fwd_fraction_of_peak"], 1, 0)) for r in records]
    _print_rows(header, rows)
    if ratios["jax_over_torch"]:
        print("\nJAX / PyTorch (time: lower is better for JAX)")
        _print_rows(("model", "sec", "fwd time", "step time", "fwd ops", "step ops",
                     "fwd RSS", "step RSS"),
                    [(r["model"], f"{r['seconds']:g}", fmt(r["fwd_s"]), fmt(r["step_s"]),
                      fmt(r["fwd_matmul_flops"]), fmt(r["step_matmul_flops"]),
                      fmt(r["fwd_rss_peak_bytes"]), fmt(r["step_rss_peak_bytes"]))
                     for r in ratios["jax_over_torch"]])
    if ratios["galr_over_dprnn"]:
        print(f"\nGALR / DPRNN (paper: ops {PAPER_OPS_RATIO}, memory {PAPER_MEMORY_RATIO})")
        _print_rows(("pair", "fw", "sec", "fwd ops", "step ops", "fwd mm ops", "step mm ops",
                     "fwd mem", "step mem", "fwd time", "step time"),
                    [(f"{r['model']}/{r['dprnn']}", r["framework"], f"{r['seconds']:g}",
                      *(fmt(r[k], 1, 3) for k in (
                        "fwd_flops", "step_flops", "fwd_matmul_flops", "step_matmul_flops",
                        "fwd_peak_bytes", "step_peak_bytes", "fwd_s", "step_s")))
                     for r in ratios["galr_over_dprnn"]])


def _print_rows(header, rows) -> None:
    widths = [max(len(str(row[i])) for row in (header, *rows)) for i in range(len(header))]
    for row in (header, *rows):
        print("  ".join(str(cell).rjust(width) for cell, width in zip(row, widths)))


def long_audio(seconds: float) -> dict:
    """Runs benchmarks/long_audio.py in a fresh process (its peak RSS is its own)."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "long_audio.json")
        command = [sys.executable, str(REPO / "benchmarks" / "long_audio.py"),
                   "--config", str(config_path(LONG_AUDIO_CONFIG)),
                   "--seconds", str(int(seconds)), "--json", out]
        subprocess.run(command, check=True, cwd=REPO,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
        with open(out) as f:
            return json.load(f)


def machine_info(threads: int) -> dict:
    info = {"cpu": measure.cpu_name(), "threads": threads, "platform": platform.platform(),
            "python": platform.python_version(), "jax": jax.__version__,
            "jax_backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "xla_flags": os.environ.get("XLA_FLAGS", ""),
            "host_allocator": HOST_ALLOCATOR,
            "load_average_start": os.getloadavg()}
    try:
        import torch
        info["torch"] = torch.__version__
    except ImportError:
        pass
    return info


def main(argv=None) -> None:
    args = parse_args(argv)
    started = time.perf_counter()
    threads = measure.cpu_threads()
    classes = case_classes(args.frameworks)
    if "torch" in args.frameworks:
        import torch
        torch.set_num_threads(threads)  # XLA's CPU client already uses one thread per core
    machine = machine_info(threads)
    matmul = measure.MatmulPeak(MATMUL_SIZE)
    matmul_times, records = [], []
    for name in args.configs:
        for seconds in args.seconds:
            records += benchmark_one(name, seconds, args, classes, matmul, matmul_times)
    machine["matmul_peak_flops"] = matmul.flops / measure.median(matmul_times)
    machine["matmul_size"] = MATMUL_SIZE
    machine["load_average_end"] = os.getloadavg()
    ratios = add_derived(records, machine["matmul_peak_flops"])
    print_tables(records, ratios, machine)
    long_audio_result = None
    if args.long_audio:
        long_audio_result = long_audio(args.long_audio)
        print(f"\nlong audio ({LONG_AUDIO_CONFIG}): {long_audio_result['audio_seconds']} s in "
              f"{long_audio_result['wall_seconds']} s, real-time factor "
              f"{long_audio_result['real_time_factor']}, peak RSS "
              f"{long_audio_result['peak_rss_mb']} MB")
    result = {
        "command": " ".join(["python", "benchmarks/run.py", *(argv or sys.argv[1:])]),
        "machine": machine, "matmul_peak_flops": machine["matmul_peak_flops"],
        "settings": {"configs": args.configs, "seconds": args.seconds, "batch": args.batch,
                     "repeats": args.repeats, "overrides": args.set},
        "results": records, "ratios": ratios, "long_audio": long_audio_result,
        "wall_s": time.perf_counter() - started,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(out.suffix + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    os.replace(tmp, out)
    print(f"\nwrote {out} ({result['wall_s']:.0f} s)")


if __name__ == "__main__":
    main()
