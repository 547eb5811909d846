"""Streaming cost of causal GALR configs: algorithmic latency, time per segment step, RTF.

For each config and segment length K it builds the causal model (random weights: the
cost does not depend on their values), streams ``--seconds`` of noise through a
:class:`galr_jax.inference.streaming.StreamingSeparator` in blocks of ``--block-ms``, and
reports the latency (K + 1) L/2 - 1 samples in ms, the mean and 95th-percentile wall time
of one segment step (compilation excluded) and the real-time factor, the steps' total
time over the audio's duration.

One core: run under ``taskset -c 0`` (the process and XLA's thread pools see one CPU) with
XLA's CPU backend told to use one thread for its operations:

    XLA_FLAGS="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1" \\
        taskset -c 0 python benchmarks/streaming.py --out benchmarks/results_streaming.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from galr_jax.config import load_config  # noqa: E402
from galr_jax.inference.streaming import StreamingSeparator  # noqa: E402
from galr_jax.models import build_model  # noqa: E402

CASES = {  # config -> segment lengths K (the config's own first)
    "configs/demo_causal.yaml": (32, 16, 64),
    "configs/galr_1.5m_causal.yaml": (100, 50, 150),
}
_PERCENTILE = 95


def measure(config_path: str, segment_length: int, seconds: float, block_ms: float) -> dict:
    config = load_config(config_path, [f"model.segment_length={segment_length}"])
    model = build_model(config)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 4 * config.model.window)))
    separator = StreamingSeparator(config, variables)
    compile_seconds = separator.warm_up()
    rate = separator.sample_rate
    signal = np.random.default_rng(0).standard_normal(round(seconds * rate)).astype(np.float32)
    block = round(block_ms * rate / 1000)
    for start in range(0, signal.shape[0], block):
        separator.push(signal[start:start + block])
    steps = np.asarray(separator.step_seconds)
    return {
        "config": config_path, "segment_length": segment_length,
        "attention_window": config.model.attention_window,
        "latency_ms": 1e3 * separator.latency_seconds,
        "hop_ms": 1e3 * separator.hop_samples / rate,
        "step_ms_mean": 1e3 * float(steps.mean()),
        f"step_ms_p{_PERCENTILE}": 1e3 * float(np.percentile(steps, _PERCENTILE)),
        "rtf": float(steps.sum()) / seconds,
        "state_kb": separator.state_bytes / 1e3,
        "compile_s": compile_seconds, "steps": int(steps.shape[0]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="audio streamed per case")
    parser.add_argument("--block-ms", type=float, default=20.0, help="input block length")
    parser.add_argument("--configs", nargs="*", default=list(CASES),
                        help="configs to measure (default: both causal configs)")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    rows = []
    print(f"{cpus} CPU(s) usable; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    print("| config | K | latency (ms) | hop (ms) | step mean / p95 (ms) | RTF | state (kB) |")
    print("|---|---|---|---|---|---|---|")
    for config_path in args.configs:
        for segment_length in (CASES.get(config_path)
                               or (load_config(config_path).model.segment_length,)):
            row = measure(config_path, segment_length, args.seconds, args.block_ms)
            rows.append(row)
            print(f"| {os.path.basename(config_path)} | {segment_length} | "
                  f"{row['latency_ms']:.1f} | {row['hop_ms']:.1f} | "
                  f"{row['step_ms_mean']:.2f} / {row[f'step_ms_p{_PERCENTILE}']:.2f} | "
                  f"{row['rtf']:.3f} | {row['state_kb']:.0f} |", flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"cpus": cpus, "xla_flags": os.environ.get("XLA_FLAGS", ""),
                       "machine": platform.processor() or platform.machine(),
                       "seconds": args.seconds, "block_ms": args.block_ms, "rows": rows},
                      f, indent=1)


if __name__ == "__main__":
    main()
