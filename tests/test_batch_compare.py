"""`attnviz batch --method a,b --faithfulness`: one capture per image, each method's rows carry the deletion /
insertion AUCs and ROAD means that the metric functions give when called directly on that image; the run's
identity holds the list of methods; the report compares the methods."""
import json

import numpy as np
import pytest
from PIL import Image

import attnviz
from attnviz.cli import main
from attnviz.engine import read_results
from attnviz.engine.results import map_of
from attnviz.metrics import deletion_insertion, deletion_summary, road

METHODS = ("rollout", "relevance")


@pytest.fixture(scope="module")
def run(tmp_path_factory, saved_models):
    root = tmp_path_factory.mktemp("compare")
    src, out = root / "in", root / "out"
    src.mkdir()
    rng = np.random.default_rng(3)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(src / f"img{k}.png")
    model = str(saved_models["vit"])
    args = ["batch", str(src), "--model", model, "--method", METHODS[0], "--method", METHODS[1], "--faithfulness",
            "--out-dir", str(out)]
    assert main(args) == 0
    return src, out, model, args


def test_each_methods_numbers_are_the_metric_functions_on_that_image(run):
    src, out, model, _ = run
    rows = read_results(out).to_pylist()
    assert sorted((r["path"].rsplit("/", 1)[-1], r["method"]) for r in rows) == sorted(
        (f"img{k}.png", m) for k in range(3) for m in METHODS)
    adapter = attnviz.load_model(model)
    for r in rows:
        cap = attnviz.capture(adapter, Image.open(r["path"]).convert("RGB"))
        exp = attnviz.explain(adapter, cap, r["method"], target=r["target_index"])
        np.testing.assert_allclose(map_of(r), exp.map, rtol=1e-4, atol=1e-6)
        f = deletion_summary(deletion_insertion(adapter, cap, exp, target=r["target_index"]))
        g = road(adapter, cap, exp, target=r["target_index"])
        expected = {**{k: f[k] for k in ("deletion_auc", "random_deletion_auc", "insertion_auc",
                                         "random_insertion_auc")}, "road_morf": g["morf_mean"],
                    "road_lerf": g["lerf_mean"]}
        for k, v in expected.items():
            assert r[k] == pytest.approx(v, rel=1e-5, abs=1e-7), (r["method"], k)
    # each method's own files and results.jsonl lines
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted((x["file"], x["method"]) for x in lines) == sorted((f"img{k}.png", m) for k in range(3) for m in METHODS)
    assert all({"road_morf", "road_lerf", "deletion_auc"} <= set(x["faithfulness"]) for x in lines)
    for m in METHODS:
        assert (out / f"img0.png.{m}.npy").is_file() and (out / f"img0.png.{m}.png").is_file()


def test_the_list_of_methods_is_the_runs_identity(run):
    src, out, model, args = run
    assert main(args) == 0                                           # the same run resumes: nothing left to do
    assert len(read_results(out).to_pylist()) == 6
    assert json.loads((out / "run.json").read_text())["job"]["method"] == "rollout,relevance"
    other = ["batch", str(src), "--model", model, "--method", "rollout,attn_grad", "--faithfulness",
             "--out-dir", str(out)]
    assert main(other) == 2                                          # another list of methods: refused
    assert main(["batch", str(src), "--model", model, "--method", "rollout,relevance", "--param", "nope=1",
                 "--out-dir", str(out.parent / "x")]) == 2


def test_the_report_compares_the_methods(run, tmp_path):
    _, out, _, _ = run
    rows = read_results(out).to_pylist()
    html_path = tmp_path / "r.html"
    assert main(["report", str(out), "--out", str(html_path)]) == 0
    html = html_path.read_text()
    assert "Methods compared" in html
    for metric, better in (("deletion_auc", min), ("insertion_auc", max), ("road_morf", min), ("road_lerf", max)):
        means = {m: float(np.mean([r[metric] for r in rows if r["method"] == m])) for m in METHODS}
        sds = {m: float(np.std([r[metric] for r in rows if r["method"] == m], ddof=1)) for m in METHODS}
        for m in METHODS:
            assert f"{means[m]:.4g} ± {sds[m]:.2g} (n=3)" in html
        per_image = {}
        for r in rows:
            per_image.setdefault(r["path"], {})[r["method"]] = r[metric]
        wins = {m: sum(better(v, key=v.get) == m for v in per_image.values()) for m in METHODS}
        assert ", ".join(f"{m} {wins[m]}/3" for m in METHODS) in html
        best = better(METHODS, key=means.get)
        name = {"deletion_auc": "deletion AUC", "insertion_auc": "insertion AUC", "road_morf": "ROAD MoRF",
                "road_lerf": "ROAD LeRF"}[metric]
        row_html = html.split(f"<td>{name} ({'higher' if better is max else 'lower'})</td>")[1].split("</tr>")[0]
        assert f"<td>{best}</td>" in row_html
