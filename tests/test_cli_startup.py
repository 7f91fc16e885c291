"""`python -m attnviz --help`, `models` and argument errors answer without importing torch or transformers
(seconds of imports that these commands never use); explain keeps a class-agnostic forward free of autograd."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROBE = """
import runpy, sys
sys.argv = ["attnviz", *{argv!r}]
try:
    runpy.run_module("attnviz", run_name="__main__")
except SystemExit as e:
    code = e.code
print("HEAVY", sorted(m for m in ("torch", "transformers", "captum") if m in sys.modules), code)
"""


@pytest.mark.parametrize("argv,code", [(["--help"], 0), (["models"], 0), (["explain"], 2),
                                       (["explain", "x.png", "--size", "big"], 2)])
def test_light_commands_import_no_model_library(argv, code):
    out = subprocess.run([sys.executable, "-c", PROBE.format(argv=argv)], cwd=ROOT, capture_output=True,
                         text=True, timeout=120, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"})
    line = [ln for ln in out.stdout.splitlines() if ln.startswith("HEAVY")][-1]
    assert line == f"HEAVY [] {code}", (line, out.stderr[-500:])


def test_package_names_still_import_on_first_use():
    import attnviz
    assert attnviz.load_model.__module__ == "attnviz.loading" and attnviz.UsageError.__name__ == "UsageError"
    assert {"capture", "explain", "Capture"} <= set(dir(attnviz))
    with pytest.raises(AttributeError):
        attnviz.no_such_name


def test_class_agnostic_explain_captures_without_autograd(saved_models, monkeypatch, tmp_path, photo, capsys):
    """rollout never differentiates the capture, so the CLI's forward keeps no graph; relevance does.
    The timings name the imports (now paid on first use) apart from reading the image."""
    import json
    from attnviz import cli
    from attnviz.adapters.base import ModelAdapter
    seen = []
    real = ModelAdapter.capture

    def spy(self, inputs, *, grads=True):
        seen.append(grads)
        return real(self, inputs, grads=grads)
    monkeypatch.setattr(ModelAdapter, "capture", spy)
    photo.save(tmp_path / "p.png")
    for method in ("rollout", "relevance"):
        assert cli.main(["explain", str(tmp_path / "p.png"), "--model", str(saved_models["vit"]),
                         "--method", method, "--json"]) == 0
    assert seen == [False, True]
    rec = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"image", "imports", "model_load", "capture", "method"} <= set(rec["timings"])


def test_output_closed_early_exits_quietly():
    """`attnviz models --json | head -c1`-style: the reader is gone before the CLI writes. No traceback;
    exit 141 as a shell tool killed by SIGPIPE (documented in the CLI's exit codes)."""
    import subprocess
    import sys
    proc = subprocess.Popen([sys.executable, "-m", "attnviz", "models", "--methods", "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()                     # the reader goes away before the interpreter has even started
    err = proc.stderr.read().decode()
    assert proc.wait(60) == 141, err
    assert "Traceback" not in err and "BrokenPipe" not in err


def test_the_app_settings_are_read_without_streamlit():
    """`attnviz bench --app` reads the app's model lanes and torch threads from attnviz.ui.settings, a module
    without Streamlit (attnviz imports Streamlit only inside the app); the app's state module uses the same
    values."""
    import subprocess
    import sys
    code = ("import sys, attnviz.ui.settings as s, attnviz.loadtest.appbench; "
            "assert 'streamlit' not in sys.modules, 'streamlit imported'; print(s.MODEL_LANES, s.TORCH_THREADS)")
    env = {**os.environ, "ATTNVIZ_MODEL_LANES": "3", "ATTNVIZ_TORCH_THREADS": "2"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "2"]
    from attnviz.ui import settings, state
    assert (state.MODEL_LANES, state.TORCH_THREADS) == (settings.MODEL_LANES, settings.TORCH_THREADS)
