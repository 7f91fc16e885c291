"""Batch results never go stale: a folder is resumed only by the run that made it (job after defaults,
weights, attnviz version; none without run.json), one run holds a folder at a time, and a run killed
with SIGKILL at any moment then run again ends with exactly an uninterrupted run's rows and files."""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import attnviz
from attnviz.cli import main
from attnviz.engine import Job, Source, read_results
from attnviz.engine.local import run_inprocess
from attnviz.errors import UsageError

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNVIZ_CACHE", str(tmp_path / "cache"))


def _folder(root, n, seed=0):
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (30 + 3 * i, 40, 3), dtype=np.uint8)).save(root / f"img{i:02d}.png")
    return root


def _tiny_vit_folder(folder, seed):
    from attnviz.adapters.classifier import ClassifierAdapter
    from tests.conftest import save_tiny
    return save_tiny(ClassifierAdapter.tiny("vit", seed=seed), folder)


def test_results_without_run_json_are_refused(tmp_path, saved_models):
    """Parts with no run.json: what made them is unknown, so another method's run may not add to them
    (before: it wrote a new run.json, skipped every image and left the old method's maps)."""
    src, out = _folder(tmp_path / "in", 3), tmp_path / "out"
    model = str(saved_models["vit"])
    run_inprocess(Job(model=model, method="rollout"), Source(str(src)), out, files=False)
    (out / "run.json").unlink()
    with pytest.raises(UsageError, match="no run.json, so the run that made them is unknown"):
        run_inprocess(Job(model=model, method="attention"), Source(str(src)), out, files=False)
    assert set(read_results(out).column("method").to_pylist()) == {"rollout"}


def test_other_weights_under_the_same_folder_are_refused(tmp_path, capsys):
    """A save_pretrained folder re-saved with other weights (same architecture, same file size) is
    another model: its results do not resume the old ones; the message says the weights differ."""
    src, out, model = _folder(tmp_path / "in", 2), tmp_path / "out", tmp_path / "model"
    _tiny_vit_folder(model, seed=0)
    argv = ["batch", str(src), "--model", str(model), "--out-dir", str(out), "--no-files"]
    assert main(argv) == 0
    size = (model / "model.safetensors").stat().st_size
    manifest = json.loads((out / "run.json").read_text())
    # the digest is the files' own SHA-256, computed here another way
    own = hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
    assert manifest["model"]["weights"] == hashlib.sha256(f"model.safetensors\0{own}\n".encode()).hexdigest()
    _tiny_vit_folder(model, seed=1)                             # retrained in place
    assert (model / "model.safetensors").stat().st_size == size
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "other weights under the same model name" in err and err.count("\n") == 1
    assert f"sha256 {manifest['model']['weights'][:12]} there" in err
    _tiny_vit_folder(model, seed=0)                             # the first weights again: resumes
    assert main(argv) == 0 and "0 explained, 0 rejected, 2 already done" in capsys.readouterr().err


def test_digest_cache_follows_the_file(tmp_path):
    """The cached digest is used only while path, size, mtime and inode are unchanged."""
    from attnviz.engine.identity import file_digest, folder_digest
    f = tmp_path / "w.safetensors"
    f.write_bytes(b"a" * 1000)
    assert file_digest(f) == hashlib.sha256(b"a" * 1000).hexdigest()
    f.write_bytes(b"b" * 1000)                                   # same size, new content
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 1))
    assert file_digest(f) == hashlib.sha256(b"b" * 1000).hexdigest()
    assert folder_digest(tmp_path / "nothing-here") is None


def test_another_attnviz_version_is_refused(tmp_path, saved_models, monkeypatch):
    src, out = _folder(tmp_path / "in", 2), tmp_path / "out"
    job = Job(model=str(saved_models["vit"]))
    run_inprocess(job, Source(str(src)), out, files=False)
    monkeypatch.setattr(attnviz, "__version__", "99.0")
    with pytest.raises(UsageError, match=r"attnviz 0\..* and this is attnviz 99.0"):
        run_inprocess(job, Source(str(src)), out, files=False)


