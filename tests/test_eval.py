"""``eval.py``: per-utterance CSV and summary, bad corpus files, devices, parity with training."""

from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

from galr_jax.evaluation import cli as evaluate_checkpoint
from galr_jax.data import open_split
from galr_jax.models import build_model
from galr_jax.training.checkpoints import CHECKPOINT_SUBDIR, restore_variables
from galr_jax.training.validation import Validator
from inference_helpers import (SAMPLE_RATE, TINY_EVAL, make_checkpoint, run_cli, speech_like,
                               tiny_config, write_wav)

BUCKETS = [int(s * SAMPLE_RATE) for s in TINY_EVAL["bucket_seconds"]]


def _write_utterance(root: str, name: str, sources: np.ndarray, mixture=None, rate=SAMPLE_RATE,
                     skip=()) -> None:
    mixture = sources.sum(axis=0) if mixture is None else mixture
    for folder, signal in [("mix", mixture), ("s1", sources[0]), ("s2", sources[1])]:
        if folder not in skip:
            write_wav(os.path.join(root, "tt", folder, f"{name}.wav"), signal, rate)


def _corpus(root: str) -> tuple[list[str], dict]:
    """A test split with good utterances of several lengths and a zoo of bad files.

    Returns:
      ``(good ids, {bad id: what makes it bad})``.
    """
    for folder in ("mix", "s1", "s2"):
        os.makedirs(os.path.join(root, "tt", folder))
    good = []
    for i, seconds in enumerate([0.3, 0.45, 0.8, 1.1, 1.7, 2.6]):  # every bucket, and past them
        _write_utterance(root, f"good_{i}", speech_like(seconds, seed=i))
        good.append(f"good_{i}")
    silent = speech_like(0.6, seed=9)
    silent[1] = 0.0  # SI-SNR against a silent reference is undefined: must stay finite
    _write_utterance(root, "silent reference", silent)
    loud = speech_like(0.6, seed=10) * 40
    _write_utterance(root, "loud ü", loud, mixture=np.clip(loud.sum(axis=0), -1, 1))
    good += ["silent reference", "loud ü"]
    # Shorter than one encoder window: scored like any utterance (as validation does), finite.
    for name, length in (("one sample", 1), ("ten samples", 10)):
        _write_utterance(root, name, speech_like(0.1, seed=length)[:, :length] + 0.01)
        good.append(name)
    mix_dir = os.path.join(root, "tt", "mix")
    pcm24 = speech_like(0.7, seed=11)
    for folder, signal in [("mix", pcm24.sum(axis=0)), ("s1", pcm24[0]), ("s2", pcm24[1])]:
        write_wav(os.path.join(root, "tt", folder, "pcm24.wav"), signal, subtype="PCM_24")
    good.append("pcm24")
    bad = {"missing_s2": "missing source", "rate": "sample rate", "nan": "NaN/Inf",
           "stereo": "channels",
           "text": "not a readable audio file", "empty": "empty file", "loop": "symlink loop",
           "truncated": "truncated"}
    _write_utterance(root, "missing_s2", speech_like(0.5), skip=("s2",))
    _write_utterance(root, "rate", speech_like(0.5, sample_rate=16000), rate=16000)
    stereo = speech_like(0.5)
    _write_utterance(root, "stereo", stereo, mixture=np.stack([stereo.sum(0)] * 2, axis=1))
    nan = speech_like(0.5)
    nan[0, 7] = np.nan
    _write_utterance(root, "nan", nan)
    for name in ("text", "empty", "loop", "truncated"):
        _write_utterance(root, name, speech_like(0.5))
    with open(os.path.join(mix_dir, "text.wav"), "w") as f:
        f.write("not audio")
    open(os.path.join(mix_dir, "empty.wav"), "w").close()
    os.unlink(os.path.join(mix_dir, "loop.wav"))
    os.symlink("loop.wav", os.path.join(mix_dir, "loop.wav"))
    path = os.path.join(mix_dir, "truncated.wav")
    with open(path, "rb") as f:
        data = f.read()
    with open(path, "wb") as f:
        f.write(data[:len(data) - 1000])
    return good, bad


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("corpus"))
    good, bad = _corpus(root)
    return root, good, bad


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp("run"))
    make_checkpoint(os.path.join(workdir, CHECKPOINT_SUBDIR), step=12)
    return workdir


