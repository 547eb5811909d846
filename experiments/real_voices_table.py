"""Markdown tables of the real-voice runs: SI-SNRi on the held-out real speakers, per source.

    python experiments/real_voices_table.py --runs runs/real_voices --data data/realpool
    python experiments/real_voices_table.py --workdir runs/galr_voices_8k --data data/realpool

Reads what train.py and eval.py already wrote (``W/config.yaml``, ``W/metrics.jsonl``,
``W/eval/<split>/``) with the model card's readers (:mod:`galr_jax.pretrained.card`), so a
source's figure here is the one a released model's card shows: the mean over the mixtures
one of its speakers takes part in.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import yaml

from galr_jax.config import config_from_saved
from galr_jax.models.summary import count_params
from galr_jax.pretrained.card import (per_source_figures, read_evaluation, read_speakers,
                                      training_record)


def run_row(workdir: pathlib.Path, speakers: list, split: str) -> dict:
    config_path = workdir / "config.yaml"
    config = config_from_saved(yaml.safe_load(config_path.read_text()), str(config_path))
    evaluation = read_evaluation(str(workdir / "eval" / split))
    step = evaluation["summary"]["step"]
    training = training_record(str(workdir), step)
    validations = training["validations"]
    return {"run": workdir.name, "params": count_params(config)[0], "steps": step,
            "train_hours": (training["seconds_in_steps"] or 0.0) / 3600,
            "cv_si_snri": validations[-1][1] if validations else None,
            "si_snri": evaluation["summary"]["si_snri"],
            "per_source": per_source_figures(evaluation["rows"], speakers)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--runs", help="folder of run workdirs (experiments/real_voices.sh)")
    where.add_argument("--workdir", action="append", help="one run's workdir (repeatable)")
    parser.add_argument("--data", required=True, help="the pool (for speakers.csv)")
    parser.add_argument("--split", default="tt")
    args = parser.parse_args(argv)
    speakers = read_speakers(str(pathlib.Path(args.data) / "speakers.csv"))
    workdirs = ([pathlib.Path(w) for w in args.workdir] if args.workdir else
                sorted(p for p in pathlib.Path(args.runs).iterdir()
                       if (p / "eval" / args.split / "summary.json").exists()))
    if not workdirs:
        print(f"no scored runs (eval/{args.split}/summary.json) found", file=sys.stderr)
        return 1
    rows = [run_row(w, speakers, args.split) for w in workdirs]
    sources = sorted({s for r in rows for s in r["per_source"]})
    counts = {s: max(r["per_source"].get(s, {}).get("count", 0) for r in rows) for s in sources}
    print(f"| run | params | steps | train h | cv SI-SNRi | {args.split} SI-SNRi | "
          + " | ".join(f"{s} ({counts[s]})" for s in sources) + " |")
    print("|" + "---|" * (6 + len(sources)))
    for r in rows:
        cv = "" if r["cv_si_snri"] is None else f"{r['cv_si_snri']:.2f}"
        cells = [f"{r['per_source'][s]['si_snri']:.2f}" if s in r["per_source"] else ""
                 for s in sources]
        print(f"| {r['run']} | {r['params'] / 1e3:.1f}k | {r['steps']} | {r['train_hours']:.2f} | "
              f"{cv} | {r['si_snri']:.2f} | " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
