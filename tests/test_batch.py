"""The batch engine: batched maps equal single-image maps, per-image gradients, Parquet rows, resumption,
bad files amid good ones, grouping by input size."""
import io
import json

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

import attnviz
from attnviz.cli import main
from attnviz.engine import SCHEMA, Item, Job, Source, Worker, capture_batch, grads_for_batch, read_results
from attnviz.engine.local import run_inprocess
from attnviz.engine.results import map_of
from attnviz.errors import UsageError


def _images(n, seed=0):
    rng = np.random.default_rng(seed)
    # different original sizes: the processor resizes them all to one input size
    return [Image.fromarray(rng.integers(0, 256, (30 + 7 * i, 44 + 3 * i, 3), dtype=np.uint8)) for i in range(n)]


def _png(img):
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _folder(root, images, labels=None):
    root.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        sub = root / labels[i] if labels else root
        sub.mkdir(exist_ok=True)
        img.save(sub / f"img{i}.png")
    return root


@pytest.fixture(scope="module")
def deit(saved_models):
    """Distilled DeiT: the readout is CLS + distillation token, a case a one-hot CLS would get wrong."""
    return attnviz.load_model(str(saved_models["deit-teacher"]))


def test_batch_gradients_are_each_images_own(deit):
    """d(Σ_i score_i[t_i]) / dA, row i, equals image i's own backward from its own forward; other rows
    of one image's score are exactly zero (the images of a batch do not interact)."""
    images = _images(3)
    inputs = [deit.prepare(im) for im in images]
    caps = capture_batch(deit, inputs, grads=True)
    targets = [1, 4, 2]
    grads_for_batch(caps, targets)
    for im, cap, t in zip(images, caps, targets):
        own = attnviz.capture(deit, im).attention_grads(t)       # a separate single-image forward + backward
        for g_batch, g_own in zip(cap.attention_grads(t), own):
            assert torch.allclose(g_batch, g_own, atol=1e-6, rtol=1e-4)
            assert g_own.abs().max() > 0
    # the batch graph itself: image 0's score does not depend on image 1's attentions
    fn = caps[0]._grad_fn
    g = torch.autograd.grad(fn.scores[0, 1], fn.wrt["attentions"], retain_graph=True)
    assert all(float(x[1:].abs().max()) == 0.0 for x in g) and any(float(x[0].abs().max()) > 0 for x in g)


@pytest.mark.parametrize("method", ["rollout", "relevance", "grad_rollout", "saliency", "input_x_gradient",
                                    "integrated_gradients"])
def test_batched_maps_equal_single_image_maps(deit, method):
    """The engine (one forward per batch, one backward per target rank, Captum on the whole batch) gives
    each image the map `attnviz.explain` gives it alone, for the top two targets."""
    images = _images(5)
    params = {"n_steps": 8} if method == "integrated_gradients" else {}
    worker = Worker(Job(model="x", method=method, top_k=2, batch_size=3, params=params), deit)
    threads = torch.get_num_threads()
    results = worker.run([Item(f"img{i}", None, _png(im)) for i, im in enumerate(images)])
    assert torch.get_num_threads() == threads           # the one-thread stretch for small ops gives them back
    for im, r in zip(images, results):
        single = attnviz.capture(deit, im)
        top2 = sorted(single.targets, key=lambda t: -t.score)[:2]
        expected = [top2[0]] if method == "rollout" else top2
        assert [row["target_index"] for row in r.rows] == [t.index for t in expected]
        for row, t in zip(r.rows, expected):
            ref = attnviz.explain(deit, single, method, t.index, **params).map
            got = map_of(row)
            assert got.shape == ref.shape
            np.testing.assert_allclose(got, ref, rtol=1e-4, atol=1e-6 * float(np.abs(ref).max()))


