"""``python -m galr_jax.inference.cli``: inputs, outputs, and a zoo of bad audio files."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from galr_jax.inference import cli as separate
from galr_jax.inference.audio_io import PCM16_PEAK_DBFS, resampled_length
from inference_helpers import (SAMPLE_RATE, environment, make_checkpoint, run_cli, speech_like,
                               write_wav)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_checkpoint(str(tmp_path_factory.mktemp("separate") / "ckpt"))


def _mixture(seconds: float, seed: int = 0) -> np.ndarray:
    return speech_like(seconds, seed=seed).sum(axis=0)


def _good_files(folder: str) -> dict:
    """Inputs that must separate: ``{stem: expected output length}``."""
    os.makedirs(os.path.join(folder, "nested"), exist_ok=True)
    mix = _mixture(1.2)
    loud = np.clip(60 * mix, -1, 1)  # a clipped recording at full scale
    files = {
        "space and ü name": write_wav(os.path.join(folder, "space and ü name.wav"), mix),
        "stereo": write_wav(os.path.join(folder, "stereo.wav"), np.stack([mix, -mix], 1),
                            subtype="PCM_16"),
        "pcm24": write_wav(os.path.join(folder, "pcm24.wav"), mix, subtype="PCM_24"),
        "loud": write_wav(os.path.join(folder, "loud.wav"), loud, subtype="PCM_16"),
        "silent": write_wav(os.path.join(folder, "silent.wav"), np.zeros(4000, np.float32)),
        "rate16k": write_wav(os.path.join(folder, "rate16k.wav"), _mixture(1.0, 1)[:7999], 16000),
        "deep": write_wav(os.path.join(folder, "nested", "deep.flac"), mix, subtype="PCM_16"),
    }
    return {stem: (resampled_length(soundfile.info(path).frames, soundfile.info(path).samplerate,
                                    SAMPLE_RATE)) for stem, path in files.items()}


def _bad_files(folder: str) -> dict:
    """Inputs that must fail: ``{path: the problem the report must name}``."""
    def path(name):
        return os.path.join(folder, name)

    open(path("zero.wav"), "wb").close()
    write_wav(path("header_only.wav"), np.zeros(0, np.float32))
    with open(path("whole.bin"), "wb") as f:
        soundfile.write(f, _mixture(1.0), SAMPLE_RATE, subtype="PCM_16", format="WAV")
    with open(path("whole.bin"), "rb") as f:
        data = f.read()
    with open(path("truncated.wav"), "wb") as f:
        f.write(data[:len(data) // 2])
    os.unlink(path("whole.bin"))
    with open(path("text.wav"), "w") as f:
        f.write("this is not audio\n" * 50)
    nan = _mixture(0.5)
    nan[100] = np.inf
    write_wav(path("nan.wav"), nan)
    write_wav(path("one_sample.wav"), np.ones(1, np.float32))
    write_wav(path("short.wav"), np.ones(15, np.float32))
    os.symlink("loop.wav", path("loop.wav"))
    return {
        path("zero.wav"): "empty file", path("header_only.wav"): "header only",
        path("truncated.wav"): "truncated", path("text.wav"): "not a readable audio file",
        path("nan.wav"): "NaN/Inf sample at index 100",
        path("one_sample.wav"): "shorter than one encoder window",
        path("short.wav"): "shorter than one encoder window", path("loop.wav"): "symlink loop",
    }


def test_bad_audio_zoo_reports_each_file_and_separates_the_rest(tmp_path, checkpoint):
    zoo, out = str(tmp_path / "zoo"), str(tmp_path / "out")
    os.makedirs(zoo)
    os.makedirs(tmp_path / "no_wavs")
    (tmp_path / "no_wavs" / "notes.txt").write_text("nothing to separate")
    good = _good_files(zoo)
    bad = _bad_files(zoo)
    missing, no_match = str(tmp_path / "missing.wav"), str(tmp_path / "nothing*.wav")
    result = run_cli(["-m", "galr_jax.inference.cli", "--workdir", checkpoint, zoo, missing,
                      no_match, str(tmp_path / "no_wavs"), "--out", out, "--quiet"])
    assert result.returncode == separate.EXIT_FAILED_FILES, result.stderr[-3000:]
    report = result.stderr
    for stem, length in good.items():
        for c in (1, 2):
            data, rate = soundfile.read(os.path.join(out, f"{stem}_s{c}.wav"), dtype="float32")
            assert rate == SAMPLE_RATE and data.shape == (length,) and np.isfinite(data).all()
    failed = [line for line in report.splitlines() if line.startswith("  failed: ")]
    for path, problem in bad.items():
        assert any(path in line and problem in line for line in failed), (path, problem, report)
    assert any(missing in line and "no such file" in line for line in failed)
    assert any(no_match in line and "no file matches" in line for line in failed)
    assert any("no_wavs" in line and "no audio files" in line for line in failed)
    assert f"separated {len(good)} file(s)" in report
    assert f"{len(bad) + 3} failed" in report
    assert "averaging 2 channels" in report and "resampling 16000 Hz" in report
    assert sorted(os.listdir(out)) == sorted(f"{s}_s{c}.wav" for s in good for c in (1, 2))


def test_existing_outputs_need_force(tmp_path, checkpoint, capsys):
    source = write_wav(str(tmp_path / "a.wav"), _mixture(1.0))
    out = str(tmp_path / "out")
    args = ["--workdir", checkpoint, source, "--out", out, "--quiet"]
    assert separate.main(args) == 0
    first = soundfile.read(os.path.join(out, "a_s1.wav"))[0]
    write_wav(source, _mixture(1.0, seed=5))  # new content, same name
    assert separate.main(args) == separate.EXIT_FAILED_FILES
    assert "already exists" in capsys.readouterr().err
    np.testing.assert_array_equal(soundfile.read(os.path.join(out, "a_s1.wav"))[0], first)
    assert separate.main(args + ["--force"]) == 0
    assert not np.array_equal(soundfile.read(os.path.join(out, "a_s1.wav"))[0], first)


def test_compute_dtype_option_runs_the_products_in_bfloat16(tmp_path, checkpoint, capsys):
    source = write_wav(str(tmp_path / "a.wav"), _mixture(1.0))
    outputs = {}
    for dtype in ("float32", "bfloat16"):
        out = str(tmp_path / dtype)
        assert separate.main(["--workdir", checkpoint, source, "--out", out, "--quiet",
                              "--compute-dtype", dtype]) == 0
        outputs[dtype] = soundfile.read(os.path.join(out, "a_s1.wav"), dtype="float32")[0]
    difference = np.abs(outputs["bfloat16"] - outputs["float32"]).max()
    assert 0 < difference < 0.05 * np.abs(outputs["float32"]).max()
    with pytest.raises(SystemExit):
        separate.main(["--workdir", checkpoint, source, "--out", str(tmp_path / "x"),
                       "--compute-dtype", "float16"])
    assert "invalid choice: 'float16'" in capsys.readouterr().err


def test_pcm16_glob_and_name_clashes(tmp_path, checkpoint, capsys):
    for folder in ("one", "two"):
        os.makedirs(tmp_path / folder)
        write_wav(str(tmp_path / folder / "same.wav"), 30 * _mixture(1.0))
    out = str(tmp_path / "out")
    code = separate.main(["--workdir", checkpoint, str(tmp_path / "*" / "same.wav"), "--out", out,
                          "--pcm16", "--quiet"])
    assert code == separate.EXIT_FAILED_FILES
    assert "same file name as" in capsys.readouterr().err
    peaks = []
    for c in (1, 2):
        path = os.path.join(out, f"same_s{c}.wav")
        assert soundfile.info(path).subtype == "PCM_16"
        peaks.append(np.abs(soundfile.read(path, dtype="float32")[0]).max())
    assert max(peaks) == pytest.approx(10 ** (PCM16_PEAK_DBFS / 20), abs=1 / 32768)


def test_unusable_checkpoint_is_a_usage_error(tmp_path, capsys):
    source = write_wav(str(tmp_path / "a.wav"), _mixture(1.0))
    code = separate.main(["--workdir", str(tmp_path / "nothing"), source, "--out", str(tmp_path)])
    assert code == separate.EXIT_USAGE
    assert "nothing" in capsys.readouterr().err


def test_console_script(tmp_path, checkpoint):
    script = shutil.which("galr-separate", path=os.path.dirname(sys.executable))
    if script is None:
        pytest.skip("galr-jax is not installed in this environment (pip install -e .)")
    source = write_wav(str(tmp_path / "a.wav"), _mixture(1.0))
    result = subprocess.run([script, "--workdir", checkpoint, source, "--out", str(tmp_path / "o"),
                             "--quiet"], capture_output=True, text=True, env=environment(),
                            timeout=240)
    assert result.returncode == 0, result.stderr[-2000:]
    assert sorted(os.listdir(tmp_path / "o")) == ["a_s1.wav", "a_s2.wav"]
