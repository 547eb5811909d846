"""The model card of a released model, written from what the run and its scoring recorded.

Everything on the card comes from files, never from memory: the checkpoint's config
(architecture, augmentation, schedule), the workdir's ``metrics.jsonl`` (steps, time
in training steps, validation history) and ``versions.json``, the voice pool's
``speakers.csv`` (source, licence and split of every speaker) and ``eval.py`` output
folders (``summary.json`` and ``per_utterance.csv``, scored per source of the test
speakers). The sections a person must judge (intended use, limitations) are fixed
text that states the model's actual limits from its config.
"""

from __future__ import annotations

import collections
import csv
import json
import os
from typing import Any, Mapping, Optional, Sequence

from galr_jax.pretrained import PretrainedError
from galr_jax.training.logs import read_metrics

VERSIONS_FILE = "versions.json"
SUMMARY_FILE = "summary.json"
PER_UTTERANCE_FILE = "per_utterance.csv"
# Fields the card reads from every speakers.csv row.
SPEAKER_COLUMNS = ("name", "source", "split", "real", "seconds", "licence")
POOL_INFO_FILE = "info.json"
SUMMARY_METRICS = ("si_snri", "sdri", "pesq", "stoi")


def read_speakers(path: str) -> list[dict]:
    """Rows of a voice pool's ``speakers.csv`` (see :mod:`galr_jax.data.pool`)."""
    try:
        with open(path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise PretrainedError(f"{path}: cannot read the speakers table ({e})") from e
    missing = [c for c in SPEAKER_COLUMNS if rows and c not in rows[0]]
    if not rows or missing:
        raise PretrainedError(f"{path}: not a speakers table (needs columns "
                              f"{', '.join(SPEAKER_COLUMNS)}; missing {missing or 'all rows'})")
    return rows


def read_evaluation(folder: str) -> dict:
    """``summary.json`` and ``per_utterance.csv`` of one ``eval.py --out`` folder."""
    summary_path = os.path.join(folder, SUMMARY_FILE)
    rows_path = os.path.join(folder, PER_UTTERANCE_FILE)
    try:
        with open(summary_path, encoding="utf-8") as f:
            summary = json.load(f)
        with open(rows_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    except (OSError, ValueError) as e:
        raise PretrainedError(f"{folder}: not an eval.py output folder ({e})") from e
    if "si_snri" not in summary or "step" not in summary:
        raise PretrainedError(f"{summary_path}: no si_snri/step; not written by eval.py")
    return {"summary": summary, "rows": rows}


def utterance_sources(utterance_id: str, speaker_source: Mapping[str, str]) -> Optional[tuple]:
    """The sources of the two speakers of a pool mixture ``<index>_<speaker1>_<speaker2>``.

    Speaker names contain underscores, so every split point is tried; ``None`` when
    the id does not name two known speakers (e.g. a corpus other than the pool).
    """
    _, _, names = utterance_id.partition("_")
    parts = names.split("_")
    for cut in range(1, len(parts)):
        first, second = "_".join(parts[:cut]), "_".join(parts[cut:])
        if first in speaker_source and second in speaker_source:
            return speaker_source[first], speaker_source[second]
    return None


def per_source_figures(rows: Sequence[dict], speakers: Sequence[dict]) -> dict:
    """Mean SI-SNRi of the mixtures each source's speakers take part in.

    A mixture of two sources counts for both; one of a source with itself counts once.
    Returns ``{source: {"si_snri": mean, "count": mixtures}}``; empty when the ids
    do not name pool speakers.
    """
    speaker_source = {s["name"]: s["source"] for s in speakers}
    scores: dict = collections.defaultdict(list)
    for row in rows:
        sources = utterance_sources(row["id"], speaker_source)
        for source in set(sources or ()):
            scores[source].append(float(row["si_snri"]))
    return {source: {"si_snri": sum(v) / len(v), "count": len(v)}
            for source, v in sorted(scores.items())}


def training_record(workdir: str, step: int) -> dict:
    """What the workdir's logs say about training up to ``step``.

    ``seconds_in_steps`` adds up each logged interval's steps over its measured rate
    (``steps_per_second`` excludes validation), so it is the time spent training,
    without startup, validation, checkpoints or pauses between resumed runs.
    """
    record: dict = {"seconds_in_steps": None, "validations": [], "versions": {}}
    entries = read_metrics(workdir)
    if entries:
        seconds, previous = 0.0, 0
        # A resumed run logs the steps after its checkpoint again; the last entry of a step wins.
        by_step = {e["step"]: e for e in entries if "step" in e}
        for entry_step in sorted(s for s in by_step if s <= step):
            entry = by_step[entry_step]
            if entry.get("steps_per_second"):
                seconds += (entry_step - previous) / entry["steps_per_second"]
            previous = entry_step
            if "val_si_snri" in entry:
                record["validations"].append((entry_step, entry["val_si_snri"]))
        record["seconds_in_steps"] = seconds
    versions_path = os.path.join(workdir, VERSIONS_FILE)
    if os.path.isfile(versions_path):
        with open(versions_path, encoding="utf-8") as f:
            record["versions"] = json.load(f)
    return record


def read_pool_info(speakers_path: str) -> dict:
    """``{source: [Debian/PyPI packages]}`` from the pool's ``info.json`` beside its
    speakers table; empty when absent (the card then names sources only)."""
    path = os.path.join(os.path.dirname(os.path.abspath(speakers_path)), POOL_INFO_FILE)
    try:
        with open(path, encoding="utf-8") as f:
            sources = json.load(f).get("sources", {})
    except (OSError, ValueError):
        return {}
    return {name: list(info.get("packages", [])) for name, info in sources.items()
            if isinstance(info, dict)}


def _sources_table(speakers: Sequence[dict], packages: Mapping[str, list]) -> list[str]:
    by_source: dict = collections.OrderedDict()
    for s in speakers:
        entry = by_source.setdefault(s["source"], {"splits": collections.Counter(), "seconds": 0.0,
                                                   "licences": [], "real": s["real"]})
        entry["splits"][s["split"]] += 1
        entry["seconds"] += float(s["seconds"] or 0)
        if s["licence"] not in entry["licences"]:
            entry["licences"].append(s["licence"])
    lines = ["| source | packages | real / synthetic | speakers tr / cv / tt | minutes of speech "
             "| licence |", "|---|---|---|---|---|---|"]
    for source, e in by_source.items():
        kind = "real" if str(e["real"]).lower() == "true" else "synthetic"
        counts = " / ".join(str(e["splits"][split]) for split in ("tr", "cv", "tt"))
        lines.append(f"| {source} | {', '.join(packages.get(source, [])) or '-'} | {kind} | "
                     f"{counts} | {e['seconds'] / 60:.1f} | "
                     f"{'; '.join(e['licences'])} |")
    return lines


def _figures_table(evaluations: Mapping[str, dict]) -> list[str]:
    present = [m for m in SUMMARY_METRICS
               if any(m in e["summary"] for e in evaluations.values())]
    lines = ["| split | utterances | " + " | ".join(f"{m} mean / median" for m in present) + " |",
             "|---|---|" + "---|" * len(present)]
    for split, e in evaluations.items():
        s = e["summary"]
        cells = [f"{s[m]:.2f} / {s[f'{m}_median']:.2f}" if m in s else "-" for m in present]
        lines.append(f"| {split} | {s['count']} | " + " | ".join(cells) + " |")
    return lines


def _augmentation(data: Any) -> list[str]:
    lines = []
    if data.dynamic_mixing:
        lines.append(f"- dynamic mixing: every example pairs sources of random training "
                     f"utterances afresh, each at a gain uniform in "
                     f"±{data.dynamic_mixing_gain_db} dB (the loader does not know speakers, "
                     f"so now and then both are the same voice)")
    if data.augment_speed:
        lines.append(f"- speed perturbation: per source, factor uniform in "
                     f"[{1 - data.augment_speed:g}, {1 + data.augment_speed:g}] (moves pitch and "
                     "formants together: a new virtual speaker)")
    if data.augment_gain_db:
        lines.append(f"- gain: per example, uniform in ±{data.augment_gain_db} dB")
    if data.augment_band_prob:
        lines.append(f"- band-limiting / EQ: per source, probability {data.augment_band_prob}")
    if data.augment_reverb_prob:
        lines.append(f"- simulated room reverberation (pyroomacoustics, {data.augment_rooms} rooms): "
                     f"per example, probability {data.augment_reverb_prob}")
    return lines or ["- none"]


def _hours(seconds: Optional[float]) -> str:
    return "unknown" if seconds is None else f"{seconds / 3600:.2f} h"


def render(name: str, config: Any, manifest: Mapping[str, Any], training: Mapping[str, Any],
           speakers: Optional[Sequence[dict]], evaluations: Mapping[str, dict],
           notes: str = "", packages: Optional[Mapping[str, list]] = None) -> str:
    """The card's markdown. ``evaluations``: ``{split: read_evaluation(...)}``;
    ``packages``: :func:`read_pool_info`."""
    m, d, t = config.model, config.data, config.train
    rate_khz = f"{m.sample_rate / 1000:g} kHz"
    lines = [
        f"# {name}", "",
        f"{m.separator.upper()} speech separation: one {rate_khz} mono recording of "
        f"{m.num_sources} people talking at once in, one signal per person out. "
        f"{manifest['num_parameters']:,} parameters ({manifest['params_bytes'] / 2**20:.1f} MiB).",
        "", "## Use", "", "```",
        f"galr-separate --model {name} mixture.wav --out separated/",
        "```", "", "```python", "from galr_jax.inference import Separator",
        f"sources = Separator.from_pretrained({name!r}).separate(\"mixture.wav\")  # [C, T]",
        "```", "",
        "Inputs at another sample rate are resampled, multi-channel inputs averaged; outputs "
        "come out at the mixture's level (least-squares gains).", "",
        "## Intended use", "",
        f"Separating two overlapping talkers in clean or mildly reverberant {rate_khz} speech "
        "(telephone band), for research, demos and as a starting point for fine-tuning. "
        "Not for identifying people, nor for evidence: it rewrites audio.", "",
        "## Model", "",
        "| field | value |", "|---|---|",
        *[f"| model.{k} | {v} |" for k, v in vars(m).items()], "",
        "## Training data", "",
    ]
    if speakers:
        splits = collections.defaultdict(set)
        for s in speakers:
            splits[s["split"]].add(s["source"])
        test = [s for s in speakers if s["split"] == "tt"]
        real = sum(str(s["real"]).lower() == "true" for s in test)
        lines += _sources_table(speakers, packages or {}) + [
            "",
            f"Splits are speaker-disjoint. Test (tt): {len(test)} speakers never heard in "
            f"training, {real} of them real people, from "
            f"{', '.join(sorted(splits['tt']))}. Validation (cv): "
            f"{', '.join(sorted(splits['cv']))}. Training (tr): {', '.join(sorted(splits['tr']))}.",
        ]
    else:
        lines.append(f"No speakers table was given; the data root was `{d.root}`.")
    lines += ["", "Augmentation (seeded per example):", "", *_augmentation(d), "",
              "## Training", "",
              f"- recipe: `{manifest.get('recipe') or 'not recorded'}`",
              f"- steps: {manifest['step']} of {t.num_steps}, batch {t.batch_size} "
              f"({d.crop_seconds:g} s crops), Adam lr {t.learning_rate:g}, {t.schedule} schedule, "
              f"seed {t.seed}",
              f"- time in training steps: {_hours(training.get('seconds_in_steps'))}"
              + (f"; wall time as measured: {_hours(manifest['wall_seconds'])}"
                 if manifest.get("wall_seconds") else ""),
              f"- hardware: {training.get('versions', {}).get('devices', 'not recorded')}; "
              f"jax {training.get('versions', {}).get('jax', '?')}, commit "
              f"{training.get('versions', {}).get('git_commit', 'not recorded')}"]
    if training.get("validations"):
        history = ", ".join(f"{s}: {v:.2f}" for s, v in training["validations"])
        lines.append(f"- validation SI-SNRi (dB) by step during training: {history}")
    lines += ["", "## Results", ""]
    if evaluations:
        lines += ["Whole utterances, scored by `eval.py` (SI-SNRi/SDRi in dB):", "",
                  *_figures_table(evaluations)]
        for split, e in evaluations.items():
            per_source = manifest["figures"][split].get("per_source")
            if per_source:
                lines += ["", f"Per source of the {split} speakers (a mixture counts for both of "
                              "its speakers' sources):", "",
                          "| source | mixtures | SI-SNRi mean |", "|---|---|---|",
                          *[f"| {s} | {v['count']} | {v['si_snri']:.2f} |"
                            for s, v in per_source.items()]]
    else:
        lines.append("Not scored at release (no eval.py output was given).")
    lines += [
        "", "## Limitations", "",
        f"- {rate_khz} only: higher rates are resampled down, so everything above "
        f"{m.sample_rate / 2000:g} kHz is lost.",
        f"- Exactly {m.num_sources} speakers: a recording with one speaker, or more than "
        f"{m.num_sources}, still gives {m.num_sources} outputs.",
        f"- Short training: {manifest['step']} steps on a CPU, far from the paper's budget; "
        "expect far lower figures than on wsj0-2mix papers.",
        "- The training voices are few (prompts, letters, words, synthetic voices); noise, "
        "music and real rooms were not in training (reverberation is simulated).",
    ]
    if notes.strip():
        lines += ["", "## Notes", "", notes.strip()]
    return "\n".join(lines) + "\n"
