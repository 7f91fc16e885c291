"""The Ray Data engine (local, 2 workers): the same rows as the in-process engine, the model loaded once per
worker, a bad file reported amid good ones, and resumption through the CLI. Skipped when Ray is absent."""
import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray")

from attnviz.cli import main  # noqa: E402
from attnviz.engine import Job, Source, Worker, read_results  # noqa: E402
from attnviz.engine.bench import _StampReady  # noqa: E402
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
    assert timing["workers"] == 2 and len(list(stamps.iterdir())) == 2      # one model load per worker
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
