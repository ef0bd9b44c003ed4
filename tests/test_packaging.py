"""The install layout: stdlib `platform` is never shadowed, and the wheel carries every package."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGE_DIRS = {"platform": "platform", "data_prep": "data_prep", "trainables": "trainables",
                   "search_spaces": "search_spaces"}


def test_platform_folder_has_no_init():
    assert not (REPO / "platform" / "__init__.py").exists()


def test_stdlib_platform_wins_from_repo_root():
    code = "import platform, torch; print(platform.__file__); print(platform.system())"
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    platform_file, system = out.stdout.split()
    assert not Path(platform_file).resolve().is_relative_to(REPO)
    assert system == "Linux"


def test_cli_imports_from_repo_root():
    out = subprocess.run([sys.executable, "-m", "celltune.platform", "--help"], cwd=REPO, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert "data" in out.stdout


def test_wheel_holds_every_package(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w",
                    str(tmp_path), str(REPO)], check=True)
    (wheel,) = tmp_path.glob("celltune-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = set()
    for sub, folder in SUBPACKAGE_DIRS.items():
        for py in (REPO / folder).rglob("*.py"):
            expected.add(f"celltune/{sub}/{py.relative_to(REPO / folder).as_posix()}")
    missing = sorted(expected - names)
    assert not missing, f"wheel lacks {missing}"
