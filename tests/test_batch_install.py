"""The package: `pip install .` into a fresh virtual environment gives a working `attnviz` command.

The fresh environment borrows the project's dependencies (a .pth line to this venv's site-packages: no
download), and attnviz itself is built from a copy of the sources and installed as a wheel would be, so
the command runs with no repository around it (the catalog and demo models must travel in the package).
"""
import json
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")


def test_console_script_after_pip_install(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "setup.py", "README.md"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "attnviz", src / "attnviz", ignore=IGNORE)
    shutil.copytree(ROOT / "models", src / "models", ignore=IGNORE)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    Path(site, "borrowed-deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(py), "install", "-q", "--no-deps",
                          "--no-build-isolation", "--no-index", str(src)], capture_output=True, text=True)
    assert pip.returncode == 0, pip.stderr[-2000:]
    exe = venv / "bin" / "attnviz"
    assert exe.is_file()
    env = {"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"}
    run = (lambda *a: subprocess.run([str(exe), *a], cwd=tmp_path, env=env, capture_output=True, text=True,
                                     timeout=300))
    models = run("models", "--json")
    assert models.returncode == 0, models.stderr[-2000:]
    demo = {r["name"]: r for r in json.loads(models.stdout)}["demo-vit-shapes"]
    assert demo["offline"] is True                      # found inside the installed package
    import attnviz
    where = subprocess.run([str(py), "-c", "import attnviz; print(attnviz.__file__, attnviz.__version__)"],
                           cwd=tmp_path, env=env, capture_output=True, text=True)
    path, version = where.stdout.split()
    assert Path(path).is_relative_to(venv) and version == attnviz.__version__
    image = ROOT / "assets" / "scene_red-triangle_yellow-cross.png"
    if not image.is_file():
        pytest.skip("the sample scene is missing")
    out = run("explain", str(image), "--json")
    assert out.returncode == 0, out.stderr[-2000:]
    rec = json.loads(out.stdout)
    assert rec["model"] == "demo-vit-shapes" and rec["map_shape"] == [8, 8]
