"""wsj0-mix and LibriMix readers on small generated trees, including the bad-file zoo."""

import csv
import json
import os

import numpy as np
import pytest
import soundfile as sf

from galr_jax.config import DataConfig
from galr_jax.data.audio import AudioError
from galr_jax.data.datasets import DatasetError, open_librimix, open_split, open_wsj0_mix

RATE = 8000


def _write(path, signal, rate=RATE, subtype="PCM_16"):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, signal, rate, subtype=subtype)


def _mixture(seed, length, num_sources):
    rng = np.random.default_rng(seed)
    sources = np.round(rng.uniform(-0.3, 0.3, (num_sources, length)) * 2 ** 15) / 2 ** 15
    return sources.sum(axis=0).astype(np.float32), sources.astype(np.float32)


def make_tree(root, split="tr", lengths=(800, 1200, 1000), num_sources=2, names=None):
    """ROOT/SPLIT/{mix,s1..sC}/<id>.wav with mixture = sum of sources."""
    names = names or [f"utt{i}" for i in range(len(lengths))]
    for i, (name, length) in enumerate(zip(names, lengths)):
        mixture, sources = _mixture(i, length, num_sources)
        _write(os.path.join(root, split, "mix", name + ".wav"), mixture)
        for c in range(num_sources):
            _write(os.path.join(root, split, f"s{c + 1}", name + ".wav"), sources[c])
    return names


def test_reads_a_wsj0_2mix_split(tmp_path):
    make_tree(tmp_path, lengths=(800, 1200, 1000), names=["b", "a", "c"])
    dataset = open_wsj0_mix(tmp_path, "tr", sample_rate=RATE)
    assert dataset.ids == ["a", "b", "c"]  # sorted, whatever the listing order
    np.testing.assert_array_equal(dataset.lengths, [1200, 800, 1000])
    mixture, sources = dataset.load(0)
    assert mixture.dtype == sources.dtype == np.float32
    assert mixture.shape == (1200,) and sources.shape == (2, 1200)
    np.testing.assert_allclose(mixture, sources.sum(axis=0), atol=2 / 2 ** 15)
    part, part_sources = dataset.load(0, start=100, frames=50)
    np.testing.assert_array_equal(part, mixture[100:150])
    np.testing.assert_array_equal(part_sources, sources[:, 100:150])
    np.testing.assert_array_equal(dataset.load_source(0, 1), sources[1])
    assert dataset.problems == [] and "3 mixtures" in dataset.summary()


def test_reads_a_wsj0_3mix_split(tmp_path):
    make_tree(tmp_path, lengths=(500, 600), num_sources=3)
    dataset = open_wsj0_mix(tmp_path, "tr", num_sources=3)
    assert dataset.load(1)[1].shape == (3, 600)


def test_three_speaker_set_read_as_two_is_an_error(tmp_path):
    make_tree(tmp_path, num_sources=3)
    with pytest.raises(DatasetError, match=r"s3.*3 speakers.*num_sources=2"):
        open_wsj0_mix(tmp_path, "tr", num_sources=2)


@pytest.mark.parametrize("what, prepare, words", [
    ("root", lambda root: None, "data root"),
    ("split", lambda root: os.makedirs(root), "split 'tr'"),
    ("s2 folder", lambda root: [os.makedirs(os.path.join(root, "tr", d)) for d in ("mix", "s1")],
     "folder"),
])
def test_missing_folders_name_the_expected_layout(tmp_path, what, prepare, words):
    root = tmp_path / "corpus"
    prepare(root)
    with pytest.raises(DatasetError) as caught:
        open_wsj0_mix(root, "tr")
    message = str(caught.value)
    assert words in message and "{mix,s1,s2}/<id>.wav" in message


def test_split_without_wavs(tmp_path):
    for folder in ("mix", "s1", "s2"):
        os.makedirs(tmp_path / "tr" / folder)
    (tmp_path / "tr" / "mix" / "notes.txt").write_text("no audio here")
    with pytest.raises(DatasetError, match=r"mix: no \.wav files; expected the layout"):
        open_wsj0_mix(tmp_path, "tr")


def test_missing_source_file_is_skipped_or_an_error(tmp_path):
    make_tree(tmp_path, lengths=(800, 900))
    os.unlink(tmp_path / "tr" / "s2" / "utt1.wav")
    dataset = open_wsj0_mix(tmp_path, "tr", bad_files="skip")
    assert dataset.ids == ["utt0"]
    [(path, problem)] = dataset.problems
    assert path.endswith(os.path.join("s2", "utt1.wav"))
    assert "missing source file" in problem and "{mix,s1,s2}" in problem
    with pytest.raises(AudioError, match=r"s2/utt1\.wav: missing source file.*bad_files=error"):
        open_wsj0_mix(tmp_path, "tr", bad_files="error")


