"""Reading and writing audio: the bad-file zoo and atomic, non-clobbering writes."""

import os
import stat

import numpy as np
import pytest
import soundfile as sf

from galr_jax.data.audio import AudioError, audio_info, read_audio, write_audio

RATE = 8000


def _tone(n=800):
    return (0.5 * np.sin(np.arange(n) / 5.0)).astype(np.float32)


def _pcm16(path, signal=None, rate=RATE):
    sf.write(path, _tone() if signal is None else signal, rate, subtype="PCM_16")
    return path


def _expect_error(path, problem_words, **kwargs):
    with pytest.raises(AudioError) as caught:
        read_audio(path, **kwargs)
    assert caught.value.path == os.fspath(path)
    assert str(path) in str(caught.value)
    for word in problem_words:
        assert word in caught.value.problem
    return caught.value


def test_reads_pcm16_as_float32(tmp_path):
    signal = _tone()
    path = _pcm16(tmp_path / "ok.wav", signal)
    data = read_audio(path, RATE)
    assert data.dtype == np.float32 and data.shape == signal.shape
    np.testing.assert_allclose(data, signal, atol=1 / 2 ** 15)


@pytest.mark.parametrize("subtype, tolerance", [("PCM_24", 1 / 2 ** 23), ("FLOAT", 0.0)])
def test_reads_24_bit_and_float(tmp_path, subtype, tolerance):
    signal = _tone()
    path = tmp_path / f"{subtype}.wav"
    sf.write(path, signal, RATE, subtype=subtype)
    np.testing.assert_allclose(read_audio(path, RATE), signal, atol=tolerance)
    assert audio_info(path).subtype == subtype


def test_slice_reads_the_requested_window(tmp_path):
    signal = _tone(1000)
    path = _pcm16(tmp_path / "a.wav", signal)
    np.testing.assert_allclose(read_audio(path, start=100, frames=50), signal[100:150],
                               atol=1 / 2 ** 15)
    assert len(read_audio(path, start=990, frames=50)) == 10  # shortened at the end, not padded


def test_one_sample_file(tmp_path):
    path = _pcm16(tmp_path / "one.wav", np.array([0.25], np.float32))
    np.testing.assert_array_equal(read_audio(path, RATE), [0.25])


def test_unicode_and_space_in_name(tmp_path):
    path = _pcm16(tmp_path / "größe ü 声音 file.wav")
    assert len(read_audio(path, RATE)) == len(_tone())


def test_missing_file(tmp_path):
    _expect_error(tmp_path / "nope.wav", ["no such file"])


def test_directory(tmp_path):
    (tmp_path / "dir.wav").mkdir()
    _expect_error(tmp_path / "dir.wav", ["directory"])


def test_zero_length(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    _expect_error(path, ["empty", "0 bytes"])


def test_header_only(tmp_path):
    full = _pcm16(tmp_path / "full.wav").read_bytes()
    path = tmp_path / "header.wav"
    path.write_bytes(full[:44])
    _expect_error(path, ["no audio samples", "header only"])


def test_truncated_data_chunk(tmp_path):
    full = _pcm16(tmp_path / "full.wav").read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(full[:44 + 301])
    error = _expect_error(path, ["truncated", "1600", "301"])
    assert "declares" in error.problem


def test_truncated_inside_header(tmp_path):
    full = _pcm16(tmp_path / "full.wav").read_bytes()
    path = tmp_path / "stub.wav"
    path.write_bytes(full[:30])
    _expect_error(path, ["not a readable audio file"])


def test_non_audio_bytes_named_wav(tmp_path):
    path = tmp_path / "text.wav"
    path.write_bytes(b"this is a text file, not audio\n" * 20)
    _expect_error(path, ["not a readable audio file", "not recognised"])


def test_wrong_sample_rate_says_expected_and_found(tmp_path):
    path = _pcm16(tmp_path / "16k.wav", rate=16000)
    _expect_error(path, ["16000 Hz", "expected 8000 Hz"], sample_rate=RATE)
    assert len(read_audio(path)) == len(_tone())  # no expectation: accepted


def test_stereo_is_an_error_by_default(tmp_path):
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([_tone(), np.zeros(800, np.float32)], axis=1), RATE)
    _expect_error(path, ["2 channels", "expected mono", "downmix"])


