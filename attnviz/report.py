"""``attnviz report RESULTS --out report.html``: one self-contained page about a batch run.

Reads a batch output folder (``results.parquet`` and ``run.json``) and shows:

* the mean map per predicted class (each map scaled to [0, 1] first, so no
  image outweighs another; signed maps by their positive part, the evidence for
  the target);
* for a labelled folder (one subfolder per class) the accuracy and the mean map
  per true class;
* deletion AUC against a random order's, image by image (when the run had
  ``--faithfulness``; Petsiuk et al. 2018);
* with several methods (``--method a,b``), the methods compared by deletion, insertion and ROAD
  (:mod:`attnviz.report_compare`);
* the least faithful maps (deletion AUC highest above random) and the most
  off-centre ones (distance of the map's centre of mass from the image centre,
  0 at the centre, 1 in a corner);
* with ``--masks``, the pointing game (Zhang et al. 2016: a hit when the map's
  peak lies on the object) overall and per class, and the worst misses (peak
  farthest from the object);
* a grid of the best and worst examples (by the faithfulness margin when
  measured, else by the pointing distance, else by the target's probability).
"""
from __future__ import annotations

import datetime
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Optional

import numpy as np
from PIL import Image

from . import report_html as H
from .report_compare import methods_section
from .errors import UsageError
from .images import ImageRejected, load_image

GRID = (14, 14)            # common grid on which maps of different shapes are averaged
MAX_CLASSES = 24           # classes shown in a mean-map grid


# --- per-row numbers ------------------------------------------------------
def map_of(row: dict) -> np.ndarray:
    from .engine.results import map_of as _map
    return _map(row)


def unit_map(row: dict) -> np.ndarray:
    """The map scaled to [0, 1] (signed maps: positive part), on :data:`GRID`."""
    from . import render
    m = map_of(row).astype(np.float64)
    if row["signed"]:
        m = np.clip(m, 0, None)
    lo, hi = float(m.min()), float(m.max())
    m = (m - lo) / (hi - lo) if hi > lo else np.zeros_like(m)
    return render.upsample(m.astype(np.float32), (GRID[1], GRID[0]), "bilinear")


def off_centre(row: dict) -> float:
    """Distance of the map's centre of mass from the centre of what the model saw: 0 centre, 1 corner."""
    m = map_of(row).astype(np.float64)
    if row["signed"]:
        m = np.clip(m, 0, None)
    m = m - m.min()
    total = m.sum()
    if total <= 0:
        return 0.0
    h, w = m.shape
    ys, xs = (np.arange(h) + 0.5) / h, (np.arange(w) + 0.5) / w
    cy, cx = float((m.sum(1) * ys).sum() / total), float((m.sum(0) * xs).sum() / total)
    return math.hypot(cy - 0.5, cx - 0.5) / math.hypot(0.5, 0.5)


def faithfulness_margin(row: dict) -> Optional[float]:
    """Deletion AUC minus the random order's: below 0 the map beats random, above 0 it is worse."""
    if row.get("deletion_auc") is None or row.get("random_deletion_auc") is None:
        return None
    return float(row["deletion_auc"] - row["random_deletion_auc"])


def label_matches(row: dict) -> bool:
    """A folder label names the predicted class by its label (any case) or its index."""
    lab = str(row["label"]).strip().lower()
    return lab in (str(row["predicted_label"]).strip().lower(), str(row["predicted_index"]))


# --- images and masks -----------------------------------------------------
class Images:
    """Reads the run's images (local or through pyarrow) for thumbnails; a missing one gives None."""

    def __init__(self):
        self.cache: dict[str, Optional[Image.Image]] = {}

    def get(self, path: str) -> Optional[Image.Image]:
        if path not in self.cache:
            self.cache[path] = self._read(path)
        return self.cache[path]

    @staticmethod
    def _read(path: str) -> Optional[Image.Image]:
        from .engine.sources import Source
        from .images import MAX_BYTES
        try:
            src = Source(path)
            img = load_image(src.read(src.base, MAX_BYTES))
        except (OSError, ImageRejected, UsageError):
            return None
        img.thumbnail((512, 512))        # thumbnails only: keeps the report and its memory small
        return img


def find_mask(masks: Path, rel: Path) -> Optional[Path]:
    """The mask named like the image: same relative path, any extension."""
    folder = masks / rel.parent
    if not folder.is_dir():
        return None
    for p in sorted(folder.iterdir()):
        if p.stem == rel.stem and p.is_file():
            return p
    return None


