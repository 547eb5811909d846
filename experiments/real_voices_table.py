"""Markdown tables of the real-voice runs: SI-SNRi on the held-out real speakers, per source.

    python experiments/real_voices_table.py --runs runs/real_voices --data data/realpool
    python experiments/real_voices_table.py --workdir runs/galr_voices_8k --data data/realpool

Reads what train.py and eval.py already wrote: ``W/config.yaml``, ``W/metrics.jsonl`` and
``W/eval/tt/{summary.json,per_utterance.csv}``. A test mixture's id names its two speakers
(``<index>_<speaker a>_<speaker b>``); it counts towards the source of each, so a source's
figure is the mean over every mixture with one of its speakers in it.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys

import jax
import jax.numpy as jnp
import yaml

from galr_jax.config import config_from_saved
from galr_jax.models.separation import build_model


def speaker_sources(data: pathlib.Path) -> dict[str, str]:
    with open(data / "speakers.csv", newline="") as f:
        return {row["name"]: row["source"] for row in csv.DictReader(f)}


def mixture_speakers(mixture_id: str, speakers: dict[str, str]) -> tuple[str, str]:
    """The two speakers named in ``<index>_<a>_<b>`` (speaker names contain underscores)."""
    rest = mixture_id.split("_", 1)[1]
    for name in speakers:
        if rest.startswith(name + "_") and rest[len(name) + 1:] in speakers:
            return name, rest[len(name) + 1:]
    raise ValueError(f"mixture {mixture_id!r}: its speakers are not in speakers.csv")


def parameter_count(workdir: pathlib.Path) -> int:
    config = config_from_saved(yaml.safe_load((workdir / "config.yaml").read_text()),
                               str(workdir / "config.yaml"))
    shapes = jax.eval_shape(build_model(config).init, jax.random.PRNGKey(0),
                            jnp.zeros((1, config.data.sample_rate)))
    return sum(leaf.size for leaf in jax.tree.leaves(shapes["params"]))


def training_record(workdir: pathlib.Path) -> dict:
    """Steps, training seconds (from each logged interval's rate) and the last validation."""
    steps, seconds, last_step, val = 0, 0.0, 0, None
    for line in (workdir / "metrics.jsonl").read_text().splitlines():
        record = json.loads(line)
        if "steps_per_second" in record and record["steps_per_second"] > 0:
            seconds += (record["step"] - last_step) / record["steps_per_second"]
        last_step = steps = record["step"]
        if "val_si_snri" in record:
            val = record["val_si_snri"]
    return {"steps": steps, "train_hours": seconds / 3600, "cv_si_snri": val}


def score(workdir: pathlib.Path, sources: dict[str, str], split: str) -> dict:
    folder = workdir / "eval" / split
    summary = json.loads((folder / "summary.json").read_text())
    per_source: dict[str, list[float]] = {}
    with open(folder / "per_utterance.csv", newline="") as f:
        for row in csv.DictReader(f):
            for speaker in set(mixture_speakers(row["id"], sources)):
                per_source.setdefault(sources[speaker], []).append(float(row["si_snri"]))
    return {"si_snri": summary["si_snri"], "count": summary["count"],
            "per_source": {s: sum(v) / len(v) for s, v in sorted(per_source.items())},
            "per_source_count": {s: len(v) for s, v in sorted(per_source.items())}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--runs", help="folder of run workdirs (experiments/real_voices.sh)")
    where.add_argument("--workdir", action="append", help="one run's workdir (repeatable)")
    parser.add_argument("--data", required=True, help="the pool (for speakers.csv)")
    parser.add_argument("--split", default="tt")
    args = parser.parse_args(argv)
    sources = speaker_sources(pathlib.Path(args.data))
    workdirs = ([pathlib.Path(w) for w in args.workdir] if args.workdir else
                sorted(p for p in pathlib.Path(args.runs).iterdir()
                       if (p / "eval" / args.split / "summary.json").exists()))
    if not workdirs:
        print(f"no scored runs (eval/{args.split}/summary.json) found", file=sys.stderr)
        return 1
    rows = []
    for w in workdirs:
        rows.append({"run": w.name, "params": parameter_count(w), **training_record(w),
                     **score(w, sources, args.split)})
    source_names = sorted({s for r in rows for s in r["per_source"]})
    counts = {s: max(r["per_source_count"].get(s, 0) for r in rows) for s in source_names}
    print(f"| run | params | steps | train h | cv SI-SNRi | {args.split} SI-SNRi | "
          + " | ".join(f"{s} ({counts[s]})" for s in source_names) + " |")
    print("|" + "---|" * (6 + len(source_names)))
    for r in rows:
        cv = "" if r["cv_si_snri"] is None else f"{r['cv_si_snri']:.2f}"
        print(f"| {r['run']} | {r['params'] / 1e3:.1f}k | {r['steps']} | {r['train_hours']:.2f} | "
              f"{cv} | {r['si_snri']:.2f} | "
              + " | ".join(f"{r['per_source'].get(s, float('nan')):.2f}" for s in source_names)
              + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
