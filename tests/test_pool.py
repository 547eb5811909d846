"""The real-voice pool: speakers from each package's layout, disjoint splits whose test
split holds only held-out real speakers, exact 16-bit mixtures, joined utterances, the
report of missing sources, and the layout dynamic mixing reads.

The packages' layouts are rebuilt in a temporary folder with short synthetic clips, so
nothing here needs the Debian packages; the last test reads the installed ones when
they are present.
"""

import json
import os

import numpy as np
import pytest

from galr_jax.config import config_from_dict
from galr_jax.data import pool
from galr_jax.data.datasets import open_wsj0_mix
from galr_jax.data.loader import make_train_loader

from pool_helpers import RATE, make_system_root

SECONDS = 1.0


def _build(out, root, **kwargs):
    options = dict(mixtures=(3, 4), seconds=SECONDS, root=str(root), max_utterances=4,
                   espeak_sentences=0)
    options.update(kwargs)
    return pool.build(pool.PoolRequest(out=str(out), **options))


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    base = tmp_path_factory.mktemp("pool")
    root = make_system_root(base / "root")
    info = _build(base / "out", root)
    return base / "out", info


def test_sources_found_and_speakers_from_the_layout(built):
    out, info = built
    assert info["missing"] == []
    rows = {r["name"]: r for r in json.loads((out / pool.SPEAKERS_FILE).read_text())}
    # Allison's Spanish set is merged into her, sr@latin into sr, the sine file is no talker.
    assert "asterisk_en_f_allison" in rows and rows["asterisk_en_f_allison"]["clips"] == 4
    assert rows["ktuberling_sr"]["clips"] == 6
    assert {n for n in rows if n.startswith("codec2")} == {
        "codec2_forig", "codec2_hts1", "codec2_speech16k"}
    assert {n for n in rows if n.startswith("kajongg")} == {
        "kajongg_en_female1", "kajongg_en_male1", "kajongg_de_female2", "kajongg_de_male2"}
    assert rows["kajongg_de_male2"]["sex"] == "m" and rows["kajongg_de_male2"]["sex_from"] == "layout"
    # Estimated from F0: the 120 Hz talker is male, the 200 Hz one female.
    assert rows["codec2_hts1"]["sex"] == "m" and 100 < rows["codec2_hts1"]["f0_hz"] < 140
    assert rows["codec2_forig"]["sex"] == "f" and 180 < rows["codec2_forig"]["f0_hz"] < 220
    csv_lines = (out / pool.SPEAKERS_CSV).read_text().splitlines()
    assert len(csv_lines) == len(rows) + 1 and csv_lines[0].startswith("name,source,language")


def test_splits_are_disjoint_and_test_holds_only_held_out_real_speakers(built):
    out, _ = built
    rows = json.loads((out / pool.SPEAKERS_FILE).read_text())
    members = {s: {r["name"] for r in rows if r["split"] == s} for s in pool.SPLITS}
    assert not (members["tr"] & members["cv"] or members["tr"] & members["tt"]
                or members["cv"] & members["tt"])
    for row in rows:
        if row["split"] == "tt":
            assert row["real"]
            assert (row["source"] in pool.TEST_SOURCES
                    or row["language"].split("_")[0] in pool.TEST_LANGUAGES), row
    assert {r["source"] for r in rows if r["split"] == "tt"} >= {"codec2", "kajongg"}
    assert members["tt"] >= {"klettres_de", "klettres_cs", "ktuberling_nl"}
    assert all(r["real"] for r in rows if r["split"] == "cv")
    # Every mixture of a split is made of that split's speakers only, two different ones.
    for split in pool.SPLITS:
        for stem in open_wsj0_mix(out, split).ids:
            names = [n for n in members[split] if f"_{n}" in stem]
            others = [n for s in pool.SPLITS if s != split for n in members[s] if f"_{n}_" in
                      stem + "_"]
            assert len(names) == 2 and not others, (split, stem)