def load_mask(path: Path, size: tuple[int, int]) -> np.ndarray:
    """A mask as bool [H, W] at the image's own size (non-zero = object)."""
    with path.open("rb") as f:
        img = load_image(f.read())
    if img.size != size:
        img = img.resize(size, Image.NEAREST)
    return np.asarray(img.convert("L")) > 0


def pointing(row: dict, mask: np.ndarray) -> tuple[bool, float]:
    """(hit, distance): the pointing game in its default mode, and how far the map's peak lies from the
    object, in pixels of the image over its diagonal (0 for a hit)."""
    from .metrics import pointing_game_hit
    box = tuple(row["box"]) if row.get("box") is not None else None
    m = map_of(row)
    hit = pointing_game_hit(m, mask, box)
    if hit or not mask.any():
        return hit, 0.0 if hit else 1.0
    H, W = mask.shape
    left, top, right, bottom = box or (0, 0, W, H)
    r, c = np.unravel_index(int(np.argmax(m)), m.shape)
    y = top + (r + 0.5) * (bottom - top) / m.shape[0]
    x = left + (c + 0.5) * (right - left) / m.shape[1]
    ys, xs = np.nonzero(mask)
    return False, float(np.min(np.hypot(ys - y, xs - x)) / math.hypot(H, W))


# --- the page ---------------------------------------------------------------
def build_report(results: str | Path, out: str | Path, *, masks: Optional[str] = None, examples: int = 6) -> Path:
    """Write the HTML report of a batch output folder; returns its path."""
    from .engine.results import read_manifest, read_results
    folder = Path(results)
    if not (folder / "results.parquet").is_dir():
        raise UsageError(f"'{folder}' holds no batch results (results.parquet): give the --out-dir of "
                         "`attnviz batch`.")
    all_rows = read_results(folder).to_pylist()
    if not all_rows:
        raise UsageError(f"'{folder}' holds no result rows yet: run `attnviz batch` into it first.")
    manifest = read_manifest(folder)
    rows = [r for r in all_rows if r["error"] is None and r["over"] in ("patches", "pixels")]
    errors = [r for r in all_rows if r["error"] is not None]
    images = Images()
    parts = [_summary(manifest, all_rows, rows, errors)]
    parts.append(_mean_maps(rows, "predicted_label", "Mean map per predicted class",
                            "Each map is scaled to [0, 1] first; signed maps by their positive part."))
    if any(r["label"] is not None for r in rows):
        parts.append(_labelled(rows))
    mask_stats = _pointing(rows, manifest, Path(masks), images) if masks else None
    parts.append(_faithfulness(rows))
    parts.append(methods_section(rows))
    parts.append(_worst(rows, images, examples))
    if mask_stats:
        parts.append(mask_stats["html"])
    parts.append(_best_worst(rows, images, examples, mask_stats))
    if errors:
        parts.append("<h2>Files not explained</h2>" + H.table(["file", "why"], [(r["path"], r["error"])
                                                                              for r in errors[:200]]))
    title = f"attnviz report: {manifest.get('job', {}).get('method', rows[0]['method'] if rows else '')}"
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(H.page(title, "".join(parts)), encoding="utf-8")
    return out


def _summary(manifest: dict, all_rows: list[dict], rows: list[dict], errors: list[dict]) -> str:
    job = manifest.get("job", {})
    n_images = len({r["path"] for r in all_rows if r["error"] is None})
    first = rows[0] if rows else all_rows[0]
    info = [("source", manifest.get("source", "")), ("model", first.get("model")), ("method", first.get("method")),
            ("parameters", first.get("params") or job.get("params")), ("images explained", n_images),
            ("rows (image × target)", len(rows)), ("files not explained", len(errors)),
            ("written", datetime.datetime.now().strftime("%Y-%m-%d %H:%M"))]
    return "<h2>Run</h2>" + H.table(["", ""], info)