def _bad_file_zoo(split_dir):
    """Replaces the mixture of utt1..utt9 by a different kind of broken or odd file."""
    mix = split_dir / "mix"
    good = (mix / "utt0.wav").read_bytes()
    (mix / "utt1.wav").write_bytes(b"")
    (mix / "utt2.wav").write_bytes(good[:44])
    (mix / "utt3.wav").write_bytes(good[:44 + 100])
    (mix / "utt4.wav").write_bytes(b"definitely not a RIFF file" * 10)
    _write(str(mix / "utt5.wav"), np.zeros(800, np.float32), rate=16000)
    _write(str(mix / "utt6.wav"), np.zeros((800, 2), np.float32))
    os.unlink(mix / "utt7.wav")
    os.symlink(mix / "utt7.wav", mix / "utt7.wav")  # a link to itself
    os.unlink(mix / "utt8.wav")
    os.mkdir(mix / "utt8.wav")
    _write(str(mix / "utt9.wav"), np.zeros(799, np.float32))  # one sample short of its sources
    return {"utt1": "empty", "utt2": "header only", "utt3": "truncated",
            "utt4": "not a readable audio file", "utt5": "expected 8000 Hz",
            "utt6": "2 channels", "utt7": "symlink loop", "utt8": "directory",
            "utt9": "has 800 samples"}


def test_bad_file_zoo_is_skipped_and_listed(tmp_path):
    make_tree(tmp_path, lengths=[800] * 10 + [1],
              names=[f"utt{i}" for i in range(10)] + ["one ü sample"])
    expected = _bad_file_zoo(tmp_path / "tr")
    os.symlink(tmp_path / "tr" / "mix", tmp_path / "tr" / "mix" / "loop")  # a folder loop
    dataset = open_wsj0_mix(tmp_path, "tr", sample_rate=RATE, bad_files="skip")
    assert dataset.ids == ["one ü sample", "utt0"]
    np.testing.assert_array_equal(dataset.lengths, [1, 800])
    assert len(dataset.problems) == len(expected)
    for name, words in expected.items():
        [problem] = [q for p, q in dataset.problems if f"{name}.wav" in p]
        assert words in problem, (name, problem)
    assert "9 skipped" in dataset.summary()


def test_bad_file_zoo_with_error_policy_names_the_first_file(tmp_path):
    make_tree(tmp_path, lengths=[800] * 10)
    _bad_file_zoo(tmp_path / "tr")
    with pytest.raises(AudioError) as caught:
        open_wsj0_mix(tmp_path, "tr", sample_rate=RATE, bad_files="error")
    assert caught.value.path.endswith("utt1.wav") and "empty" in caught.value.problem
    assert "9 bad mixture(s)" in str(caught.value)


def test_stereo_downmix_policy_accepts_stereo(tmp_path):
    make_tree(tmp_path, lengths=(800,))
    _write(str(tmp_path / "tr" / "mix" / "utt0.wav"), np.zeros((800, 2), np.float32))
    dataset = open_wsj0_mix(tmp_path, "tr", stereo="downmix")
    with pytest.warns(UserWarning, match="averaging"):
        assert dataset.load(0)[0].shape == (800,)


def test_nan_samples_surface_when_loading(tmp_path):
    make_tree(tmp_path, lengths=(800,))
    signal = np.zeros(800, np.float32)
    signal[10] = np.nan
    _write(str(tmp_path / "tr" / "s1" / "utt0.wav"), signal, subtype="FLOAT")
    dataset = open_wsj0_mix(tmp_path, "tr")  # headers are fine
    with pytest.raises(AudioError, match=r"s1/utt0\.wav: contains 1 NaN/Inf"):
        dataset.load(0)


def test_all_bad_is_an_error(tmp_path):
    make_tree(tmp_path, lengths=(800,))
    (tmp_path / "tr" / "mix" / "utt0.wav").write_bytes(b"")
    with pytest.raises(DatasetError, match="all 1 mixtures are unusable"):
        open_wsj0_mix(tmp_path, "tr")


def _cache_files(folder):
    return sorted(p for p in os.listdir(folder) if p.startswith("data-index-"))


def test_length_index_is_cached_and_rebuilt_when_the_corpus_changes(tmp_path):
    root, cache = tmp_path / "corpus", tmp_path / "work"
    make_tree(root, lengths=(800, 900))
    open_wsj0_mix(root, "tr", cache_dir=cache)
    [first] = _cache_files(cache)
    # Prove the cache is read: a length planted in it comes back.
    content = json.loads((cache / first).read_text())
    content["results"][0][0] = 123
    (cache / first).write_text(json.dumps(content))
    assert open_wsj0_mix(root, "tr", cache_dir=cache).lengths[0] == 123
    # A changed file changes the fingerprint: the index is rebuilt from the files.
    mixture, sources = _mixture(7, 700, 2)
    for folder, signal in zip(("mix", "s1", "s2"), [mixture, *sources]):
        _write(str(root / "tr" / folder / "utt0.wav"), signal)
    dataset = open_wsj0_mix(root, "tr", cache_dir=cache)
    assert dataset.lengths[0] == 700
    assert len(_cache_files(cache)) == 2


