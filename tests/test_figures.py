"""``scripts/figures.py`` redraws the committed ``docs/figures/*.png`` from the repository
alone, each small enough to commit and each shown in docs/figures.md."""

import os
import pathlib
import subprocess
import sys

import numpy as np
from PIL import Image

from subprocess_env import REPO, cpu_environment

FIGURES = pathlib.Path(REPO) / "docs" / "figures"
MAX_PNG_BYTES = 150_000


def test_figures_script_redraws_the_committed_pngs(tmp_path):
    result = subprocess.run([sys.executable, os.path.join(REPO, "scripts", "figures.py"),
                             "--out", str(tmp_path)], capture_output=True, text=True,
                            env=cpu_environment(), cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    drawn = sorted(p.name for p in tmp_path.glob("*.png"))
    committed = sorted(p.name for p in FIGURES.glob("*.png"))
    assert drawn == committed and len(drawn) >= 5
    docs = (FIGURES.parent / "figures.md").read_text()
    for name in drawn:
        assert (tmp_path / name).stat().st_size <= MAX_PNG_BYTES, name
        assert f"figures/{name}" in docs, f"docs/figures.md does not show {name}"
        new, old = (np.asarray(Image.open(folder / name).convert("RGB"))
                    for folder in (tmp_path, FIGURES))
        assert new.shape == old.shape and np.array_equal(new, old), (
            f"docs/figures/{name} is stale: run python scripts/figures.py and commit it")
