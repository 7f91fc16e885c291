"""`attnviz report` (a batch run as one self-contained HTML page) and the single-image HTML report."""
import base64
import io
import re

import numpy as np
import pytest
from PIL import Image

import attnviz
from attnviz import render
from attnviz.cli import main
from attnviz.report import off_centre

DATA_URI = re.compile(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"')


def _pngs(html):
    """Every embedded image, decoded (a broken one raises)."""
    return [Image.open(io.BytesIO(base64.b64decode(b))).convert("RGB") for b in DATA_URI.findall(html)]


def _self_contained(html):
    assert "<script" not in html
    assert not re.search(r'(src|href)="(?!data:)', html)        # nothing fetched from anywhere


def test_off_centre_hand_built():
    row = {"map": np.zeros(16, np.float32), "map_shape": [4, 4], "signed": False}
    assert off_centre(row) == 0.0                                  # no mass: centre
    row["map"] = np.ones(16, np.float32)
    assert off_centre(row) == pytest.approx(0.0, abs=1e-9)         # uniform: centre of mass in the middle
    m = np.zeros((4, 4), np.float32)
    m[0, 0] = 1.0                                                  # all in the top-left cell, centre (1/8, 1/8)
    row["map"] = m.ravel()
    assert off_centre(row) == pytest.approx(np.hypot(3 / 8, 3 / 8) / np.hypot(0.5, 0.5))


def test_best_and_worst_do_not_repeat_an_image_on_a_small_run(tmp_path):
    """Three images and --examples 2: the best two by probability, then only the one left as the worst
    (not the middle image under both headings); one image: no empty Worst heading."""
    from attnviz.report import Images, _best_worst
    rows = [{"path": str(tmp_path / f"{name}.png"), "target_label": "c", "probability": p, "score": 0.0,
             "signed": False, "map": np.arange(4, dtype=np.float32), "map_shape": [2, 2], "box": None}
            for name, p in (("mid", 0.5), ("top", 0.9), ("low", 0.1))]
    html = _best_worst(rows, Images(), 2, None)
    best, worst = html.split("<h3>Worst</h3>")
    assert [n for n in ("top", "mid", "low") if f"{n}.png" in best] == ["top", "mid"]
    assert [n for n in ("top", "mid", "low") if f"{n}.png" in worst] == ["low"]
    assert "<h3>Worst</h3>" not in _best_worst(rows[:1], Images(), 2, None)


def test_dataset_report(tmp_path, saved_models):
    """Accuracy, pointing hits and faithfulness counts on the page equal those computed here image by image."""
    adapter = attnviz.load_model(str(saved_models["vit"]))
    rng = np.random.default_rng(7)
    src, masks = tmp_path / "in", tmp_path / "masks"
    images, correct, hits = {}, 0, 0
    for k in range(6):
        folder = "class_0" if k < 3 else "class_1"
        img = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
        (src / folder).mkdir(parents=True, exist_ok=True)
        (masks / folder).mkdir(parents=True, exist_ok=True)
        img.save(src / folder / f"{k}.png")
        cap = attnviz.capture(adapter, img)
        correct += adapter.resolve_target(cap, None).label == folder
        m = attnviz.explain(adapter, cap, "rollout").map                      # [4, 4] over 8-px patches
        r, c = np.unravel_index(int(np.argmax(m)), m.shape)
        mask = np.zeros((32, 32), np.uint8)
        if k % 2 == 0:                                    # a hit: the object is the map's peak cell
            mask[r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] = 255
            hits += 1
        else:                                             # a miss: the object is the opposite corner cell
            rr, cc = 3 - r if r != 3 - r else 0, 3 - c
            mask[rr * 8:(rr + 1) * 8, cc * 8:(cc + 1) * 8] = 255
        Image.fromarray(mask).save(masks / folder / f"{k}.png")
    (src / "class_1" / "junk.png").write_bytes(b"junk")
    out = tmp_path / "out"
    assert main(["batch", str(src), "--model", str(saved_models["vit"]), "--method", "rollout",
                 "--faithfulness", "--out-dir", str(out)]) == 3
    import json
    lines = [json.loads(x) for x in (out / "results.jsonl").read_text().splitlines()]
    f = [x["faithfulness"] for x in lines if "faithfulness" in x]
    beat = sum(x["deletion_auc"] < x["random_deletion_auc"] for x in f)
    html_path = tmp_path / "report" / "report.html"
    assert main(["report", str(out), "--out", str(html_path), "--masks", str(masks), "--examples", "2"]) == 0
    html = html_path.read_text()
    _self_contained(html)
    assert f"Accuracy {100 * correct / 6:.1f} % over 6 images" in html
    assert f"in {hits} of 6 cases" in html
    assert f"the map beat random for {beat} of 6" in html
    for title in ("Mean map per predicted class", "Mean map per true class", "Deletion AUC against random",
                  "Least faithful maps", "Most off-centre maps", "Pointing game", "Worst misses",
                  "Best and worst examples", "Files not explained"):
        assert title in html
    # plots: 2 mean-map grids + the deletion scatter; thumbnails: 2 least faithful, 2 off-centre,
    # 3 worst misses, 2 best + 2 worst
    assert len(_pngs(html)) == 3 + 2 + 2 + 3 + 4
    assert main(["report", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.html")]) == 2


def test_single_image_report(saved_models, photo):
    """The overlay on the page is render.overlay's; the AUCs are the curves' own; the targets and settings
    of the export record are shown."""
    from attnviz.metrics import deletion_insertion
    from attnviz.report_image import image_report_html
    adapter = attnviz.load_model(str(saved_models["vit"]))
    cap = attnviz.capture(adapter, photo)
    exp = attnviz.explain(adapter, cap, "relevance", target=2)
    curves = deletion_insertion(adapter, cap, exp)
    record = {"model": "tiny", "target": {"index": 2, "label": "class_2", "score": float(cap.scores[2])},
              "top_k": [{"index": 2, "label": "class_2", "probability": 0.5, "score": 1.0}],
              "settings": {"opacity": 0.5}, "versions": {"attnviz": attnviz.__version__}}
    html = image_report_html(photo, exp, record=record, box=cap.box, faithfulness=curves)
    _self_contained(html)
    shown = _pngs(html)[0]
    expected = render.overlay(photo, exp.map, box=cap.box)
    assert shown.size == photo.size and np.array_equal(np.asarray(shown), np.asarray(expected))
    assert f"{curves['deletion'].auc:.4f}" in html and f"{curves['random_insertion'][0].auc:.4f}" in html
    assert "class_2 (index 2)" in html and "opacity" in html and "Is the map faithful?" in html


def test_single_image_report_uses_the_scale_it_is_given():
    """The app's scale reaches the page: colormap, fixed range and opacity. A 1×2 map [0, 1] with vmax 2 at
    opacity 1: the leftmost column is viridis(0) and the rightmost viridis(0.5) (1 of 2), from matplotlib."""
    from matplotlib import colormaps

    from attnviz.report_image import image_report_html
    from attnviz.types import Explanation
    img = Image.new("RGB", (32, 16), (128, 128, 128))
    exp = Explanation(map=np.array([[0.0, 1.0]]), over="patches", signed=False, method="attention", target=None,
                      params={})
    html = image_report_html(img, exp, cmap="viridis", norm="minmax", vmin=0.0, vmax=2.0, alpha=1.0)
    shown = np.asarray(_pngs(html)[0]).astype(int)
    for col, t in ((0, 0.0), (31, 0.5)):
        want = np.round(np.array(colormaps["viridis"](t)[:3]) * 255)
        assert np.abs(shown[:, col] - want).max() <= 1