def test_damaged_cache_is_ignored(tmp_path):
    make_tree(tmp_path / "corpus", lengths=(800,))
    open_wsj0_mix(tmp_path / "corpus", "tr", cache_dir=tmp_path / "work")
    [name] = _cache_files(tmp_path / "work")
    (tmp_path / "work" / name).write_text("{ not json")
    assert open_wsj0_mix(tmp_path / "corpus", "tr", cache_dir=tmp_path / "work").lengths[0] == 800


def _librimix(tmp_path, num_sources=2, relative=True, extra_rows=()):
    audio = tmp_path / "Libri2Mix"
    names = make_tree(audio, split="train", lengths=(800, 600), num_sources=num_sources)
    header = ["mixture_ID", "mixture_path"] + [f"source_{c + 1}_path" for c in range(num_sources)]
    header += ["length", "noise_path"]
    rows = []
    for name, length in zip(names, (800, 600)):
        paths = [os.path.join("train", d, name + ".wav") for d in
                 ["mix"] + [f"s{c + 1}" for c in range(num_sources)]]
        if not relative:
            paths = [str(audio / p) for p in paths]
        rows.append([name, *paths, length, "unused.wav"])
    csv_path = tmp_path / "meta" / "mixture_train_mix_clean.csv"
    csv_path.parent.mkdir()
    with open(csv_path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows + list(extra_rows))
    return csv_path, audio


@pytest.mark.parametrize("relative", [True, False])
def test_reads_librimix_csv(tmp_path, relative):
    csv_path, audio = _librimix(tmp_path, relative=relative)
    dataset = open_librimix(csv_path, audio_root=audio, sample_rate=RATE)
    assert dataset.ids == ["utt0", "utt1"]
    np.testing.assert_array_equal(dataset.lengths, [800, 600])
    mixture, sources = dataset.load(1)
    np.testing.assert_allclose(mixture, sources.sum(axis=0), atol=2 / 2 ** 15)


def test_librimix_bad_rows_are_problems(tmp_path):
    csv_path, audio = _librimix(tmp_path, extra_rows=[
        ["utt2", "", "a.wav", "b.wav", 5, ""],
        ["utt0", "train/mix/utt0.wav", "train/s1/utt0.wav", "train/s2/utt0.wav", 800, ""],
        ["utt3", "train/mix/nope.wav", "train/s1/utt0.wav", "train/s2/utt0.wav", 800, ""],
    ])
    dataset = open_librimix(csv_path, audio_root=audio)
    assert dataset.ids == ["utt0", "utt1"]
    problems = [q for _, q in dataset.problems]
    assert any("line 4: empty cell" in q for q in problems)
    assert any("line 5: repeated mixture_ID 'utt0'" in q for q in problems)
    assert any("no such file" in q for q in problems)


def test_librimix_missing_column_and_extra_speaker(tmp_path):
    csv_path, audio = _librimix(tmp_path, num_sources=3)
    with pytest.raises(DatasetError, match="has source_3_path.*num_sources=2"):
        open_librimix(csv_path, audio_root=audio, num_sources=2)
    broken = tmp_path / "broken.csv"
    broken.write_text("mixture_ID,mixture_path,length\nx,y.wav,3\n")
    with pytest.raises(DatasetError, match="missing column.*source_1_path, source_2_path"):
        open_librimix(broken)
    with pytest.raises(DatasetError, match="metadata CSV no such file"):
        open_librimix(tmp_path / "absent.csv")


def test_open_split_follows_the_config(tmp_path):
    make_tree(tmp_path / "wsj", split="cv", lengths=(640,))
    config = DataConfig(root=str(tmp_path / "wsj"), layout="wsj0-mix", sample_rate=RATE)
    assert len(open_split(config, "cv", num_sources=2)) == 1
    csv_path, audio = _librimix(tmp_path)
    os.replace(csv_path, audio / "train.csv")
    config = DataConfig(root=str(audio), layout="librimix", sample_rate=RATE)
    assert open_split(config, "train", num_sources=2).lengths.tolist() == [800, 600]


def test_root_that_is_a_symlink_loop(tmp_path):
    os.symlink(tmp_path / "corpus", tmp_path / "corpus")
    with pytest.raises(DatasetError, match=r"data root is unusable \(symlink loop\)"):
        open_wsj0_mix(tmp_path / "corpus", "tr")


@pytest.mark.parametrize("layout", ["wsj0-mix", "librimix"])
def test_an_object_store_data_root_asks_for_a_mount(layout):
    config = DataConfig(root="gs://bucket/wsj0-2mix/wav8k/min", layout=layout)
    with pytest.raises(DatasetError, match=r"gs://bucket/wsj0-2mix/wav8k/min.*: audio is read "
                                           r"from a local file system; mount the bucket"):
        open_split(config, "tr", 2)
