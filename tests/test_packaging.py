"""Package hygiene: the type check, the API reference, what the wheel ships, and the one version."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest
from jupyter_core.paths import jupyter_path

import jupyter_plb
from jupyter_plb import errors
from jupyter_plb.balancer.healthcheck import HealthCheck
from jupyter_plb.client import Client, PlbFuture
from jupyter_plb.cluster.launch import LocalCluster
from jupyter_plb.jupyter.magics import SUBCOMMANDS
from jupyter_plb.jupyter.widgets import Dashboard
from jupyter_plb.monitor.standalone import StandaloneMonitor
from jupyter_plb.workers.hub import WorkerHub

ROOT = Path(__file__).resolve().parent.parent
PACKAGE_JSON = json.loads((ROOT / "labextension" / "package.json").read_text(encoding="utf-8"))
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def _run(*args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.mark.timeout(300)
def test_mypy_passes_on_the_package() -> None:
    result = _run("mypy", timeout=280)  # files and settings: [tool.mypy] in pyproject.toml
    assert result.returncode == 0, f"mypy found problems:\n{result.stdout}{result.stderr}"


def _public(cls: type) -> set[str]:
    """The public names ``cls`` itself defines (methods and properties)."""
    return {name for name in vars(cls) if not name.startswith("_")}


@pytest.mark.timeout(300)
def test_api_reference_builds_without_warnings_and_covers_the_public_api(tmp_path: Path) -> None:
    out = tmp_path / "html"
    result = _run(
        "sphinx", "-W", "--keep-going", "-q", "-b", "html", "-d", str(tmp_path / "doctrees"),
        str(ROOT / "docs" / "api"), str(out), timeout=280,
    )
    assert result.returncode == 0, f"the API reference has warnings or errors:\n{result.stdout}{result.stderr}"
    html = "".join(page.read_text(encoding="utf-8") for page in out.glob("*.html"))
    documented = set(re.findall(r'id="([\w.-]+)"', html))
    expected = {f"jupyter_plb.{name}" for name in jupyter_plb.__all__ if name != "__version__"}
    expected |= {f"jupyter_plb.Client.{name}" for name in {n for n in dir(Client) if not n.startswith("_")}}
    for path, cls in [
        ("jupyter_plb.client.PlbFuture", PlbFuture),
        ("jupyter_plb.WorkerHub", WorkerHub),
        ("jupyter_plb.HealthCheck", HealthCheck),
        ("jupyter_plb.LocalCluster", LocalCluster),
        ("jupyter_plb.monitor.standalone.StandaloneMonitor", StandaloneMonitor),
        ("jupyter_plb.jupyter.widgets.Dashboard", Dashboard),
    ]:
        expected |= {path} | {f"{path}.{name}" for name in _public(cls)}
    expected |= {f"jupyter_plb.errors.{name}" for name in errors.__all__}
    expected |= {f"jupyter_plb.core.parameters.{name}" for name in ("load", "validate", "DEFAULTS")}
    expected |= {f"plb-{name}" for name in SUBCOMMANDS}
    missing = sorted(expected - documented)
    assert not missing, f"not in the API reference (docs/api/*.rst): {missing}"


def _build_wheel(directory: Path) -> Path:
    from hatchling.builders.wheel import WheelBuilder

    (wheel,) = WheelBuilder(str(ROOT)).build(directory=str(directory), versions=["standard"])
    return Path(wheel)


def test_wheel_ships_py_typed_the_license_and_the_labextension_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HATCH_BUILD_NO_HOOKS", "true")  # the Python side only: no lab extension build
    wheel = _build_wheel(tmp_path)
    version = PACKAGE_JSON["version"]
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"jupyter_plb-{version}.dist-info/METADATA").decode()
    assert "jupyter_plb/py.typed" in names
    assert f"jupyter_plb-{version}.dist-info/licenses/LICENSE" in names
    assert f"\nVersion: {version}\n" in metadata
    assert "\nLicense-Expression: BSD-3-Clause\n" in metadata


def test_license_file_pyproject_and_package_json_agree() -> None:
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.startswith("BSD 3-Clause License")
    assert "Copyright (c) " in text and "jupyter_plb developers" in text
    assert PYPROJECT["project"]["license"] == PACKAGE_JSON["license"] == "BSD-3-Clause"
    assert PYPROJECT["project"]["authors"] == [{"name": PACKAGE_JSON["author"]["name"]}]


def test_one_version_for_python_the_metadata_and_the_lab_extension() -> None:
    declared = PACKAGE_JSON["version"]
    assert "version" not in PYPROJECT["project"] and "version" in PYPROJECT["project"]["dynamic"]
    installed = importlib.metadata.version("jupyter_plb")
    assert installed == declared, f"installed: {installed}, labextension/package.json: {declared}; pip install ."
    assert jupyter_plb.__version__ == declared
    lab = next((Path(d) / "package.json" for d in jupyter_path("labextensions", "jupyter-plb")
                if (Path(d) / "package.json").is_file()), None)
    assert lab is not None, "the jupyter-plb lab extension is not installed"
    assert json.loads(lab.read_text(encoding="utf-8"))["version"] == declared, f"{lab} is of another version"
