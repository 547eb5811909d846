"""The offline demo set: layout, exact mixtures, disjoint speakers, determinism, fallbacks."""

import json
import os

import numpy as np
import pytest
import soundfile as sf

from galr_jax.data import demo as demo_data
from galr_jax.data import voices
from galr_jax.data.datasets import open_wsj0_mix

TINY = dict(counts=(3, 2, 2), seconds=1.0, pool_size=2, install=False)


def _request(out, **kwargs):
    options = dict(TINY, voice_set="synthetic")
    options.update(kwargs)
    return demo_data.BuildRequest(out=str(out), **options)


def _wav_bytes(out):
    found = {}
    for split in demo_data.SPLITS:
        for parent, _, files in os.walk(os.path.join(out, split)):
            for name in files:
                path = os.path.join(parent, name)
                found[os.path.relpath(path, out)] = open(path, "rb").read()
    return found


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "set"
    info = demo_data.build(_request(out))
    return out, info


def test_layout_is_readable_and_mixtures_add_up_exactly(tiny):
    out, info = tiny
    for split, count in zip(demo_data.SPLITS, TINY["counts"]):
        dataset = open_wsj0_mix(out, split, num_sources=2, sample_rate=8000, bad_files="error")
        assert len(dataset) == count and set(dataset.lengths) == {8000}
        for i in range(count):
            mixture, sources = dataset.load(i)
            np.testing.assert_array_equal(mixture, sources.sum(axis=0))
            assert max(np.abs(mixture).max(), np.abs(sources).max()) <= demo_data.PEAK_LIMIT
            assert all(np.sqrt(np.mean(s ** 2)) > 1e-3 for s in sources)  # speech, not silence
            assert sf.info(dataset.entries[i].mixture).subtype == "PCM_16"
    assert info["mixtures"] == {"tr": 3, "cv": 2, "tt": 2}
    assert info["sources"]["asterisk"]["used"] is False
    assert "--voices synthetic" in info["sources"]["asterisk"]["note"]
    assert sum(info["bytes_on_disk"].values()) > 7 * 3 * 16000


def test_speakers_are_disjoint_and_match_the_file_names(tiny):
    out, _ = tiny
    with open(out / demo_data.SPEAKERS_FILE) as f:
        splits = {k: [s["name"] for s in v] for k, v in json.load(f).items()}
    names = [n for members in splits.values() for n in members]
    assert len(names) == len(set(names)) == len(voices.ESPEAK_SPEAKERS)
    assert all(splits[k] for k in demo_data.SPLITS)
    for split, members in splits.items():
        for stem in open_wsj0_mix(out, split).ids:
            speakers = [n for n in members if n in stem]
            assert len(speakers) == 2, (split, stem)
    sexes = {s.name: s.sex for s in voices.ESPEAK_SPEAKERS}
    assert {sexes[n] for n in splits["tt"]} == {"f", "m"}


def test_same_seed_same_bytes_and_the_cached_pool_changes_nothing(tiny, tmp_path):
    out, _ = tiny
    again = tmp_path / "again"
    demo_data.build(_request(again))
    assert _wav_bytes(again) == _wav_bytes(out)
    assert os.listdir(again / demo_data.POOL_DIR / "8000hz")  # pool cached
    demo_data.build(_request(again, seed=1), overwrite=True)  # from the cached pool
    fresh = tmp_path / "fresh"
    demo_data.build(_request(fresh, seed=1))
    assert _wav_bytes(again) == _wav_bytes(fresh) != _wav_bytes(out)


def test_identical_rebuild_is_skipped_and_a_different_one_needs_overwrite(tiny, capsys):
    out, info = tiny
    before = os.path.getmtime(out / demo_data.INFO_FILE)
    assert demo_data.build(_request(out)) == info
    assert "already built" in capsys.readouterr().out
    assert os.path.getmtime(out / demo_data.INFO_FILE) == before
    with pytest.raises(SystemExit, match="--overwrite"):
        demo_data.build(_request(out, seed=7))


def test_16k_three_speakers_uses_synthetic_voices_only(tmp_path):
    out = tmp_path / "wide"
    info = demo_data.build(_request(out, voice_set="all", sample_rate=16000, num_speakers_per_mix=3,
                                    counts=(2, 1, 1), seconds=0.5))
    assert "only synthetic voices" in info["sources"]["asterisk"]["note"]
    dataset = open_wsj0_mix(out, "tr", num_sources=3, sample_rate=16000)
    mixture, sources = dataset.load(0)
    assert sources.shape == (3, 8000)
    np.testing.assert_array_equal(mixture, sources.sum(axis=0))


