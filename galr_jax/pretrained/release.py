"""Release a trained run as a named pretrained model (a folder of the registry).

    python -m galr_jax.pretrained.release --workdir runs/galr_voices_8k --name galr_voices_8k \
        --eval tt=runs/galr_voices_8k/eval/tt --eval cv=runs/galr_voices_8k/eval/cv
    galr-release ...   (the same command, installed)

Takes the newest checkpoint of the workdir (``--step N`` for another) and writes
``ROOT/NAME/{config.yaml,params.msgpack,manifest.json,card.md}`` (see
:mod:`galr_jax.pretrained`; ROOT is the package's registry, or ``--root`` /
``$GALR_PRETRAINED_DIR``). The folder is written under a temporary name in ROOT and
renamed into place when complete, so ROOT never holds a half-written model; an
existing model is replaced only with ``--force``.

The card and the manifest's figures come from files: ``--eval SPLIT=DIR`` names an
``eval.py --out DIR`` folder of the same step (checked), scored per source with the
pool's ``speakers.csv`` (``--speakers``; default ``DATA_ROOT/speakers.csv`` of the
run's config). The usual order::

    python eval.py --workdir W --which latest --data DATA --split tt --out W/eval/tt
    python eval.py --workdir W --which latest --data DATA --split cv --out W/eval/cv
    python -m galr_jax.pretrained.release --workdir W --name NAME --eval tt=W/eval/tt \
        --eval cv=W/eval/cv [--wall-hours H] [--notes ablations.md]

Exit status 2 for a usage, checkpoint or file error (nothing is written then).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import sys
import tempfile
from typing import Any, Optional, Sequence

import yaml

from galr_jax import pretrained
from galr_jax.cli_logging import configure_logging
from galr_jax.config import (ConfigError, SCHEMA_VERSION, SCHEMA_VERSION_KEY, config_to_dict,
                             load_config)
from galr_jax.pretrained import card as cards
from galr_jax.training.checkpoints import CheckpointError, restore_variables

EXIT_USAGE = 2
RECIPE_DIR = os.path.join("configs", "pretrained")
SPEAKERS_CSV = "speakers.csv"


def inference_config(config: Any) -> dict:
    """What a pretrained model's ``config.yaml`` keeps: the architecture, the sample rate
    of its data, and the eval section (chunking of long recordings). Data paths,
    training and runtime settings of the run mean nothing to a user and are left out."""
    tree = config_to_dict(config)
    return {SCHEMA_VERSION_KEY: SCHEMA_VERSION, "model": tree["model"],
            "data": {"sample_rate": tree["data"]["sample_rate"]}, "eval": tree["eval"]}


class PretrainedUsage(pretrained.PretrainedError):
    """A release request that cannot be met; says which argument."""


def _parse_evals(items: Sequence[str]) -> dict:
    evals = {}
    for item in items:
        split, sep, folder = item.partition("=")
        if not sep or not split or not folder:
            raise PretrainedUsage(f"--eval {item!r}: expected SPLIT=DIR, e.g. tt=runs/x/eval/tt")
        evals[split] = folder
    return evals


def _check_recipe(recipe: Optional[str], config: Any) -> Optional[str]:
    """The recipe path to record, after checking that it builds the released architecture."""
    if recipe is None:
        return None
    try:
        recipe_config = load_config(recipe)
    except (ConfigError, FileNotFoundError) as e:
        raise PretrainedUsage(f"--recipe: {e}") from e
    if recipe_config.model != config.model:
        raise PretrainedUsage(f"--recipe {recipe}: its model section differs from the "
                              "checkpoint's; it is not the recipe of this run")
    return recipe


def build_release(workdir: str, name: str, step: Optional[int] = None,
                  recipe: Optional[str] = None, evals: Optional[dict] = None,
                  speakers: Optional[str] = None, wall_seconds: Optional[float] = None,
                  notes: str = "") -> dict:
    """The files of a release, in memory: ``{file name: bytes}``.

    Raises:
      CheckpointError: no such checkpoint (PretrainedError is one).
    """
    from flax import serialization
    import jax
    import numpy as np

    pretrained.check_name(name)
    variables, meta = restore_variables(workdir, which="latest" if step is None else step)
    config = meta["config"]
    variables = jax.tree.map(np.asarray, variables)
    params = serialization.to_bytes(variables)
    released_step = int(meta["step"])
    evaluations = {split: cards.read_evaluation(folder) for split, folder in (evals or {}).items()}
    for split, evaluation in evaluations.items():
        scored = evaluation["summary"]["step"]
        if scored != released_step:
            raise PretrainedUsage(f"--eval {split}={evals[split]}: scored step {scored}, but step "
                                  f"{released_step} is being released; score that step "
                                  f"(eval.py --which {released_step})")
    if speakers is None:
        default = os.path.join(config.data.root, SPEAKERS_CSV)
        speakers = default if os.path.isfile(default) else None
    speaker_rows = cards.read_speakers(speakers) if speakers else None
    figures = {}
    for split, evaluation in evaluations.items():
        summary = evaluation["summary"]
        figures[split] = {k: summary[k] for k in
                          ("si_snri", "si_snri_median", "sdri", "sdri_median", "count")
                          if k in summary}
        if speaker_rows:
            figures[split]["per_source"] = cards.per_source_figures(evaluation["rows"],
                                                                    speaker_rows)
    training = cards.training_record(workdir, released_step)
    manifest = {
        "name": name,
        "format_version": pretrained.FORMAT_VERSION,
        "separator": config.model.separator,
        "sample_rate": config.model.sample_rate,
        "num_speakers": config.model.num_sources,
        "num_parameters": int(sum(np.size(leaf) for leaf in jax.tree.leaves(variables))),
        "params_file": pretrained.PARAMS_FILE,
        "params_sha256": hashlib.sha256(params).hexdigest(),
        "params_bytes": len(params),
        "recipe": _check_recipe(recipe, config),
        "step": released_step,
        "num_steps": config.train.num_steps,
        "seconds_in_steps": training["seconds_in_steps"],
        "wall_seconds": wall_seconds,
        "validation_metrics": meta.get("metrics") or {},
        "git_commit": training["versions"].get("git_commit"),
        "speakers_table": os.path.abspath(speakers) if speakers else None,
        "figures": figures,
    }
    card = cards.render(name, config, manifest, training, speaker_rows, evaluations, notes,
                        cards.read_pool_info(speakers) if speakers else {})
    return {
        pretrained.CONFIG_FILE: yaml.safe_dump(inference_config(config), sort_keys=False).encode(),
        pretrained.PARAMS_FILE: params,
        pretrained.MANIFEST_FILE: (json.dumps(manifest, indent=2) + "\n").encode(),
        pretrained.CARD_FILE: card.encode(),
    }


def write_release(files: dict, name: str, root: str, force: bool = False) -> str:
    """Writes ``root/name/`` from ``files`` all at once; returns the folder.

    The files go into a dot-prefixed temporary folder beside the target (same file
    system), which is renamed into place: a reader sees the old model or the new one,
    never part of one. With ``force`` an existing model is first renamed aside, then
    deleted once the new one is in place.
    """
    target = os.path.join(root, pretrained.check_name(name))
    if os.path.exists(target) and not force:
        raise PretrainedUsage(f"{target}: exists; --force replaces it")
    os.makedirs(root, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.release-", dir=root)
    try:
        for file_name, data in files.items():
            with open(os.path.join(staging, file_name), "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.chmod(staging, 0o755)  # mkdtemp's 0700 would hide an installed model from others
        old = None
        if os.path.exists(target):
            old = tempfile.mkdtemp(prefix=f".{name}.replaced-", dir=root)
            os.rename(target, os.path.join(old, name))
        os.rename(staging, target)
        if old:
            shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def _parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="galr-release", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True, help="the training workdir to release")
    parser.add_argument("--name", required=True, help="the model's name (lower case, e.g. "
                                                      "galr_voices_8k)")
    parser.add_argument("--step", type=int, default=None,
                        help="checkpoint step to release (default: the newest)")
    parser.add_argument("--root", default=None,
                        help=f"registry directory (default: ${pretrained.ROOT_ENV}, else the "
                             "installed package's galr_jax/pretrained)")
    parser.add_argument("--recipe", default=None,
                        help=f"the recipe to record (default: {RECIPE_DIR}/NAME.yaml if it "
                             "exists); must build the checkpoint's architecture")
    parser.add_argument("--eval", dest="evals", action="append", default=[],
                        metavar="SPLIT=DIR", help="an eval.py --out folder of the released step "
                                                  "(repeatable: tt=..., cv=...)")
    parser.add_argument("--speakers", default=None,
                        help=f"the voice pool's {SPEAKERS_CSV} (default: DATA_ROOT/{SPEAKERS_CSV} "
                             "of the run's config, if present)")
    parser.add_argument("--wall-hours", type=float, default=None,
                        help="measured wall time of the run, for the card")
    parser.add_argument("--notes", default=None, metavar="FILE",
                        help="markdown appended to the card (e.g. ablation tables)")
    parser.add_argument("--force", action="store_true", help="replace an existing model")
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the CLI; returns the exit status."""
    args = _parse_args(argv)
    configure_logging(logging.ERROR)  # Orbax's read-only notices
    recipe = args.recipe
    if recipe is None and os.path.isfile(os.path.join(RECIPE_DIR, f"{args.name}.yaml")):
        recipe = os.path.join(RECIPE_DIR, f"{args.name}.yaml")
    try:
        notes = ""
        if args.notes:
            with open(args.notes, encoding="utf-8") as f:
                notes = f.read()
        files = build_release(args.workdir, args.name, args.step, recipe,
                              _parse_evals(args.evals), args.speakers,
                              None if args.wall_hours is None else args.wall_hours * 3600, notes)
        root = pretrained.registry_root(args.root)
        folder = write_release(files, args.name, root, args.force)
    except (CheckpointError, ConfigError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    manifest = json.loads(files[pretrained.MANIFEST_FILE])
    print(f"released {folder}: step {manifest['step']}, {manifest['num_parameters']:,} "
          f"parameters, {pretrained.PARAMS_FILE} {manifest['params_bytes'] / 2**20:.2f} MiB "
          f"(sha256 {manifest['params_sha256'][:12]})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
