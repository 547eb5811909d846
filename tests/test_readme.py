"""The README stays short, the links of the README and docs/*.md lead to files that exist,
and the README's quick commands (fenced blocks with the info string ``bash quick``) run
as written in a clean copy of the repository: its tracked files only, with the console
scripts setup.cfg declares and ``python`` on the PATH, as after ``pip install -e .``."""

import configparser
import os
import pathlib
import re
import shutil
import stat
import subprocess
import sys

import pytest

from subprocess_env import REPO, cpu_environment

ROOT = pathlib.Path(REPO)
README = ROOT / "README.md"
MAX_README_BYTES = 9000  # issue 22: a README a newcomer reads in five minutes
QUICK_INFO = "bash quick"  # CONTRIBUTING.md documents the marker
QUICK_TIMEOUT = 180  # seconds for all quick blocks; they take seconds on an idle CPU

FENCE = re.compile(r"^```([^\n`]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
LINK = re.compile(r"\]\(([^)\s]+)\)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto:


def _markdown_files() -> list[pathlib.Path]:
    return [README, ROOT / "CONTRIBUTING.md", *sorted((ROOT / "docs").glob("*.md"))]


def _prose(text: str) -> str:
    """The text without code (fenced blocks, inline spans), where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def _anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces as hyphens."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def _anchors(path: pathlib.Path) -> set[str]:
    return {_anchor(h) for h in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8")))}


def test_readme_is_short():
    size = README.stat().st_size
    assert size < MAX_README_BYTES, (
        f"README.md is {size} bytes, over {MAX_README_BYTES}: move details to docs/")


def test_relative_links_point_to_existing_files():
    broken = []
    for page in _markdown_files():
        for target in LINK.findall(_prose(page.read_text(encoding="utf-8"))):
            if EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                broken.append(f"{page.relative_to(ROOT)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
                broken.append(f"{page.relative_to(ROOT)}: {target} (no heading #{anchor})")
    assert not broken, "broken links:\n" + "\n".join(broken)


def _quick_blocks() -> list[str]:
    return [body for info, body in FENCE.findall(README.read_text(encoding="utf-8"))
            if info.strip() == QUICK_INFO]


def _clean_copy(destination: pathlib.Path) -> None:
    """The repository's tracked files (as they are in the working tree), links kept as
    links: what a fresh clone of the current state holds, without build outputs, data,
    runs or a venv."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    listed = subprocess.run(["git", "-C", REPO, "ls-files", "-z"], capture_output=True,
                            check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        source = ROOT / name
        if not os.path.lexists(source):  # deleted in the working tree, not yet committed
            continue
        target = destination / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target, follow_symlinks=False)


def _console_scripts(bin_dir: pathlib.Path) -> None:
    """An executable per console script of setup.cfg and ``python`` on the PATH, all
    running this interpreter (its installed dependencies) on the copy's sources."""
    bin_dir.mkdir()
    setup = configparser.ConfigParser()
    setup.read(ROOT / "setup.cfg")
    for line in filter(None, setup["options.entry_points"]["console_scripts"].splitlines()):
        name, _, target = (part.strip() for part in line.partition("="))
        module, _, function = target.partition(":")
        script = bin_dir / name
        script.write_text(f"#!{sys.executable}\nimport sys\nfrom {module} import {function}\n"
                          f"sys.argv[0] = {name!r}\nsys.exit({function}())\n")
        script.chmod(script.stat().st_mode | stat.S_IXUSR)
    for name in ("python", "python3"):
        script = bin_dir / name
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        script.chmod(script.stat().st_mode | stat.S_IXUSR)


def test_readme_quick_commands_run_in_a_clean_copy(tmp_path):
    blocks = _quick_blocks()
    assert blocks, f"README.md has no ```{QUICK_INFO} block"
    copy = tmp_path / "galr-jax"
    _clean_copy(copy)
    _console_scripts(tmp_path / "bin")
    env = cpu_environment()
    env["PYTHONPATH"] = str(copy)
    env["PATH"] = f"{tmp_path / 'bin'}{os.pathsep}{env['PATH']}"
    env.pop("GALR_PRETRAINED_DIR", None)  # the copy's own registry, as a user has it
    imported = subprocess.run(["python", "-c", "import galr_jax; print(galr_jax.__file__)"],
                              cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=QUICK_TIMEOUT)
    assert imported.stdout.startswith(str(copy)), (
        f"galr_jax imported from {imported.stdout.strip()!r}, not the copy: {imported.stderr}")
    for block in blocks:
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=copy, env=env,
                                capture_output=True, text=True, timeout=QUICK_TIMEOUT)
        assert result.returncode == 0, (
            f"README quick block failed (exit {result.returncode}):\n{block}\n"
            f"stdout:\n{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