def _speechlike(rng, seconds=0.8, rate=8000):
    """Noise bursts under a syllable-rate envelope, with silence around them."""
    t = np.arange(int(seconds * rate)) / rate
    burst = rng.normal(0, 0.1, t.size) * (0.5 + 0.5 * np.sin(2 * np.pi * 4 * t))
    return np.concatenate([np.zeros(800), burst, np.zeros(400)]).astype(np.float32)


def make_asterisk_root(root):
    """A few prompts per voice, with the files the reader must ignore."""
    rng = np.random.default_rng(0)
    for speaker in voices.ASTERISK_SPEAKERS:
        folder = root / speaker.location / "digits"
        folder.mkdir(parents=True)
        for k in range(3):
            sf.write(folder / f"prompt{k}.wav", _speechlike(rng), 8000, subtype="PCM_16")
        (root / speaker.location / "silence").mkdir()
        sf.write(root / speaker.location / "silence" / "1.wav", np.zeros(8000), 8000)
        sf.write(root / speaker.location / "beep.wav", np.ones(800) * 0.5, 8000)
    sf.write(root / "es" / "raw.gsm", _speechlike(rng), 8000, format="RAW", subtype="GSM610")


def test_recorded_voices_are_pooled_from_an_asterisk_tree(tmp_path):
    make_asterisk_root(tmp_path / "sounds")
    pools = {s.name: voices.load_asterisk_pool(s, str(tmp_path / "sounds"))
             for s in voices.ASTERISK_SPEAKERS}
    assert {len(p) for name, p in pools.items() if name != "asterisk_es_f_co"} == {3}
    assert len(pools["asterisk_es_f_co"]) == 4  # the raw GSM prompt is read too
    level = 10 ** (voices.SPEECH_LEVEL_DBFS / 20)
    for utterance in pools["asterisk_en_f_allison"]:
        assert abs(utterance[0]) < 0.05  # leading silence trimmed to the margin
        assert len(utterance) < 0.8 * 8000 + 2 * 0.03 * 8000
        assert 0.5 * level < np.sqrt(np.mean(utterance ** 2)) < 1.5 * level

    out = tmp_path / "mixed"
    info = demo_data.build(_request(out, voice_set="all", asterisk_root=str(tmp_path / "sounds")))
    assert info["sources"]["asterisk"]["used"] and info["sources"]["asterisk"]["voices"] == 7
    with open(out / demo_data.SPEAKERS_FILE) as f:
        splits = json.load(f)
    recorded = {k: [s["name"] for s in v if s["source"] == "asterisk"] for k, v in splits.items()}
    assert sorted(sum(recorded.values(), [])) == sorted(s.name for s in voices.ASTERISK_SPEAKERS)
    assert len(recorded["tt"]) == len(recorded["cv"]) == 1  # one held-out real voice each
    assert "asterisk_it_m_carlo" in recorded["tr"]  # the only real man stays in training


def test_missing_asterisk_falls_back_loudly(tmp_path, capsys):
    demo_data.main(["--out", str(tmp_path / "set"), "--num-train", "2", "--num-valid", "1",
                    "--num-test", "1", "--seconds", "0.5", "--pool-size", "2", "--no-install",
                    "--asterisk-root", str(tmp_path / "nowhere")])
    captured = capsys.readouterr()
    assert "SYNTHETIC eSpeak NG voices only" in captured.err
    assert "0 of 7 voices installed" in captured.err and "apt-get install" in captured.err
    with open(tmp_path / "set" / demo_data.INFO_FILE) as f:
        assert json.load(f)["sources"]["asterisk"]["used"] is False
    assert "{'tr': 2, 'cv': 1, 'tt': 1} mixtures" in captured.out


@pytest.mark.skipif(not os.path.isdir(os.path.join(voices.ASTERISK_ROOT, "en_US_f_Allison")),
                    reason="Asterisk prompt packages are not installed")
def test_installed_asterisk_prompts(tmp_path):
    info = demo_data.build(_request(tmp_path / "real", voice_set="all"))
    assert info["sources"]["asterisk"]["voices"] == 7
    dataset = open_wsj0_mix(tmp_path / "real", "tt", sample_rate=8000, bad_files="error")
    assert len(dataset) == 2
