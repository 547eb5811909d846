"""Reference against tuned kernels (``runtime.kernels``) on this machine, in one run.

Usage:
  python benchmarks/kernels.py [--config configs/demo.yaml] [--batch 8] [--seconds 2]
                               [--repeats 5] [--set KEY=VALUE ...] [--out FILE]

Builds the model under each choice (the same weights and batch), compiles its forward
and its train step (forward with dropout + PIT loss + backward + clipping + Adam, as
``benchmarks/run.py``), then times them round-robin (reference forward, reference step,
tuned forward, tuned step, again ...), so a busy shared machine slows every entry alike
and the ratios stay fair. Peak memory is XLA's estimate for each compiled call
(arguments + outputs + temporaries). Prints one line per choice and the
reference / tuned ratios; ``--out`` also writes them as JSON.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from galr_jax.config import add_override_argument, load_config  # noqa: E402

import measure  # noqa: E402
from jax_case import JaxCase, _peak_bytes  # noqa: E402

CHOICES = ("reference", "tuned")
MB = 1e6


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(REPO / "configs" / "demo.yaml"))
    parser.add_argument("--batch", type=int, default=8, help="examples per step (demo: 8)")
    parser.add_argument("--seconds", type=float, default=2.0, help="example length (demo: 2)")
    parser.add_argument("--repeats", type=int, default=5, help="timed calls of each")
    parser.add_argument("--out", help="also write the results here as JSON")
    add_override_argument(parser, dest="set")
    args = parser.parse_args(argv)

    base = load_config(args.config, args.set)
    rng = np.random.default_rng(0)
    samples = int(args.seconds * base.model.sample_rate)
    sources = rng.standard_normal((args.batch, base.model.num_sources, samples)).astype(np.float32)
    mixture = sources.sum(axis=1)
    cases = {}
    for kernels in CHOICES:
        config = load_config(args.config, [*args.set, f"runtime.kernels={kernels}"])
        cases[kernels] = JaxCase(config, mixture, sources, base.train.learning_rate,
                                 base.train.clip_grad_norm)
    runs = {}
    for kernels, case in cases.items():
        case.run_forward()  # one untimed call each: first-call allocations
        case.run_step()
        runs[f"{kernels} forward"] = case.run_forward
        runs[f"{kernels} step"] = case.run_step
    times = measure.interleaved_times(runs, args.repeats)

    results = {"config": args.config, "overrides": args.set, "batch": args.batch,
               "seconds": args.seconds, "repeats": args.repeats,
               "cpu": measure.cpu_name(), "threads": measure.cpu_threads(),
               "backend": jax.default_backend(), "choices": {}}
    for kernels, case in cases.items():
        results["choices"][kernels] = {
            "forward_s": measure.median(times[f"{kernels} forward"]),
            "step_s": measure.median(times[f"{kernels} step"]),
            "forward_peak_mb": _peak_bytes(case._forward) / MB,
            "step_peak_mb": _peak_bytes(case._step) / MB,
            "step_compile_s": case.compile_s,
        }
    reference, tuned = (results["choices"][k] for k in CHOICES)
    results["reference_over_tuned"] = {key: reference[key] / tuned[key]
                                       for key in ("forward_s", "step_s", "step_peak_mb")}
    print(f"{args.config}, batch {args.batch} x {args.seconds} s, {results['cpu']} "
          f"({results['threads']} threads), median of {args.repeats}:")
    for kernels, r in results["choices"].items():
        print(f"  {kernels:9s} forward {r['forward_s'] * 1e3:8.1f} ms  step "
              f"{r['step_s'] * 1e3:8.1f} ms  peak forward {r['forward_peak_mb']:7.1f} MB  "
              f"step {r['step_peak_mb']:7.1f} MB  (step compile {r['step_compile_s']:.1f} s)")
    ratio = results["reference_over_tuned"]
    print(f"  reference / tuned: forward {ratio['forward_s']:.2f}x, step {ratio['step_s']:.2f}x, "
          f"step peak memory {ratio['step_peak_mb']:.2f}x")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(results, indent=1) + "\n")
    return results


if __name__ == "__main__":
    main()
