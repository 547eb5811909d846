"""Pretrained models: release a trained run, load it by name, separate, score and export it.

One tiny GALR is trained for 2 steps by the real ``train.py`` and released into a
temporary registry (``GALR_PRETRAINED_DIR``), never into the package.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from galr_jax import pretrained
from galr_jax.evaluation import cli as evaluate_checkpoint
from galr_jax.inference import cli as separate
from galr_jax.inference import export_cli
from galr_jax.inference import Separator
from galr_jax.pretrained import card, release
from subprocess_env import REPO
from training_helpers import SAMPLE_RATE, environment, run_train, synthetic_source, write_config, \
    write_corpus

NAME = "tiny"
STEPS = 2
TEST_IDS = [f"tt_{i:03d}" for i in range(3)]
SPEAKERS_CSV = ("name,source,language,f0_hz,sex,sex_from,seconds,clips,utterances,split,real,"
                "licence\n"
                "anna,recorded,en,200,f,layout,120,10,5,tr,True,CC-BY-4.0\n"
                "bot,synth,en,120,m,layout,60,10,5,tr,False,\"GPL-3.0, synthetic\"\n"
                "carl,recorded,de,110,m,layout,30,4,2,tt,True,CC-BY-4.0\n")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """``(workdir, data root)`` of a 2-step run on a synthetic corpus with a test split."""
    base = tmp_path_factory.mktemp("pretrained")
    data = write_corpus(str(base / "data"), {"tr": 12, "cv": 3, "tt": 3})
    config = write_config(str(base / "config.yaml"), data, num_steps=STEPS)
    workdir = str(base / "run")
    result = run_train(config, workdir, cache_dir=str(base / "jax_cache"))
    assert result.returncode == 0, result.stderr[-3000:]
    return workdir, data


@pytest.fixture(scope="module")
def registry(run, tmp_path_factory):
    """A registry root holding the run released as ``tiny``."""
    root = str(tmp_path_factory.mktemp("registry"))
    assert release.main(["--workdir", run[0], "--name", NAME, "--root", root]) == 0
    return root


@pytest.fixture
def use_registry(registry, monkeypatch):
    monkeypatch.setenv(pretrained.ROOT_ENV, registry)
    return registry


@pytest.fixture(scope="module")
def scored(run, registry, tmp_path_factory):
    """The ``eval.py --model tiny --split tt --out OUT`` folder."""
    out = str(tmp_path_factory.mktemp("scored") / "tt")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(pretrained.ROOT_ENV, registry)
        assert evaluate_checkpoint.main(["--model", NAME, "--data", run[1], "--split", "tt",
                                         "--out", out, "--quiet", "--no-perceptual"]) == 0
    return out


def _mixture(seconds: float = 0.6, peak: float = 0.5) -> np.ndarray:
    rng = np.random.default_rng(7)
    samples = int(seconds * SAMPLE_RATE)
    mixture = synthetic_source(rng, samples) + synthetic_source(rng, samples)
    return (mixture * peak / np.abs(mixture).max()).astype(np.float32)


@pytest.mark.slow  # the module's 2-step training run (about 40 s on 2 cores)
def test_release_writes_the_four_files_and_a_manifest_that_describes_them(run, registry):
    folder = os.path.join(registry, NAME)
    assert sorted(os.listdir(folder)) == sorted(pretrained.MODEL_FILES)
    assert sorted(os.listdir(registry)) == [NAME]  # no staging folder left behind
    with open(os.path.join(folder, pretrained.MANIFEST_FILE)) as f:
        manifest = json.load(f)
    params = os.path.join(folder, pretrained.PARAMS_FILE)
    assert manifest["params_sha256"] == pretrained.sha256_file(params)
    assert manifest["params_bytes"] == os.path.getsize(params)
    assert (manifest["name"], manifest["step"], manifest["sample_rate"],
            manifest["num_speakers"]) == (NAME, STEPS, SAMPLE_RATE, 2)
    assert manifest["seconds_in_steps"] > 0  # from the run's metrics.jsonl


@pytest.fixture(scope="module")
def workdir_output(run):
    """``(mixture, sources)``: what the Separator built from the workdir makes of a mixture."""
    mixture = _mixture()
    return mixture, Separator.from_checkpoint(run[0], "latest").separate(mixture)


@pytest.mark.slow
def test_from_pretrained_holds_the_workdirs_weights_and_architecture(run, registry):
    """With these equal, the outputs are equal: test_galr_separate_model compares them."""
    import jax

    from galr_jax.training.checkpoints import restore_variables

    variables, meta = restore_variables(run[0], which="latest")
    loaded = Separator.from_pretrained(NAME, root=registry)
    assert loaded.config.model == meta["config"].model
    assert loaded.config.eval == meta["config"].eval
    model = pretrained.load(NAME, registry)
    assert jax.tree.structure(model.variables) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(model.variables), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, np.asarray(want))
    assert loaded.meta["step"] == STEPS and loaded.sample_rate == SAMPLE_RATE


@pytest.mark.slow
def test_list_models_prints_one_name_a_line(use_registry, capsys):
    shutil.copytree(os.path.join(use_registry, NAME), os.path.join(use_registry, "another"))
    # A crashed release's staging folder is complete-looking but hidden.
    shutil.copytree(os.path.join(use_registry, NAME), os.path.join(use_registry, ".x.release-1"))
    try:
        assert separate.main(["--list-models"]) == 0
        assert capsys.readouterr().out.splitlines() == ["another", NAME]
    finally:
        shutil.rmtree(os.path.join(use_registry, "another"))
        shutil.rmtree(os.path.join(use_registry, ".x.release-1"))


@pytest.mark.slow
def test_unknown_name_lists_the_available_models(use_registry, tmp_path, capsys):
    with pytest.raises(pretrained.PretrainedError, match=f"'nope'.*available: {NAME}"):
        Separator.from_pretrained("nope")
    assert separate.main(["--model", "nope", "x.wav", "--out", str(tmp_path)]) == 2
    assert f"available: {NAME}" in capsys.readouterr().err
    with pytest.raises(pretrained.PretrainedError, match="available: none"):
        Separator.from_pretrained(NAME, root=str(tmp_path))


@pytest.mark.slow
def test_damaged_params_are_refused_naming_the_file(registry, tmp_path):
    root = str(tmp_path / "damaged")
    shutil.copytree(os.path.join(registry, NAME), os.path.join(root, NAME))
    params = os.path.join(root, NAME, pretrained.PARAMS_FILE)
    with open(params, "r+b") as f:
        f.seek(os.path.getsize(params) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(pretrained.PretrainedError, match=f"{params}: sha256 .* differs"):
        Separator.from_pretrained(NAME, root=root)


@pytest.mark.slow
def test_eval_model_writes_summary_and_per_utterance_rows(scored):
    with open(os.path.join(scored, evaluate_checkpoint.SUMMARY_NAME)) as f:
        summary = json.load(f)
    with open(os.path.join(scored, evaluate_checkpoint.CSV_NAME)) as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == TEST_IDS
    assert summary["count"] == len(TEST_IDS) and summary["split"] == "tt"
    assert summary["si_snri"] == pytest.approx(np.mean([float(r["si_snri"]) for r in rows]))
    assert summary["step"] == STEPS
    assert summary["checkpoint"] == f"{evaluate_checkpoint.PRETRAINED_PREFIX}{NAME}"


@pytest.mark.slow
def test_release_with_figures_writes_the_card_and_never_half_a_model(run, registry, scored,
                                                                     tmp_path):
    speakers = tmp_path / "speakers.csv"
    speakers.write_text(SPEAKERS_CSV)
    args = ["--workdir", run[0], "--name", NAME, "--root", registry, "--eval", f"tt={scored}",
            "--speakers", str(speakers)]
    before = sorted(os.listdir(os.path.join(registry, NAME)))
    manifest_path = os.path.join(registry, NAME, pretrained.MANIFEST_FILE)
    old_manifest = open(manifest_path).read()
    assert release.main(args) == 2  # exists, no --force
    # Figures of another step would describe other weights: refused before anything is written.
    wrong = tmp_path / "wrong_step"
    shutil.copytree(scored, wrong)
    summary = json.loads((wrong / "summary.json").read_text())
    (wrong / "summary.json").write_text(json.dumps(dict(summary, step=STEPS - 1)))
    assert release.main(args[:-4] + ["--eval", f"tt={wrong}", "--force"]) == 2
    assert open(manifest_path).read() == old_manifest
    assert sorted(os.listdir(registry)) == [NAME]
    assert sorted(os.listdir(os.path.join(registry, NAME))) == before

    assert release.main(args + ["--force"]) == 0
    assert sorted(os.listdir(registry)) == [NAME]
    manifest = json.loads(open(manifest_path).read())
    assert manifest["figures"]["tt"]["si_snri"] == pytest.approx(summary["si_snri"])
    text = open(os.path.join(registry, NAME, pretrained.CARD_FILE)).read()
    assert f"| tt | {summary['count']} | {summary['si_snri']:.2f} / " in text
    assert "| synth | - | synthetic | 1 / 0 / 0 | 1.0 | GPL-3.0, synthetic |" in text
    assert "Test (tt): 1 speakers never heard in training, 1 of them real people" in text
    assert Separator.from_pretrained(NAME, root=registry).meta["step"] == STEPS


def test_per_source_figures_split_pool_ids_with_underscores():
    speakers = [{"name": "codec2_vk2tpm", "source": "codec2"},
                {"name": "kajongg_en_male2", "source": "kajongg"},
                {"name": "ktuberling_de", "source": "ktuberling"}]
    rows = [{"id": "00000_codec2_vk2tpm_kajongg_en_male2", "si_snri": "4.0"},
            {"id": "00001_ktuberling_de_kajongg_en_male2", "si_snri": "8.0"},
            {"id": "tt_000", "si_snri": "100.0"}]  # not a pool id: counted nowhere
    assert card.per_source_figures(rows, speakers) == {
        "codec2": {"si_snri": 4.0, "count": 1}, "kajongg": {"si_snri": 6.0, "count": 2},
        "ktuberling": {"si_snri": 8.0, "count": 1}}


@pytest.mark.slow
def test_galr_separate_model_outputs_what_the_workdir_separator_does(use_registry, workdir_output,
                                                                   tmp_path):
    mixture, expected = workdir_output
    path = str(tmp_path / "mix.wav")
    soundfile.write(path, mixture, SAMPLE_RATE, subtype="FLOAT")
    env = dict(environment(), **{pretrained.ROOT_ENV: use_registry})
    result = subprocess.run([sys.executable, "-m", "galr_jax.inference.cli", "--model", NAME, path,
                             "--out", str(tmp_path / "out"), "--quiet"], capture_output=True,
                            text=True, env=env, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = np.stack([soundfile.read(str(tmp_path / "out" / f"mix_s{c}.wav"), dtype="float32")[0]
                        for c in (1, 2)])
    # The subprocess compiles with XLA's fast settings (environment()): not bit-identical.
    np.testing.assert_allclose(outputs, expected, atol=1e-5)


@pytest.mark.parametrize("name", pretrained.list_models() or [
    pytest.param(None, marks=pytest.mark.skip(reason="no pretrained model in the registry"))])
def test_shipped_models_output_sources_at_the_mixtures_level(name):
    """A normal input (peak 0.5): the sum of the outputs peaks within 1 dB of the mixture.

    Separator gives the outputs least-squares gains against the mixture, so their sum is
    the mixture's projection on the outputs; how close that comes to the mixture depends
    on the model: a trained masking model's outputs nearly span the mixture (within
    0.6 dB on held-out real speakers), a model trained for 2 steps does not (-5 dB). So
    this runs on every released model (the package's, or $GALR_PRETRAINED_DIR's), and
    tests/test_level.py checks the rescaling itself."""
    import soxr

    separator = Separator.from_pretrained(name)
    mixture = soxr.resample(_mixture(2.0), SAMPLE_RATE, separator.sample_rate)
    mixture *= 0.5 / np.abs(mixture).max()
    outputs = separator.separate(mixture)
    ratio_db = 20 * np.log10(np.abs(outputs.sum(axis=0)).max() / np.abs(mixture).max())
    assert abs(ratio_db) < 1.0, ratio_db


@pytest.mark.slow
def test_galr_export_model_runs_the_released_weights(use_registry, tmp_path):
    from galr_jax.inference import exported
    from galr_jax.inference.apply import BatchedApply

    out = str(tmp_path / "tiny.jaxexport")
    assert export_cli.main(["--model", NAME, "--out", out, "--platforms", "cpu",
                            "--lengths", "1"]) == 0
    mixture = _mixture()[None]
    model = pretrained.load(NAME)
    np.testing.assert_allclose(exported.load(out)(mixture),
                               BatchedApply(model.config, model.variables)(mixture), atol=1e-5)


def test_model_options_need_their_companions(tmp_path, capsys):
    with pytest.raises(SystemExit):
        separate.main(["mix.wav", "--out", str(tmp_path)])  # no weights named
    assert "one of --workdir, --model, --exported or --list-models" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        evaluate_checkpoint.main(["--model", NAME, "--data", str(tmp_path)])  # no --out
    assert "--model needs --data (the corpus) and --out" in capsys.readouterr().err