def test_parameters_are_compared_after_defaults(tmp_path, saved_models, capsys):
    """discard_ratio=0.0 typed out is the default run (the same maps): it resumes; 0.5 is refused."""
    src, out = _folder(tmp_path / "in", 2), tmp_path / "out"
    base = ["batch", str(src), "--model", str(saved_models["vit"]), "--out-dir", str(out), "--no-files"]
    assert main(base) == 0
    capsys.readouterr()
    assert main(base + ["--param", "discard_ratio=0.0"]) == 0
    assert "0 explained, 0 rejected, 2 already done" in capsys.readouterr().err
    assert main(base + ["--param", "discard_ratio=0.5"]) == 2
    assert "different params" in capsys.readouterr().err


def test_a_run_in_bfloat16_is_its_own_run(tmp_path, saved_models, capsys, monkeypatch):
    """The precision is part of a run's identity when it is not float32: a bfloat16 run resumes in bfloat16
    (also when ATTNVIZ_PRECISION says so) and is refused in float32; float32 runs keep their old identity."""
    src, out = _folder(tmp_path / "in", 2), tmp_path / "out"
    base = ["batch", str(src), "--model", str(saved_models["vit"]), "--out-dir", str(out), "--no-files"]
    assert main(base + ["--precision", "bfloat16"]) == 0
    assert json.loads((out / "run.json").read_text())["job"]["precision"] == "bfloat16"
    capsys.readouterr()
    monkeypatch.setenv("ATTNVIZ_PRECISION", "bfloat16")
    assert main(base) == 0
    assert "0 explained, 0 rejected, 2 already done" in capsys.readouterr().err
    monkeypatch.delenv("ATTNVIZ_PRECISION")
    assert main(base) == 2
    assert "different precision" in capsys.readouterr().err
    other = tmp_path / "out32"
    assert main(base[:-3] + ["--out-dir", str(other), "--no-files"]) == 0
    assert "precision" not in json.loads((other / "run.json").read_text())["job"]


def test_a_second_run_on_the_same_folder_is_refused(tmp_path, saved_models, capsys):
    """While one run holds the folder, another exits 75 with one sentence naming the holder."""
    from attnviz.engine.results import run_lock
    src, out = _folder(tmp_path / "in", 2), tmp_path / "out"
    argv = ["batch", str(src), "--model", str(saved_models["vit"]), "--out-dir", str(out)]
    with run_lock(out):
        assert main(argv) == 75
    err = capsys.readouterr().err
    assert f"is being written by another attnviz batch run (process {os.getpid()})" in err
    assert err.count("\n") == 1 and not (out / "results.parquet").exists()
    assert main(argv) == 0                                      # let go when the holder ends


# A helper process imports torch once, on one thread, then forks a child per run: each child runs
# `attnviz batch` (cli.main, as `python -m attnviz batch` does) and is SIGKILLed after a random delay.
KILLER = r"""
import json, os, random, signal, sys, time
import torch
torch.set_num_threads(1)
import attnviz, attnviz.engine, tqdm, pandas, matplotlib.cm
from attnviz import cli, render
cli._quiet_libraries()
src, model, root, rounds, per_round, seed = sys.argv[1:7]
attnviz.load_model(model)          # every import a run needs, done once before the forks
rounds, per_round, rng = int(rounds), int(per_round), random.Random(int(seed))

def start(out):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 2)
        os._exit(cli.main(["batch", src, "--model", model, "--out-dir", out, "--batch-size", "1"]))
    return pid

def parts(out):
    d = os.path.join(out, "results.parquet")
    return sum(n.endswith(".parquet") for n in os.listdir(d)) if os.path.isdir(d) else 0

t0, seen, pid = time.perf_counter(), [], start(os.path.join(root, "clean"))
while (got := os.waitpid(pid, os.WNOHANG)) == (0, 0):
    n = parts(os.path.join(root, "clean"))
    if n > len(seen):
        seen += [round(time.perf_counter() - t0, 3)] * (n - len(seen))
    time.sleep(0.002)
status, clean = got[1], time.perf_counter() - t0
n_parts = parts(os.path.join(root, "clean"))
report = {"clean_s": clean, "clean_parts_at": seen, "clean_exit": os.waitstatus_to_exitcode(status), "kills": [], "final_exit": []}
for r in range(rounds):
    out = os.path.join(root, f"killed{r}")
    # a random moment: once a random number of parts are there (at once if they are already), then a
    # random share of one chunk's time: during start-up, a chunk's work, or the writing of its part
    for wait in sorted(rng.randrange(n_parts) for _ in range(per_round)):
        pid = start(out)
        while parts(out) < wait and os.waitpid(pid, os.WNOHANG) == (0, 0):
            time.sleep(0.002)
        time.sleep(rng.uniform(0.0, 1.5 * (seen[-1] - seen[0]) / max(1, n_parts - 1)))
        before = parts(out)
        alive = os.waitpid(pid, os.WNOHANG) == (0, 0)
        if alive:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        report["kills"].append({"alive": alive, "parts": before})
    _, status = os.waitpid(start(out), 0)
    report["final_exit"].append(os.waitstatus_to_exitcode(status))
report["total_s"] = time.perf_counter() - t0
print(json.dumps(report))
"""


