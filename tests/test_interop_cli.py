"""``python -m galr_jax.interop.cli``: PyTorch <-> Orbax for users, the comparison, unsafe files."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from galr_jax.interop import cli as interop_cli
from galr_jax.config import load_config, save_config
from galr_jax.inference import Separator
from galr_jax.interop.torch_reference import build_torch_model
from galr_jax.models import build_model
from galr_jax.training.checkpoints import restore_variables
from inference_helpers import make_checkpoint, run_cli, speech_like, tiny_config, write_wav


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny config file, a torch reference checkpoint for it and a mixture wav."""
    folder = tmp_path_factory.mktemp("interop")
    config = tiny_config()
    save_config(config, str(folder / "tiny.yaml"))
    torch.manual_seed(0)
    torch.save(build_torch_model(config).state_dict(), str(folder / "model.pt"))
    write_wav(str(folder / "mix.wav"), speech_like(1.5).sum(axis=0))
    return folder


def _torch_output(state_dict, config, mixture: np.ndarray) -> np.ndarray:
    model = build_torch_model(config)
    model.load_state_dict(state_dict)
    model.eval()
    with torch.no_grad():
        return model(torch.from_numpy(mixture[None])).numpy()[0]


def test_torch_to_orbax_is_usable_by_separation_and_compares_equal(files):
    out = str(files / "exported")
    result = run_cli(["-m", "galr_jax.interop.cli", "torch-to-orbax", str(files / "model.pt"),
                      "--config", str(files / "tiny.yaml"), "--out", out])
    assert result.returncode == 0, result.stderr[-3000:]
    variables, meta = restore_variables(out)
    config = meta["config"]
    mixture = speech_like(1.5).sum(axis=0)
    state_dict = torch.load(str(files / "model.pt"), weights_only=True)
    expected = _torch_output(state_dict, config, mixture)
    np.testing.assert_allclose(np.asarray(build_model(config).apply(variables, mixture[None]))[0],
                               expected, atol=1e-5)
    assert Separator.from_checkpoint(out).separate(mixture).shape == (2, mixture.shape[0])
    report_path = str(files / "compare.json")
    code = interop_cli.main(["compare", "--workdir", out, "--torch", str(files / "model.pt"),
                             "--wav", str(files / "mix.wav"), "--json", report_path,
                             "--max-difference", "1e-4"])
    with open(report_path) as f:
        report = json.load(f)
    assert code == 0
    assert report["max_abs_difference"] < 1e-5 and report["min_si_snr_db"] > 60
    assert len(report["per_source"]) == 2 and report["samples"] == mixture.shape[0]


def test_compare_flags_different_weights(files, tmp_path):
    other = str(tmp_path / "other.pt")
    torch.manual_seed(1)
    torch.save(build_torch_model(tiny_config()).state_dict(), other)
    workdir = make_checkpoint(str(tmp_path / "ckpt"))
    code = interop_cli.main(["compare", "--workdir", workdir, "--torch", other, "--wav",
                             str(files / "mix.wav"), "--max-difference", "1e-4"])
    assert code == interop_cli.EXIT_TOO_DIFFERENT


def test_orbax_to_torch_round_trip_and_no_overwrite(tmp_path, capsys):
    config = tiny_config()
    workdir = make_checkpoint(str(tmp_path / "ckpt"), config, seed=4, step=3)
    out = str(tmp_path / "exported.pt")
    assert interop_cli.main(["orbax-to-torch", workdir, "--out", out]) == 0
    assert load_config(str(tmp_path / "exported.yaml")) == config
    variables, _ = restore_variables(workdir)
    mixture = speech_like(1.0).sum(axis=0)
    np.testing.assert_allclose(
        _torch_output(torch.load(out, weights_only=True), config, mixture),
        np.asarray(build_model(config).apply(variables, mixture[None]))[0], atol=1e-5)
    before = os.stat(out).st_mtime_ns
    assert interop_cli.main(["orbax-to-torch", workdir, "--out", out]) == interop_cli.EXIT_ERROR
    assert "already exists" in capsys.readouterr().err and os.stat(out).st_mtime_ns == before
    assert interop_cli.main(["orbax-to-torch", workdir, "--out", out, "--force"]) == 0


def test_config_mismatch_names_the_first_bad_key(files, tmp_path, capsys):
    wrong = str(tmp_path / "wrong.yaml")
    save_config(tiny_config(model={"hidden": 24}), wrong)
    code = interop_cli.main(["torch-to-orbax", str(files / "model.pt"), "--config", wrong,
                             "--out", str(tmp_path / "x")])
    assert code == interop_cli.EXIT_ERROR
    message = capsys.readouterr().err
    assert "blocks.0.locally_recurrent" in message and "shape" in message
    assert not os.path.exists(tmp_path / "x")


class _RunsCode:
    """Pickles to a call of ``open(path, 'w')``: loading it unsafely would create the file."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_pickles_with_code_are_refused(files, tmp_path, capsys):
    marker = str(tmp_path / "code_ran")
    malicious = str(tmp_path / "malicious.pt")
    state_dict = dict(torch.load(str(files / "model.pt"), weights_only=True))
    state_dict["payload"] = _RunsCode(marker)
    torch.save(state_dict, malicious)
    code = interop_cli.main(["torch-to-orbax", malicious, "--config", str(files / "tiny.yaml"),
                             "--out", str(tmp_path / "x")])
    assert code == interop_cli.EXIT_ERROR
    assert "refused" in capsys.readouterr().err
    assert not os.path.exists(marker)
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"\x00not a torch file" * 10)
    assert interop_cli.main(["torch-to-orbax", str(garbage), "--config", str(files / "tiny.yaml"),
                             "--out", str(tmp_path / "y")]) == interop_cli.EXIT_ERROR
    assert "not a readable PyTorch file" in capsys.readouterr().err
