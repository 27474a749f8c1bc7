"""The shipped configs travel inside the wheel, so list-cfg works after a plain pip install."""

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_wheel_contains_every_shipped_config(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("rmtrain-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    shipped = [p.name for p in (REPO / "configs").glob("*.py") if not p.name.startswith("_")]
    assert shipped
    for name in shipped:
        assert f"rmtrain/configs/{name}" in names, name
