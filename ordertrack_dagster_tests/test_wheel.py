"""The package as users install it: a wheel, in a fresh environment, with no extras.

Every real deployment (an image, a wheel) installs this way, so this is where a file left
out of the package or an import of development tooling would show.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ordertrack_dagster.analytics.models import SQL_DIR

PROJECT_ROOT = Path(__file__).resolve().parents[1]
#: uv (pinned with the development tools) builds, installs and checks as pip does, from the
#: same hashed lock, in a fraction of pip's time: the environment is made anew on every run.
UV = Path(sys.executable).with_name("uv")
#: Parts of the repository that sit beside the code location and never ship in its wheel.
BESIDE = ("ordertrack_dagster/devstack/", "ordertrack_dagster/bench/")
DEVELOPMENT_ONLY = (
    "secantusdb",
    "moto",
    "aiosmtpd",
    "starlette",
    "uvicorn",
    "matplotlib",
    "psutil",
)

# Run from an empty directory, so that only the installed package can be imported.
LOAD_DEFINITIONS = f"""
import importlib.util, json
DEVELOPMENT_ONLY = {DEVELOPMENT_ONLY!r}
from ordertrack_dagster.definitions import defs
keys = defs.resolve_asset_graph().get_all_asset_keys()
print(json.dumps({{
    "analytics": sorted(k.path[-1] for k in keys if k.path[0] == "analytics"),
    "module": importlib.util.find_spec("ordertrack_dagster").origin,
    "beside": [name for name in ("ordertrack_dagster.devstack", "ordertrack_dagster.bench")
               if importlib.util.find_spec(name)],
    "installed": [name for name in DEVELOPMENT_ONLY if importlib.util.find_spec(name)],
}}))
"""


def _run(*command: str | Path, cwd: Path) -> str:
    result = subprocess.run(
        [str(part) for part in command], cwd=cwd, capture_output=True, text=True, timeout=900
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_without_extras_loads_every_sql_model(tmp_path: Path) -> None:
    # Built from a copy of what the package is made of, so the build leaves nothing in the
    # checkout and cannot reach for a file outside the package.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "setup.cfg"):
        shutil.copy(PROJECT_ROOT / name, source / name)
    shutil.copytree(
        PROJECT_ROOT / "ordertrack_dagster",
        source / "ordertrack_dagster",
        ignore=shutil.ignore_patterns("__pycache__"),
    )
    wheels = tmp_path / "wheels"
    _run(UV, "build", "--wheel", "-q", "-o", wheels, source, cwd=tmp_path)
    (wheel,) = wheels.glob("ordertrack_dagster-*.whl")

    _run(UV, "venv", "-q", "--python", sys.executable, tmp_path / "venv", cwd=tmp_path)
    python = tmp_path / "venv" / "bin" / "python"
    lock = PROJECT_ROOT / "requirements" / "runtime.lock"
    install = (UV, "pip", "install", "-q", "--python", python)
    _run(*install, "--require-hashes", "-r", lock, cwd=tmp_path)
    _run(*install, "--no-deps", wheel, cwd=tmp_path)
    _run(UV, "pip", "check", "--python", python, cwd=tmp_path)

    empty = tmp_path / "elsewhere"
    empty.mkdir()
    loaded = json.loads(_run(python, "-c", LOAD_DEFINITIONS, cwd=empty).splitlines()[-1])

    assert loaded["module"].startswith(str(tmp_path / "venv"))
    assert loaded["analytics"] == sorted(path.stem for path in SQL_DIR.glob("*.sql"))
    assert loaded["analytics"], "the checkout has no SQL models"
    assert loaded["installed"] == [], "development tooling was installed with the runtime"
    assert loaded["beside"] == [], "the wheel ships the embedded stack or the benchmark"
    shipped = zipfile.ZipFile(wheel).namelist()
    assert not [name for name in shipped if name.startswith(BESIDE)], "beside the location"