def _mean_maps(rows: list[dict], key: str, title: str, note: str) -> str:
    groups: dict[str, list[np.ndarray]] = defaultdict(list)
    seen: set[tuple[str, str]] = set()
    for r in rows:
        if (r["path"], r[key]) in seen:          # one map per image and class (top-k rows repeat images)
            continue
        seen.add((r["path"], r[key]))
        groups[str(r[key])].append(unit_map(r))
    if not groups:
        return ""
    names = sorted(groups, key=lambda k: (-len(groups[k]), k))[:MAX_CLASSES]
    cols = min(6, len(names))
    n_rows = math.ceil(len(names) / cols)
    fig, axes = H.new_figure(2.0 * cols, 2.1 * n_rows)
    fig.clf()
    for i, name in enumerate(names):
        ax = fig.add_subplot(n_rows, cols, i + 1)
        ax.imshow(np.mean(groups[name], axis=0), cmap="inferno", vmin=0, vmax=1)
        ax.set_title(f"{name[:22]} ({len(groups[name])})", fontsize=8)
        ax.axis("off")
    more = f" The {len(groups) - len(names)} rarer classes are not shown." if len(groups) > len(names) else ""
    return f"<h2>{H.esc(title)}</h2><p class='note'>{H.esc(note + more)}</p>" + H.plot(fig, title)


def _labelled(rows: list[dict]) -> str:
    per_image = {r["path"]: r for r in rows if r["label"] is not None}
    by_class: dict[str, list[bool]] = defaultdict(list)
    for r in per_image.values():
        by_class[r["label"]].append(label_matches(r))
    n = len(per_image)
    acc = sum(sum(v) for v in by_class.values()) / n
    table = H.table(["class (folder)", "images", "accuracy"],
                    [(k, len(v), f"{100 * sum(v) / len(v):.1f} %") for k, v in sorted(by_class.items())])
    head = (f"<h2>Labelled folder</h2><p>Accuracy {100 * acc:.1f} % over {n} images (a folder name matches the "
            "predicted label, in any case, or its index).</p>")
    return head + table + _mean_maps(list(per_image.values()), "label", "Mean map per true class",
                                     "One map per image, scaled to [0, 1] first.")


def _faithfulness(rows: list[dict]) -> str:
    pairs = [(r["deletion_auc"], r["random_deletion_auc"]) for r in rows if faithfulness_margin(r) is not None]
    if not pairs:
        return ("<h2>Deletion AUC against random</h2><p class='note'>Not measured: run `attnviz batch` with "
                "--faithfulness.</p>")
    d, rnd = np.array(pairs).T
    beat = int((d < rnd).sum())
    fig, ax = H.new_figure(5, 4.5)
    ax.scatter(rnd, d, s=12, alpha=0.7)
    lo, hi = float(min(d.min(), rnd.min())), float(max(d.max(), rnd.max()))
    ax.plot([lo, hi], [lo, hi], color="grey", lw=1, ls="--", label="map = random")
    ax.set_xlabel("deletion AUC, random order")
    ax.set_ylabel("deletion AUC, the map's order")
    ax.legend(loc="upper left")
    text = (f"<p>Deletion (Petsiuk et al. 2018): the map's most important features are removed first; a faithful "
            f"map makes the score fall faster than a random order (below the diagonal). Mean deletion AUC "
            f"{d.mean():.3g} against {rnd.mean():.3g} for random; the map beat random for {beat} of {len(d)} "
            "(image, target) pairs.</p>")
    return "<h2>Deletion AUC against random</h2>" + text + H.plot(fig, "deletion AUC against random")


def _thumb(row: dict, images: Images, caption: str) -> str:
    from . import render
    img = images.get(row["path"])
    m = map_of(row)
    if img is not None:
        box = tuple(row["box"]) if row.get("box") is not None else None
        if box is not None and img.size != (row["image_width"], row["image_height"]):
            sx, sy = img.width / row["image_width"], img.height / row["image_height"]
            box = (box[0] * sx, box[1] * sy, box[2] * sx, box[3] * sy)
        shown = render.overlay(img, m, norm=render.default_norm(bool(row["signed"])), box=box)
    else:
        shown = H.map_image(m, signed=row["signed"])
    return H.card(shown, caption)


def _name(row: dict) -> str:
    """The image's last two path parts (a labelled folder's class and the file) and the target."""
    return f"{'/'.join(Path(row['path']).parts[-2:])} · {row['target_label']}"