def _rows(out):
    rows = read_results(out).to_pylist()
    for r in rows:
        r.pop("seconds")
    return sorted(rows, key=lambda r: (r["path"], r["target_index"]))


def test_killed_anywhere_then_resumed_equals_an_uninterrupted_run(tmp_path, saved_models):
    """20 SIGKILLs at random moments (4 folders, 5 kills each, then one run to the end): each folder
    holds exactly the clean run's rows (none duplicated, lost or cut short), .npy maps and
    results.jsonl lines; every killed run let go of the folder's lock."""
    src = _folder(tmp_path / "in", 16)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", KILLER, str(src), str(saved_models["vit"]), str(tmp_path),
                           "4", "5", "0"], capture_output=True, text=True, env=env, timeout=240)
    assert proc.returncode == 0, proc.stderr[-2000:]
    report = json.loads(proc.stdout.splitlines()[-1])
    assert report["clean_exit"] == 0 and report["final_exit"] == [0] * 4
    killed = [k for k in report["kills"] if k["alive"]]
    # the kills landed before any part and between parts (16 images: 4 chunks of 4, 4 parts)
    landed = {k["parts"] for k in killed}
    assert len(killed) >= 10 and 0 in landed and landed & {1, 2, 3}, report
    clean = _rows(tmp_path / "clean")
    assert len(clean) == 16 == len({r["path"] for r in clean})
    lines = sorted((tmp_path / "clean" / "results.jsonl").read_text().splitlines())
    for r in range(4):
        out = tmp_path / f"killed{r}"
        got = _rows(out)
        assert [x["path"] for x in got] == [x["path"] for x in clean]
        for a, b in zip(got, clean):
            assert a == b
        assert sorted((out / "results.jsonl").read_text().splitlines()) == lines
        for i in range(16):
            np.testing.assert_array_equal(np.load(out / f"img{i:02d}.png.npy"),
                                          np.load(tmp_path / "clean" / f"img{i:02d}.png.npy"))
        assert not list((out / "results.parquet").glob(".*.tmp"))


def test_a_hub_model_is_identified_by_its_revision(tmp_path, saved_models, monkeypatch):
    """A hub model's files sit in the HF cache under snapshots/<commit>, refs/main naming the commit: the
    identity is that commit and the files' digest; when main moves on, resuming is refused, naming the
    revisions."""
    from types import SimpleNamespace

    import huggingface_hub.constants as hf_constants

    from attnviz.engine.identity import model_identity
    from attnviz.engine.results import start_run
    cache = tmp_path / "hub"
    repo = cache / "models--someone--tiny-vit"

    def publish(commit, seed):
        snap = repo / "snapshots" / commit
        _tiny_vit_folder(snap, seed)
        (repo / "refs").mkdir(parents=True, exist_ok=True)
        (repo / "refs" / "main").write_text(commit)
        return snap
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(cache))
    first = publish("a" * 40, 0)
    model = SimpleNamespace(source="someone/tiny-vit", model=None)
    ident = model_identity(model)
    own = hashlib.sha256((first / "model.safetensors").read_bytes()).hexdigest()
    assert ident == {"revision": "a" * 40,
                     "weights": hashlib.sha256(f"model.safetensors\0{own}\n".encode()).hexdigest()}
    out = tmp_path / "out"
    start_run(out, {"method": "rollout"}, "src", ident)
    (out / "results.parquet").mkdir()
    (out / "results.parquet" / "part-x.parquet").write_bytes(b"")     # the run wrote rows
    publish("b" * 40, 1)
    with pytest.raises(UsageError, match=f"another hub revision of the model \\({'a' * 40} there, {'b' * 40} now\\)"):
        start_run(out, {"method": "rollout"}, "src", model_identity(model))