def test_stereo_downmix_averages_and_warns(tmp_path):
    path = tmp_path / "stereo.wav"
    left, right = _tone(), np.full(800, 0.25, np.float32)
    sf.write(path, np.stack([left, right], axis=1), RATE, subtype="FLOAT")
    with pytest.warns(UserWarning, match="averaging 2 channels"):
        data = read_audio(path, RATE, stereo="downmix")
    np.testing.assert_allclose(data, (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nan_and_inf_samples(tmp_path, bad):
    signal = _tone()
    signal[[3, 7]] = bad
    path = tmp_path / "bad.wav"
    sf.write(path, signal, RATE, subtype="FLOAT")
    _expect_error(path, ["2 NaN/Inf samples"])


def test_symlink_loop(tmp_path):
    os.symlink(tmp_path / "b.wav", tmp_path / "a.wav")
    os.symlink(tmp_path / "a.wav", tmp_path / "b.wav")
    _expect_error(tmp_path / "a.wav", ["symlink loop"])


def test_broken_symlink(tmp_path):
    os.symlink(tmp_path / "gone.wav", tmp_path / "link.wav")
    _expect_error(tmp_path / "link.wav", ["broken symlink"])


def test_write_float_round_trip_is_exact(tmp_path):
    signal = _tone() * 3  # float files are never scaled, even beyond 1
    path = tmp_path / "out.wav"
    assert write_audio(path, signal, RATE) == 1.0
    np.testing.assert_array_equal(read_audio(path, RATE), signal)
    assert [p.name for p in tmp_path.iterdir()] == ["out.wav"]  # no temporary file left


def test_write_pcm16_keeps_levels_that_fit(tmp_path):
    signal = np.array([0.5, -1.0, 32767 / 32768, 0.0], np.float32)
    path = tmp_path / "pcm.wav"
    assert write_audio(path, signal, RATE, subtype="PCM_16") == 1.0
    np.testing.assert_array_equal(read_audio(path, RATE), signal)
    assert audio_info(path).subtype == "PCM_16"


def test_write_pcm16_normalises_only_when_it_would_clip(tmp_path):
    signal = np.array([0.5, -2.0, 1.0], np.float32)
    path = tmp_path / "loud.wav"
    gain = write_audio(path, signal, RATE, subtype="PCM_16")
    assert gain == 0.5  # set by the negative peak; 1.0 * 0.5 fits
    data = read_audio(path, RATE)
    np.testing.assert_allclose(data, signal * gain, atol=1 / 2 ** 15)


def test_write_pcm16_normalises_a_positive_overshoot(tmp_path):
    path = tmp_path / "loud.wav"
    gain = write_audio(path, np.array([2.0, -0.5], np.float32), RATE, subtype="PCM_16")
    assert gain == pytest.approx(32767 / 32768 / 2.0)
    assert read_audio(path, RATE).max() == 32767 / 32768


def test_write_refuses_to_overwrite_unless_asked(tmp_path):
    path = tmp_path / "x.wav"
    write_audio(path, _tone(), RATE)
    with pytest.raises(AudioError, match="already exists"):
        write_audio(path, np.zeros(10, np.float32), RATE)
    assert len(read_audio(path)) == 800  # the original is untouched
    write_audio(path, np.zeros(10, np.float32), RATE, overwrite=True)
    assert len(read_audio(path)) == 10


def test_written_file_has_the_usual_permissions(tmp_path):
    path = tmp_path / "perm.wav"
    write_audio(path, _tone(), RATE)
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~umask  # not mkstemp's 0600


@pytest.mark.parametrize("data, words", [
    (np.array([0.1, np.nan], np.float32), "NaN/Inf"),
    (np.zeros((2, 10), np.float32), "mono"),
])
def test_write_rejects_bad_data(tmp_path, data, words):
    with pytest.raises(AudioError, match=words):
        write_audio(tmp_path / "bad.wav", data, RATE)
    assert not any(tmp_path.iterdir())


def test_write_reports_an_impossible_format(tmp_path):
    with pytest.raises(AudioError, match="cannot write FLOAT FLAC"):
        write_audio(tmp_path / "x.flac", _tone(), RATE)  # FLAC holds integers only
    assert not any(tmp_path.iterdir())