def _worst(rows: list[dict], images: Images, n: int) -> str:
    out = []
    margins = [(faithfulness_margin(r), r) for r in rows if faithfulness_margin(r) is not None]
    if margins:
        worst = sorted(margins, key=lambda t: -t[0])[:n]
        out.append("<h2>Least faithful maps</h2><p class='note'>Deletion AUC minus the random order's, highest "
                   "first (above 0: removing what the map calls important hurts less than removing at random)."
                   "</p>" + H.grid(_thumb(r, images, f"{_name(r)} · {m:+.3f}") for m, r in worst))
    ranked = sorted(rows, key=off_centre, reverse=True)[:n]
    out.append("<h2>Most off-centre maps</h2><p class='note'>Distance of the map's centre of mass from the centre "
               "of what the model saw (0 centre, 1 corner).</p>"
               + H.grid(_thumb(r, images, f"{_name(r)} · {off_centre(r):.2f}") for r in ranked))
    return "".join(out)


def _pointing(rows: list[dict], manifest: dict, masks: Path, images: Images) -> dict[str, Any]:
    from .engine.sources import Source
    if not masks.is_dir():
        raise UsageError(f"--masks: '{masks}' is not a folder.")
    source = Source(manifest.get("source", "")) if manifest.get("source") else None
    scored = []
    for r in rows:
        try:
            rel = Path(str(source.relative(r["path"]))) if source else Path(Path(r["path"]).name)
        except ValueError:
            rel = Path(Path(r["path"]).name)
        mp = find_mask(masks, rel)
        if mp is None:
            continue
        try:
            mask = load_mask(mp, (r["image_width"], r["image_height"]))
        except ImageRejected:
            continue
        hit, dist = pointing(r, mask)
        scored.append((hit, dist, r))
    if not scored:
        return {"html": f"<h2>Pointing game</h2><p class='note'>No mask in '{H.esc(masks)}' is named like an "
                        "image of this run.</p>", "scored": []}
    hits = sum(h for h, _, _ in scored)
    per: dict[str, list[bool]] = defaultdict(list)
    for h, _, r in scored:
        per[str(r["label"] if r["label"] is not None else r["target_label"])].append(h)
    misses = sorted([t for t in scored if not t[0]], key=lambda t: -t[1])
    html = (f"<h2>Pointing game</h2><p>The map's peak lies on the object in {hits} of {len(scored)} cases "
            f"({100 * hits / len(scored):.1f} %; Zhang et al. 2016).</p>"
            + H.table(["class", "with a mask", "hits"], [(k, len(v), f"{100 * sum(v) / len(v):.1f} %")
                                                         for k, v in sorted(per.items())]))
    if misses:
        html += ("<h3>Worst misses</h3><p class='note'>Peak farthest from the object (distance over the image "
                 "diagonal).</p>" + H.grid(_thumb(r, images, f"{_name(r)} · {d:.2f}") for _, d, r in misses[:12]))
    return {"html": html, "scored": scored}


def _best_worst(rows: list[dict], images: Images, n: int, mask_stats: Optional[dict]) -> str:
    """Ranked by a cost (lower is better): the faithfulness margin, else the pointing distance, else
    minus the target's probability; captions show the measure itself."""
    if any(faithfulness_margin(r) is not None for r in rows):
        keyed = [(faithfulness_margin(r), r) for r in rows if faithfulness_margin(r) is not None]
        how, shown = "deletion AUC minus random (lower is better)", (lambda k: f"{k:+.3g}")
    elif mask_stats and mask_stats["scored"]:
        keyed = [(d, r) for _, d, r in mask_stats["scored"]]
        how, shown = "distance of the map's peak from the object (lower is better)", (lambda k: f"{k:.3g}")
    else:
        keyed = [(-(r["probability"] if r["probability"] is not None else r["score"]), r) for r in rows]
        how, shown = "the target's probability (higher is better)", (lambda k: f"{-k:.3g}")
    keyed.sort(key=lambda t: t[0])
    # Fewer than 2n rows: split them (best gets the odd one) so no image is shown under both headings.
    k_best = min(n, (len(keyed) + 1) // 2)
    best, worst = keyed[:k_best], keyed[k_best:][::-1][:n]
    caption = (lambda k, r: f"{_name(r)} · {shown(k)}")
    html = (f"<h2>Best and worst examples</h2><p class='note'>Ranked by {H.esc(how)}.</p><h3>Best</h3>"
            + H.grid(_thumb(r, images, caption(k, r)) for k, r in best))
    if worst:
        html += "<h3>Worst</h3>" + H.grid(_thumb(r, images, caption(k, r)) for k, r in worst)
    return html