@pytest.fixture(scope="module")
def single_device_run(corpus, workdir):
    root, _, _ = corpus
    result = run_cli(["eval.py", "--workdir", workdir, "--data", root, "--split", "tt",
                      "--save-audio", "2", "--quiet"])
    assert result.returncode == 0, result.stderr[-3000:]
    out = os.path.join(workdir, "eval", "tt")
    with open(os.path.join(out, "summary.json")) as f:
        summary = json.load(f)
    with open(os.path.join(out, "per_utterance.csv"), newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return result, summary, rows, out


def test_eval_writes_csv_summary_and_skips_bad_files(corpus, single_device_run):
    _, good, bad = corpus
    result, summary, rows, out = single_device_run
    assert sorted(row["id"] for row in rows) == sorted(good)
    assert list(rows[0]) == ["id", "length", "si_snr", "si_snri", "sdr", "sdri", "permutation"]
    for row in rows:
        values = [float(row[k]) for k in ("si_snr", "si_snri", "sdr", "sdri")]
        assert np.isfinite(values).all(), row
        assert sorted(int(p) for p in row["permutation"].split()) == [0, 1]
    assert summary["count"] == len(good) and summary["step"] == 12
    assert summary["si_snri"] == pytest.approx(np.mean([float(r["si_snri"]) for r in rows]))
    assert summary["sdri"] == pytest.approx(np.mean([float(r["sdri"]) for r in rows]))
    assert summary["skipped"] == len(bad)
    problems = " | ".join(f"{s['file']}: {s['problem']}" for s in summary["skipped_files"])
    for name, problem in bad.items():
        assert name in problems and problem in problems, (name, problem, problems)
    assert "si_snri" in result.stdout and "sdri" in result.stdout  # the printed table
    audio = sorted(os.listdir(os.path.join(out, "audio")))
    assert len(audio) == 2 * 5 and all(name.endswith(".wav") for name in audio)


def test_eval_compiles_one_shape_per_bucket(single_device_run):
    _, summary, rows, _ = single_device_run
    lengths = {tuple(shape)[1] for shape in summary["compiled_shapes"]}
    batch = {tuple(shape)[0] for shape in summary["compiled_shapes"]}
    # Utterances longer than the largest bucket round up to a multiple of it.
    allowed = set(BUCKETS) | {-(-int(r["length"]) // BUCKETS[-1]) * BUCKETS[-1] for r in rows}
    assert lengths <= allowed and len(lengths) <= len(allowed)
    assert batch == {TINY_EVAL["batch_size"]}
    assert len(summary["compiled_shapes"]) < len(rows)


def test_eval_on_two_devices_matches_one(corpus, workdir, single_device_run, tmp_path):
    root, _, _ = corpus
    result = run_cli(["eval.py", "--workdir", workdir, "--data", root, "--split", "tt", "--no-sdr",
                      "--out", str(tmp_path), "--quiet"], num_devices=2)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / "summary.json") as f:
        summary = json.load(f)
    assert len(summary["devices"]) == 2
    assert summary["si_snri"] == pytest.approx(single_device_run[1]["si_snri"], abs=1e-3)
    assert "sdri" not in summary


def test_eval_equals_training_validation(corpus, workdir, tmp_path):
    """eval.py's SI-SNRi is the number training's validation reports for the same weights."""
    root, good, _ = corpus
    variables, meta = restore_variables(workdir)
    # One bucket holding every utterance: each side compiles a single shape.
    config = tiny_config(data={"root": root, "valid_split": "tt"}, eval={"bucket_seconds": [3.0]})
    dataset = open_split(config.data, "tt", 2, cache_dir=str(tmp_path))
    validation = Validator(config, dataset, build_model(config)).run(variables["params"])
    summary = evaluate_checkpoint.evaluate_checkpoint(
        config, variables, meta, "tt", str(tmp_path / "out"), cache_dir=str(tmp_path),
        compute_sdr=False, progress=False)
    assert validation["val_utterances"] == summary["count"] == len(good)
    assert summary["si_snri"] == pytest.approx(validation["val_si_snri"], abs=0.1)
    assert summary["si_snri"] == pytest.approx(validation["val_si_snri"], abs=1e-4)


# The check of eval.py on the demo ([2, 4, 8] s against [16] s), scaled to this
# corpus: small buckets, and one bucket that holds every utterance but the longest.
SMALL_BUCKETS = TINY_EVAL["bucket_seconds"]
ONE_BUCKET = [4.0]
BUCKET_TOLERANCE_DB = 0.01


def test_per_utterance_scores_do_not_depend_on_the_buckets(corpus, workdir, tmp_path):
    """eval.py gives every utterance the same SI-SNR(i) whatever bucket pads it."""
    root, good, _ = corpus
    scores, shapes = {}, {}
    for name, buckets in (("small", SMALL_BUCKETS), ("one", ONE_BUCKET)):
        out = tmp_path / name
        code = evaluate_checkpoint.main([
            "--workdir", workdir, "--data", root, "--split", "tt", "--out", str(out),
            "--set", f"eval.bucket_seconds={buckets}", "--no-sdr", "--no-perceptual",
            "--save-audio", "0", "--quiet"])
        assert code == 0
        with open(out / "per_utterance.csv", newline="", encoding="utf-8") as f:
            scores[name] = {r["id"]: r for r in csv.DictReader(f)}
        with open(out / "summary.json") as f:
            shapes[name] = {tuple(s) for s in json.load(f)["compiled_shapes"]}
    assert set(scores["small"]) == set(scores["one"]) == set(good)
    # Every utterance but the longest (a multiple of the largest bucket either way) is
    # padded to a different length in the two runs.
    assert {s[1] for s in shapes["one"]} == {int(ONE_BUCKET[0] * SAMPLE_RATE)}
    assert len(shapes["small"]) > 1
    for utt_id, small in scores["small"].items():
        one = scores["one"][utt_id]
        for key in ("si_snri", "si_snr"):
            difference = abs(float(small[key]) - float(one[key]))
            assert difference <= BUCKET_TOLERANCE_DB, (utt_id, key, small[key], one[key])


def test_checkpoint_and_config_options(corpus, workdir, tmp_path, capsys):
    root, good, _ = corpus
    config_file = str(tmp_path / "tiny.yaml")
    from galr_jax.config import save_config
    save_config(tiny_config(data={"root": root}), config_file)
    checkpoint = os.path.join(workdir, CHECKPOINT_SUBDIR)
    out = str(tmp_path / "out")
    code = evaluate_checkpoint.main(["--checkpoint", checkpoint, "--config", config_file,
                                     "--out", out, "--split", "tt", "--no-sdr", "--quiet",
                                     "--max-utterances", "3"])
    assert code == 0
    with open(os.path.join(out, "summary.json")) as f:
        assert json.load(f)["count"] <= 3
    save_config(tiny_config(model={"hidden": 32}), config_file)
    assert evaluate_checkpoint.main(["--checkpoint", checkpoint, "--config", config_file,
                                     "--out", out, "--quiet"]) == evaluate_checkpoint.EXIT_ERROR
    assert "model.hidden" in capsys.readouterr().err
    assert evaluate_checkpoint.main(["--workdir", workdir, "--set", "model.features=32",
                                     "--quiet"]) == evaluate_checkpoint.EXIT_ERROR
    assert "model.features: cannot be changed" in capsys.readouterr().err