def test_mixtures_add_up_and_training_uses_every_utterance_once(built):
    out, info = built
    for split in pool.SPLITS:
        dataset = open_wsj0_mix(out, split, sample_rate=RATE, bad_files="error")
        assert set(dataset.lengths) == {int(SECONDS * RATE)}
        for i in range(len(dataset)):
            mixture, sources = dataset.load(i)
            np.testing.assert_array_equal(mixture, sources.sum(axis=0))
            assert np.abs(mixture).max() <= pool.PEAK_LIMIT
            assert all(np.abs(s).max() > 0.01 for s in sources)
    rows = json.loads((out / pool.SPEAKERS_FILE).read_text())
    utterances = sum(r["utterances"] for r in rows if r["split"] == "tr")
    assert utterances // 2 - 1 <= info["mixtures"]["tr"] <= utterances // 2


def test_same_seed_same_pool(built, tmp_path):
    out, _ = built
    again = tmp_path / "again"
    _build(again, out.parent / "root")
    for split in pool.SPLITS:
        a, b = open_wsj0_mix(out, split), open_wsj0_mix(again, split)
        assert a.ids == b.ids
        np.testing.assert_array_equal(a.load(0)[1], b.load(0)[1])


def test_joined_utterances_never_repeat_a_clip_and_pause_between_clips():
    rng = np.random.default_rng(0)
    clips = [np.full(1000, k + 1, np.float32) for k in range(5)]
    utterances = pool.join_utterances(rng, clips, 6, 8000, RATE)
    for u in utterances:
        assert u.shape == (8000,)
        values = u[u != 0]
        runs = [v for i, v in enumerate(values) if i == 0 or values[i - 1] != v]
        assert len(runs) == len(set(runs)) >= 2  # distinct clips, each once
        gaps = np.diff(np.flatnonzero(u))
        assert gaps.max() >= pool.PAUSE_SECONDS[0] * RATE  # a pause between clips
    # A single long recording gives different excerpts.
    long_clip = [np.sin(np.arange(40000) * 0.01).astype(np.float32)]
    a, b = pool.join_utterances(rng, long_clip, 2, 8000, RATE)
    assert not np.array_equal(a, b)


def test_missing_sources_are_reported_and_an_empty_test_split_stops(tmp_path, capsys):
    root = make_system_root(tmp_path / "root", skip=("codec2", "pocketsphinx"))
    info = _build(tmp_path / "out", root)
    assert set(info["missing"]) == {"codec2", "pocketsphinx"}
    err = capsys.readouterr().err
    assert "Sources missing: codec2, pocketsphinx" in err
    assert "apt-get install --no-install-recommends codec2-examples pocketsphinx-testdata" in err
    bare = make_system_root(tmp_path / "bare", skip=("codec2", "kajongg", "klettres",
                                                       "ktuberling"))
    with pytest.raises(SystemExit, match=r"split cv: 1 speakers found, need 2; sources missing: klettres"):
        _build(tmp_path / "out2", bare)


def test_dynamic_mixing_reads_the_pool_with_augmentation(built):
    out, _ = built
    config = config_from_dict({"data": {
        "root": str(out), "crop_seconds": 0.5, "dynamic_mixing": True, "num_workers": 0,
        "augment_speed": 0.1, "augment_gain_db": 6.0, "augment_band_prob": 0.5,
        "augment_reverb_prob": 0.5, "augment_rooms": 2}, "train": {"batch_size": 2}})
    dataset = open_wsj0_mix(out, "tr", sample_rate=RATE)
    with make_train_loader(config, dataset) as loader, make_train_loader(config, dataset) as again:
        batch = loader.batch_at(3)
        assert batch["sources"].shape == (2, 2, 4000)
        np.testing.assert_allclose(batch["mixture"], batch["sources"].sum(axis=1), atol=1e-6)
        np.testing.assert_array_equal(batch["mixture"], again.batch_at(3)["mixture"])


@pytest.mark.skipif(not os.path.isdir("/usr/share/klettres"),
                    reason="the Debian speech packages are not installed")
def test_installed_packages_give_disjoint_splits():
    speakers, report = pool.find_speakers("/")
    names = [s.name for s in speakers]
    assert len(names) == len(set(names))
    held_out = [s for s in speakers if pool.split_of(s) == "tt"]
    assert held_out and all(s.espeak is None for s in held_out)
    assert {s.source for s in held_out} >= {"codec2", "kajongg"}
    assert report["kajongg"]["speakers"] == 8
