"""The sidecar is its own distribution: one `pip install ./sidecar` on a GPU host, depending only on what it imports."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from agentcom_sidecar.report import SidecarReport
from tests.sidecar.fakes import free_port

SIDECAR = Path(__file__).resolve().parents[2] / "sidecar"
PACKAGE = SIDECAR / "agentcom_sidecar"
# Import name -> distribution name, for the packages whose names differ.
# pydantic_core comes with pydantic, which pins its exact version: declaring pydantic declares it.
DISTRIBUTION_OF = {"pynvml": "nvidia-ml-py", "pydantic_core": "pydantic"}


def imported_top_level_names() -> set[str]:
    names = set()
    for path in PACKAGE.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.partition(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names.add(node.module.partition(".")[0])
    return names - set(sys.stdlib_module_names) - {"__future__", "agentcom_sidecar"}


def requirement_name(requirement: str) -> str:
    return requirement.split(">")[0].split("=")[0].split("[")[0].strip().lower()


def test_the_sidecar_declares_exactly_the_packages_it_imports():
    project = tomllib.loads((SIDECAR / "pyproject.toml").read_text())["project"]
    declared = {requirement_name(r) for r in project["dependencies"]}
    extras = {requirement_name(r) for r in project["optional-dependencies"]["nvidia"]}

    imported = {DISTRIBUTION_OF.get(name, name) for name in imported_top_level_names()}

    assert declared | extras == imported
    assert declared == {"httpx", "psutil", "pydantic", "websockets"}
    assert extras == {"nvidia-ml-py"}
    assert project["scripts"] == {"agentcom-sidecar": "agentcom_sidecar.agent:main"}


@pytest.mark.live
def test_one_pip_install_into_a_fresh_venv_gives_a_working_agentcom_sidecar_command(tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    # A clean environment: nothing from this checkout or the test venv leaks into the new one.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    install = subprocess.run(
        [venv / "bin" / "python", "-m", "pip", "install", "--quiet", f"{SIDECAR}[nvidia]"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert install.returncode == 0, install.stderr
    command = venv / "bin" / "agentcom-sidecar"

    helped = subprocess.run([command, "--help"], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    dry = subprocess.run(
        [command, "--once", "--dry-run", "--ollama-url", f"http://127.0.0.1:{free_port()}"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert helped.returncode == 0, helped.stderr
    assert "usage: agentcom-sidecar" in helped.stdout and "--hub" in helped.stdout
    assert dry.returncode == 0, dry.stderr
    SidecarReport.model_validate(json.loads(dry.stdout))  # the hub's schema accepts what it prints
    assert "nvidia-ml-py not installed" not in dry.stderr  # the [nvidia] extra brought pynvml