def test_groups_by_input_size(saved_models):
    """Images of two input sizes (no resize) take two forwards, and come back in their own order."""
    adapter = attnviz.load_model(str(saved_models["vit"]))
    adapter.processor.do_resize = False                          # the input keeps each image's own size
    try:
        sizes = [(32, 32), (40, 24), (32, 32), (40, 24), (32, 32)]
        rng = np.random.default_rng(1)
        images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in sizes]
        calls = []
        run = adapter._run
        adapter._run = lambda inputs, x, **kw: (calls.append(tuple(x.shape)), run(inputs, x, **kw))[1]
        results = Worker(Job(model="x", method="relevance", batch_size=8), adapter).run(
            [Item(f"i{k}", None, _png(im)) for k, im in enumerate(images)])
        adapter._run = run
        assert sorted(calls) == [(2, 3, 40, 24), (3, 3, 32, 32)]
        assert [r.path for r in results] == [f"i{k}" for k in range(5)]
        for im, r, (h, w) in zip(images, results, sizes):
            ref = attnviz.explain(adapter, im, "relevance").map
            assert ref.shape == (h // 8, w // 8)
            np.testing.assert_allclose(map_of(r.rows[0]), ref, rtol=1e-4, atol=1e-7)
    finally:
        adapter.processor.do_resize = True


def test_parquet_rows_schema_and_files(tmp_path, saved_models):
    """One row per image and target in the declared schema; the map there is the .npy one; the folder
    label and the top prediction are kept; a bad file is one error row and exit code 3, the rest done."""
    images = _images(4)
    src = _folder(tmp_path / "in", images, labels=["cat", "cat", "dog", "dog"])
    (src / "dog" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "out"
    code = main(["batch", str(src), "--model", str(saved_models["vit"]), "--method", "relevance", "--top-k", "2",
                 "--batch-size", "3", "--out-dir", str(out)])
    assert code == 3
    parts = list((out / "results.parquet").glob("*.parquet"))
    assert parts and all(pq.read_schema(p).equals(SCHEMA) for p in parts)
    rows = read_results(out).to_pylist()
    good = [r for r in rows if r["error"] is None]
    bad = [r for r in rows if r["error"] is not None]
    assert len(good) == 8 and len(bad) == 1 and bad[0]["path"].endswith("dog/broken.png")
    assert "not a supported image" in bad[0]["error"] and bad[0]["map"] is None
    adapter = attnviz.load_model(str(saved_models["vit"]))
    for i, im in enumerate(images):
        mine = [r for r in good if r["path"].endswith(f"/img{i}.png")]
        assert len(mine) == 2 and {r["label"] for r in mine} == {"cat" if i < 2 else "dog"}
        cap = attnviz.capture(adapter, im)
        top = adapter.resolve_target(cap, None)
        assert all(r["predicted_index"] == top.index and r["predicted_label"] == top.label for r in mine)
        for r in mine:
            assert r["map_shape"] == [4, 4] and r["over"] == "patches" and r["class_specific"]
            assert r["score"] == pytest.approx(float(cap.scores[r["target_index"]]), rel=1e-5)
            ref = attnviz.explain(adapter, cap, "relevance", r["target_index"]).map
            np.testing.assert_allclose(map_of(r), ref, rtol=1e-4, atol=1e-7)
            rel = r["path"].split("/in/")[1]
            np.testing.assert_array_equal(np.load(out / f"{rel}.t{r['target_index']}.npy"), map_of(r))
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    assert sum("error" in x for x in lines) == 1 and len(lines) == 9


def test_resume_skips_done_images(tmp_path, saved_models):
    """A second run does only the new images; a broken part file is set aside and its images redone;
    another method into the same folder is refused."""
    adapter = attnviz.load_model(str(saved_models["vit"]))
    src = _folder(tmp_path / "in", _images(3))
    out = tmp_path / "out"
    job = Job(model=str(saved_models["vit"]), method="rollout", batch_size=2)
    first = run_inprocess(job, Source(str(src)), out, adapter=adapter, files=False, chunk=2)
    assert (first.explained, first.skipped) == (3, 0)
    for i, im in enumerate(_images(2, seed=5)):
        im.save(src / f"new{i}.png")
    calls = []
    run = adapter._run
    adapter._run = lambda inputs, x, **kw: (calls.append(x.shape[0]), run(inputs, x, **kw))[1]
    try:
        second = run_inprocess(job, Source(str(src)), out, adapter=adapter, files=False)
    finally:
        adapter._run = run
    assert (second.explained, second.skipped) == (2, 3) and sum(calls) == 2
    paths = read_results(out).column("path").to_pylist()
    assert len(paths) == 5 == len(set(paths))
    # a part file cut short (a run killed while writing it)
    part = sorted((out / "results.parquet").glob("*.parquet"))[0]
    n_lost = len(pq.read_table(part))
    part.write_bytes(part.read_bytes()[:40])
    third = run_inprocess(job, Source(str(src)), out, adapter=adapter, files=False)
    assert third.explained == n_lost and (out / "results.parquet" / (part.name + ".broken")).exists()
    assert len(read_results(out)) == 5
    with pytest.raises(UsageError, match="another run"):
        run_inprocess(Job(model=str(saved_models["vit"]), method="relevance"), Source(str(src)), out,
                      adapter=adapter)


def test_uri_source_and_out_dir_checks(tmp_path, saved_models):
    """A file:// URI is read through pyarrow's filesystem; the output may not be inside the images."""
    src = _folder(tmp_path / "in", _images(2))
    code = main(["batch", f"file://{src}", "--model", str(saved_models["vit"]), "--out-dir", str(tmp_path / "o"),
                 "--no-files"])
    assert code == 0
    assert len(read_results(tmp_path / "o")) == 2 and not (tmp_path / "o" / "results.jsonl").exists()
    assert main(["batch", str(src), "--model", str(saved_models["vit"]), "--out-dir", str(src / "maps")]) == 2
    assert main(["batch", str(src), "--model", str(saved_models["vit"]), "--out-dir", str(tmp_path / "o2"),
                 "--batch-size", "0"]) == 2
    # a run stopped by a bad target wrote nothing: the folder takes the corrected run
    assert main(["batch", str(src), "--model", str(saved_models["vit"]), "--method", "relevance", "--target", "no",
                 "--out-dir", str(tmp_path / "o3")]) == 2
    assert main(["batch", str(src), "--model", str(saved_models["vit"]), "--method", "relevance", "--target", "1",
                 "--out-dir", str(tmp_path / "o3")]) == 0
    assert set(read_results(tmp_path / "o3").column("target_index").to_pylist()) == {1}


@pytest.mark.parametrize("kind", ["swin", "swinv2"])
def test_swin_images_share_one_forward_and_keep_their_own_windows(kind):
    """Swin batches too: image i's window attentions and their gradients are its own rows of the batch's
    [B · n_windows, H, S, S], equal to a separate single-image forward and backward (issue 25 item 6), and the
    batch worker's relevance maps equal `explain` on each image alone."""
    from attnviz.adapters.swin import SwinAdapter
    swin = SwinAdapter.tiny(kind)
    images = _images(3)
    inputs = [swin.prepare(im) for im in images]
    calls = []
    swin.model.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0] if a else None))
    caps = capture_batch(swin, inputs, grads=True)
    assert len(calls) == 1                                      # one forward for the three images
    targets = [1, 4, 2]
    grads_for_batch(caps, targets)
    for im, cap, t in zip(images, caps, targets):
        single = attnviz.capture(swin, im)
        assert torch.allclose(cap.scores, single.scores, atol=1e-5)
        for a_b, a_s in zip(cap.extras["windows"], single.extras["windows"]):      # [n_windows, H, S, S]
            assert a_b.shape == a_s.shape and torch.allclose(a_b, a_s, atol=1e-6, rtol=1e-4)
        for g_b, g_s in zip(cap.grads(t, "windows"), single.grads(t, "windows")):
            assert g_b.shape == g_s.shape and torch.allclose(g_b, g_s, atol=1e-6, rtol=1e-4)
        np.testing.assert_allclose(attnviz.explain(swin, cap, "relevance", target=t).map,
                                   attnviz.explain(swin, single, "relevance", target=t).map, rtol=1e-4, atol=1e-6)
    worker = Worker(Job(model="x", method="relevance", top_k=1, batch_size=3), swin)
    results = worker.run([Item(f"img{i}", None, _png(im)) for i, im in enumerate(images)])
    for im, r in zip(images, results):
        single = attnviz.capture(swin, im)
        top = swin.resolve_target(single, None)
        np.testing.assert_allclose(r.exps[0].map, attnviz.explain(swin, single, "relevance", target=top.index).map,
                                   rtol=1e-4, atol=1e-6)
