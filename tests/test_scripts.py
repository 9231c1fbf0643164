"""Every script in scripts/ (tools and research probes) at least starts: each Python script answers --help
without doing any work, and each shell script parses (bash -n). Nothing else runs them in the suite."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
PYTHON_SCRIPTS = sorted(SCRIPTS.rglob("*.py"))
SHELL_SCRIPTS = sorted(SCRIPTS.rglob("*.sh"))


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(SCRIPTS)) for p in paths]


def test_scripts_are_found():
    assert len(PYTHON_SCRIPTS) >= 5 and len(SHELL_SCRIPTS) >= 5
    assert (SCRIPTS / "README.md").is_file()


def test_readme_names_every_script():
    readme = (SCRIPTS / "README.md").read_text()
    missing = [name for name in _ids(PYTHON_SCRIPTS + SHELL_SCRIPTS) if f"`{Path(name).name}`" not in readme]
    assert not missing, f"scripts/README.md does not describe {missing}"


@pytest.mark.parametrize("script", PYTHON_SCRIPTS, ids=_ids(PYTHON_SCRIPTS))
def test_python_script_help(script: Path, tmp_path: Path):
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "HF_HUB_OFFLINE": "1"}
    # from an empty folder: --help must not write anything (e.g. outputs/ or data/)
    result = subprocess.run(
        [sys.executable, str(script), "--help"], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: {script.name}"), result.stdout[:200]
    assert not any(tmp_path.iterdir()), "--help wrote files"


@pytest.mark.parametrize("script", SHELL_SCRIPTS, ids=_ids(SHELL_SCRIPTS))
def test_shell_script_syntax(script: Path):
    shell = "bash" if script.read_text().startswith("#!/usr/bin/env bash") else "sh"
    if shutil.which(shell) is None:
        pytest.skip(f"no {shell}")
    result = subprocess.run([shell, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
