"""The container: its Dockerfile lints clean and its entrypoint routes arguments as documented."""
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow  # a subprocess
def test_hadolint_passes():
    hadolint = shutil.which("hadolint") or str(Path(__import__("sys").executable).parent / "hadolint")
    result = subprocess.run([hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def run_entrypoint(tmp_path, *args):
    """The real entrypoint script, with `ratio-cnn` replaced by a stub that echoes its arguments."""
    (tmp_path / "ratio-cnn").write_text('#!/bin/sh\necho "ratio-cnn $*"\n')
    (tmp_path / "ratio-cnn").chmod(0o755)
    env = {"PATH": f"{tmp_path}:/usr/bin:/bin"}
    return subprocess.run([str(ROOT / "deploy" / "entrypoint.sh"), *args], capture_output=True, text=True, env=env)


def test_dashed_arguments_go_to_train(tmp_path):
    assert run_entrypoint(tmp_path, "--ratio", "3").stdout.strip() == "ratio-cnn train --ratio 3"


def test_other_commands_run_as_given(tmp_path):
    assert run_entrypoint(tmp_path, "echo", "prefect", "flow-run", "execute").stdout.strip() == "prefect flow-run execute"


def test_image_runs_as_non_root_and_copies_only_what_runs():
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert "\nUSER 10001" in dockerfile
    assert dockerfile.startswith("#") and "FROM pytorch/pytorch:" in dockerfile and "-runtime" in dockerfile
    ignored = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignored[1] == "*" and "!ratio_cnn/" in ignored
