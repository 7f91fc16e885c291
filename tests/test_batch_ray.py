"""The Ray Data engine (local, 2 workers): the same rows as the in-process engine, the model loaded once per
worker, a bad file reported amid good ones, and resumption through the CLI. Skipped when Ray is absent."""
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")

from attnviz.cli import main  # noqa: E402
from attnviz.engine import Job, Source, Worker, read_results  # noqa: E402
from attnviz.bench_batch import _StampReady  # noqa: E402
from attnviz.engine.local import pending_files, run_inprocess  # noqa: E402
from attnviz.engine.ray_engine import run_ray  # noqa: E402
from attnviz.engine.results import map_of  # noqa: E402


@pytest.fixture
def ray_session():
    import ray
    yield
    ray.shutdown()                       # no Ray processes left behind


def test_ray_engine_matches_in_process(tmp_path, saved_models, ray_session, capsys):
    rng = np.random.default_rng(3)
    src = tmp_path / "in"
    for k in range(6):
        sub = src / ("a" if k < 3 else "b")
        sub.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (36 + k, 40, 3), dtype=np.uint8)).save(sub / f"{k}.png")
    (src / "b" / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    job = Job(model=str(saved_models["deit-teacher"]), method="relevance", top_k=2, batch_size=2)
    source = Source(str(src))
    run_inprocess(job, source, tmp_path / "local", files=False)
    stamps = tmp_path / "stamps"
    stamps.mkdir()
    todo, skipped = pending_files(source, tmp_path / "ray", Worker(job))
    assert (len(todo), skipped) == (7, 0)
    timing = run_ray(job, source, tmp_path / "ray", todo, workers=2, threads=1, on_ready=_StampReady(str(stamps)))
    # one model load per worker, not per batch (4 batches here): Ray Data may finish all 4 on the first actor
    # before the second has started, so 1 or 2 loads, never more than the workers
    assert timing["workers"] == 2 and 1 <= len(list(stamps.iterdir())) <= 2
    key = (lambda r: (r["path"], r["target_index"]))
    local = {key(r): r for r in read_results(tmp_path / "local").to_pylist()}
    remote = {key(r): r for r in read_results(tmp_path / "ray").to_pylist()}
    assert set(local) == set(remote) and len(remote) == 6 * 2 + 1
    for k, r in remote.items():
        if r["error"] is not None:
            assert k[0].endswith("b/bad.jpg") and local[k]["error"] == r["error"]
            continue
        assert (r["label"], r["predicted_index"]) == (local[k]["label"], local[k]["predicted_index"])
        np.testing.assert_allclose(map_of(r), map_of(local[k]), rtol=1e-4, atol=1e-7)
    # the CLI resumes the Ray run: everything is done already
    code = main(["batch", str(src), "--engine", "ray", "--model", str(saved_models["deit-teacher"]),
                 "--method", "relevance", "--top-k", "2", "--batch-size", "2", "--out-dir", str(tmp_path / "ray")])
    assert code == 0 and "0 explained, 0 rejected, 7 already done" in capsys.readouterr().err


def test_ray_run_killed_then_resumed_has_every_row_once(tmp_path, saved_models):
    """`attnviz batch --engine ray` SIGKILLed once its first part file is there, then run again: every image
    has exactly one row, with the in-process engine's map (no row lost, doubled or cut short)."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path
    rng = np.random.default_rng(5)
    src = tmp_path / "in"
    src.mkdir()
    for k in range(8):
        Image.fromarray(rng.integers(0, 256, (36, 40 + k, 3), dtype=np.uint8)).save(src / f"{k}.png")
    model = str(saved_models["vit"])
    argv = [sys.executable, "-m", "attnviz", "batch", str(src), "--engine", "ray", "--workers", "1", "--batch-size",
            "1", "--model", model, "--out-dir", str(tmp_path / "ray")]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    parts = tmp_path / "ray" / "results.parquet"
    proc = subprocess.Popen(argv, env=env, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and proc.poll() is None and not list(parts.glob("*.parquet")):
            time.sleep(0.01)
        n_before = len(list(parts.glob("*.parquet")))
        killed = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        time.sleep(1.0)
        assert killed and 0 < n_before < 8, n_before             # killed mid-run
        assert subprocess.run(argv, env=env, stderr=subprocess.DEVNULL, timeout=300).returncode == 0
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)                  # whatever Ray left of the killed run
        except ProcessLookupError:
            pass
    run_inprocess(Job(model=model, batch_size=1), Source(str(src)), tmp_path / "local", files=False)
    local = {r["path"]: r for r in read_results(tmp_path / "local").to_pylist()}
    remote = read_results(tmp_path / "ray").to_pylist()
    assert sorted(r["path"] for r in remote) == sorted(local)
    for r in remote:
        np.testing.assert_allclose(map_of(r), map_of(local[r["path"]]), rtol=1e-4, atol=1e-7)
