"""Seeded synthetic scenes: coloured shapes on cluttered backgrounds, with known masks.

Each scene is a 64×64 RGB image holding 2 or 3 non-overlapping objects of
*distinct* shape classes, drawn over a textured, noisy background sprinkled with
small clutter (dots, short strokes, tiny rings) that belongs to no shape class.
Ground truth comes with it: one boolean mask and one bounding box per object, a
multi-hot label vector over :data:`SHAPES`, and an English caption naming the
objects from left to right (by bounding-box centre; objects, masks and caption share
that order). The same generator feeds the demo classifier, and
later the image–text and captioning demo models.

Determinism: ``make_scene(seed)`` with an int uses ``np.random.default_rng(seed)``;
``make_dataset(n, seed)[i]`` is ``make_scene(np.random.default_rng([seed, i]))``,
so a scene does not depend on how many others are drawn with it.

Conventions: images are ``uint8 [H, W, 3]``; masks ``bool [n_objects, H, W]``;
a bbox is ``(left, top, right, bottom)`` in pixels with right/bottom exclusive,
the tightest box around the object's mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np

IMAGE_SIZE = 64

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross", "diamond")

# Saturated, well-separated hues; the background is kept muted so that colour
# alone does not find an object (clutter uses these colours too).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 185, 60),
    "blue": (45, 85, 235),
    "yellow": (240, 220, 40),
    "magenta": (215, 50, 215),
    "cyan": (40, 215, 225),
    "orange": (245, 140, 30),
}
COLOUR_NAMES: tuple[str, ...] = tuple(COLOURS)

# Object half-size in pixels (so objects span roughly 15–23 px: 2–3 patches of 8).
MIN_HALF, MAX_HALF = 7.0, 11.0
# Every shape fits inside a circle of radius CIRCUMSCRIBE * half-size, whatever
# its rotation; placement keeps those circles' boxes apart by GAP pixels.
CIRCUMSCRIBE = 1.23
GAP = 2
MAX_ROTATION_DEG = 15.0  # below 22.5°, so a square never reads as a diamond


class SceneObject(NamedTuple):
    shape: str
    colour: str
    bbox: tuple[int, int, int, int]  # (left, top, right, bottom), right/bottom exclusive


@dataclass(frozen=True, eq=False)
class Scene:
    image: np.ndarray  # uint8 [H, W, 3]
    masks: np.ndarray  # bool [n_objects, H, W], same order as objects
    objects: list  # list[SceneObject], left to right
    labels: np.ndarray  # float32 [len(SHAPES)], multi-hot
    caption: str

    @property
    def class_indices(self) -> list[int]:
        return [SHAPES.index(o.shape) for o in self.objects]


# --------------------------------------------------------------------------- shapes

def _shape_mask(shape: str, u: np.ndarray, v: np.ndarray, r: float) -> np.ndarray:
    """Filled shape in object coordinates (u right, v down), half-size r."""
    if shape == "circle":
        return u * u + v * v <= r * r
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if shape == "diamond":
        return np.abs(u) + np.abs(v) <= 1.08 * r
    if shape == "triangle":
        # apex up at v=-r, flat base at v=+0.7r with half-width r
        return (v <= 0.7 * r) & (np.abs(u) <= (v + r) / 1.7)
    if shape == "cross":
        t = 0.33 * r
        au, av = np.abs(u), np.abs(v)
        return ((au <= t) & (av <= r)) | ((av <= t) & (au <= r))
    raise ValueError(f"unknown shape {shape!r}; expected one of {SHAPES}")


_CENTRES: dict[int, tuple[np.ndarray, np.ndarray]] = {}


def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(ys, xs) float32 [size, size] pixel-centre coordinates, cached (read-only)."""
    if size not in _CENTRES:
        ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
        ys.flags.writeable = xs.flags.writeable = False
        _CENTRES[size] = (ys, xs)
    return _CENTRES[size]


def _object_mask(shape: str, cx: float, cy: float, r: float, theta: float,
                 size: int) -> np.ndarray:
    ys, xs = _pixel_centres(size)
    dx, dy = xs - cx, ys - cy
    c, s = np.cos(theta), np.sin(theta)
    u, v = c * dx + s * dy, -s * dx + c * dy
    return _shape_mask(shape, u, v, r)


def _bbox(mask: np.ndarray) -> tuple[int, int, int, int]:
    rows = np.flatnonzero(mask.any(axis=1))
    cols = np.flatnonzero(mask.any(axis=0))
    return int(cols[0]), int(rows[0]), int(cols[-1]) + 1, int(rows[-1]) + 1


# --------------------------------------------------------------------------- background

def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] linear-interpolation weights (corners aligned)."""
    pos = np.linspace(0, n_in - 1, n_out)
    lo = np.minimum(np.floor(pos).astype(int), n_in - 2)
    frac = pos - lo
    w = np.zeros((n_out, n_in))
    w[np.arange(n_out), lo] = 1 - frac
    w[np.arange(n_out), lo + 1] = frac
    return w


def _upsample(a: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling of a small [h, w, c] grid to [size, size, c] (separable)."""
    wy = _interp_matrix(a.shape[0], size)
    wx = _interp_matrix(a.shape[1], size)
    return np.einsum("yi,ijc,xj->yxc", wy, a, wx, optimize=True)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Muted base colour + low-frequency blotches + an optional stripe texture."""
    base = rng.uniform(70, 150) + rng.uniform(-25, 25, size=3)
    cells = int(rng.integers(3, 9))
    blotch = _upsample(rng.normal(0, 22, size=(cells, cells, 3)), size)
    img = base + blotch
    if rng.random() < 0.5:
        ys, xs = _pixel_centres(size)
        angle = rng.uniform(0, np.pi)
        period = rng.uniform(3, 9)
        phase = (np.cos(angle) * xs + np.sin(angle) * ys) * (2 * np.pi / period)
        img = img + rng.uniform(6, 18) * np.sin(phase)[..., None]
    return img.astype(np.float32)


def _random_clutter_colour(rng: np.random.Generator) -> np.ndarray:
    if rng.random() < 0.6:
        c = np.array(COLOURS[COLOUR_NAMES[rng.integers(len(COLOUR_NAMES))]], np.float32)
        return c + rng.uniform(-25, 25, size=3)
    return rng.uniform(0, 255, size=3)


def _draw_clutter(img: np.ndarray, rng: np.random.Generator, n: int,
                  keep_out: Sequence[tuple[float, float, float]] = ()) -> None:
    """Small marks that are no shape class: dots, short thin strokes, tiny rings.

    Marks stay clear of the circles in ``keep_out`` (cx, cy, radius), so that an
    object's visible silhouette is exactly its shape.
    """
    size = img.shape[0]
    ys_all, xs_all = _pixel_centres(size)
    for _ in range(n):
        kind = rng.integers(3)
        for _try in range(20):
            cx, cy = rng.uniform(0, size, size=2)
            if all((cx - kx) ** 2 + (cy - ky) ** 2 > (kr + 7) ** 2 for kx, ky, kr in keep_out):
                break
        else:
            continue
        colour = _random_clutter_colour(rng)
        # every mark fits within 7 px of its centre: draw on that window only
        x0, x1 = max(0, int(cx) - 7), min(size, int(cx) + 8)
        y0, y1 = max(0, int(cy) - 7), min(size, int(cy) + 8)
        ys, xs = ys_all[y0:y1, x0:x1], xs_all[y0:y1, x0:x1]
        if kind == 0:  # dot, radius ≤ 2
            rad = rng.uniform(0.8, 2.0)
            m = (xs - cx) ** 2 + (ys - cy) ** 2 <= rad * rad
        elif kind == 1:  # thin stroke, length 4–12
            length = rng.uniform(4, 12)
            ang = rng.uniform(0, np.pi)
            dx, dy = np.cos(ang), np.sin(ang)
            t = (xs - cx) * dx + (ys - cy) * dy
            d = np.abs(-(xs - cx) * dy + (ys - cy) * dx)
            m = (np.abs(t) <= length / 2) & (d <= rng.uniform(0.5, 1.0))
        else:  # tiny ring, outer radius ≤ 3.5
            rad = rng.uniform(2.0, 3.5)
            dist = np.sqrt((xs - cx) ** 2 + (ys - cy) ** 2)
            m = np.abs(dist - rad) <= 0.6
        img[y0:y1, x0:x1][m] = colour


# --------------------------------------------------------------------------- scenes

def _rng(seed_or_rng) -> np.random.Generator:
    if isinstance(seed_or_rng, np.random.Generator):
        return seed_or_rng
    return np.random.default_rng(seed_or_rng)


def _place(rng: np.random.Generator, n: int, size: int) -> list[tuple[float, float, float]]:
    """Centres and half-sizes of n objects whose circumscribing boxes keep GAP apart."""
    for attempt in range(200):
        shrink = 1.0 if attempt < 100 else 0.8
        placed: list[tuple[float, float, float]] = []
        for _ in range(n):
            for _try in range(60):
                r = rng.uniform(MIN_HALF, MAX_HALF) * shrink
                R = CIRCUMSCRIBE * r
                cx = rng.uniform(R + 1, size - R - 1)
                cy = rng.uniform(R + 1, size - R - 1)
                if all(abs(cx - px) > R + PR + GAP or abs(cy - py) > R + PR + GAP
                       for px, py, PR in ((p[0], p[1], CIRCUMSCRIBE * p[2]) for p in placed)):
                    placed.append((cx, cy, r))
                    break
            else:
                break
        if len(placed) == n:
            return placed
    raise RuntimeError("could not place objects")  # pragma: no cover - never seen


def caption_for(objects: Sequence[SceneObject]) -> str:
    """'a red circle and a blue square', 'a red circle, a blue square and a green cross'."""
    parts = [f"{'an' if o.colour[0] in 'aeiou' else 'a'} {o.colour} {o.shape}"
             for o in objects]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def phrase(colour: str, shape: str) -> str:
    """'a red circle', 'an orange cross': one object's phrase, as ``caption_for`` writes it."""
    return f"{'an' if colour[0] in 'aeiou' else 'a'} {colour} {shape}"


def all_phrases() -> list[str]:
    """The 35 object phrases, colour-major: index = colour_index * len(SHAPES) + shape_index."""
    return [phrase(c, s) for c in COLOUR_NAMES for s in SHAPES]


def hard_negative_caption(objects, rng: np.random.Generator) -> str:
    """The scene's caption with one object's colour or its shape changed (shapes stay distinct)."""
    objs = list(objects)
    i = int(rng.integers(len(objs)))
    o = objs[i]
    if rng.random() < 0.5:
        colour = [c for c in COLOUR_NAMES if c != o.colour][int(rng.integers(len(COLOUR_NAMES) - 1))]
        objs[i] = SceneObject(o.shape, colour, o.bbox)
    else:
        free = [s for s in SHAPES if s not in {p.shape for p in objs}]
        objs[i] = SceneObject(free[int(rng.integers(len(free)))], o.colour, o.bbox)
    return caption_for(objs)


def make_scene(seed_or_rng=None, *, n_objects: int | None = None,
               shapes: Sequence[str] | None = None,
               colours: Sequence[str] | None = None,
               clutter: int | None = None, noise: float | None = None,
               size: int = IMAGE_SIZE) -> Scene:
    """One seeded scene.

    ``seed_or_rng``: an int (or anything ``np.random.default_rng`` takes) or a
    Generator, which is advanced. ``n_objects``: 2 or 3 (random by default).
    ``shapes`` / ``colours``: fix the objects' classes and colours (lengths give
    ``n_objects``); shapes must be distinct. ``clutter``: number of clutter marks
    (random 4–14 by default; 0 for a clean scene). ``noise``: per-pixel noise std.
    """
    rng = _rng(seed_or_rng)
    if shapes is not None:
        n_objects = len(shapes)
    if n_objects is None:
        n_objects = int(rng.integers(2, 4))
    if not 1 <= n_objects <= len(SHAPES):
        raise ValueError(f"n_objects must be 1..{len(SHAPES)}, got {n_objects}")
    if shapes is None:
        shapes = [SHAPES[i] for i in rng.choice(len(SHAPES), size=n_objects, replace=False)]
    if len(set(shapes)) != len(shapes) or any(s not in SHAPES for s in shapes):
        raise ValueError(f"shapes must be distinct members of {SHAPES}, got {shapes}")
    if colours is None:
        colours = [COLOUR_NAMES[i] for i in rng.integers(len(COLOUR_NAMES), size=n_objects)]
    if len(colours) != n_objects or any(c not in COLOURS for c in colours):
        raise ValueError(f"need {n_objects} colours from {COLOUR_NAMES}, got {colours}")
    if clutter is None:
        clutter = int(rng.integers(4, 15))
    if noise is None:
        noise = float(rng.uniform(3, 12))

    placements = _place(rng, n_objects, size)
    img = _background(rng, size)
    _draw_clutter(img, rng, clutter,
                  keep_out=[(cx, cy, CIRCUMSCRIBE * r) for cx, cy, r in placements])

    ys, xs = _pixel_centres(size)
    drawn = []
    for shape, colour, (cx, cy, r) in zip(shapes, colours, placements):
        theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
        mask = _object_mask(shape, cx, cy, r, theta, size)
        rgb = np.array(COLOURS[colour], np.float32) + rng.uniform(-20, 20, size=3)
        # a gentle linear shading so objects are not perfectly flat
        gdir = rng.normal(size=2)
        gdir /= np.linalg.norm(gdir) + 1e-9
        shade = 1.0 + 0.12 * ((xs - cx) * gdir[0] + (ys - cy) * gdir[1]) / r
        img[mask] = (rgb[None, :] * shade[mask][:, None])
        drawn.append((shape, colour, mask, _bbox(mask)))

    img = img + rng.normal(0, noise, size=img.shape)
    image = np.clip(np.rint(img), 0, 255).astype(np.uint8)

    # left to right by box centre (then top to bottom), the order captions name them
    drawn.sort(key=lambda d: (d[3][0] + d[3][2], d[3][1] + d[3][3]))
    masks = np.stack([d[2] for d in drawn]).astype(bool)
    objects = [SceneObject(d[0], d[1], d[3]) for d in drawn]
    labels = np.zeros(len(SHAPES), np.float32)
    for o in objects:
        labels[SHAPES.index(o.shape)] = 1.0
    return Scene(image=image, masks=masks, objects=objects, labels=labels,
                 caption=caption_for(objects))


def scene_rng(seed: int, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of dataset ``seed``."""
    return np.random.default_rng([seed, index])


def make_dataset(n: int, seed: int, start: int = 0, **kwargs) -> list[Scene]:
    """Scenes ``start .. start+n-1`` of dataset ``seed`` (each independent of n)."""
    return [make_scene(scene_rng(seed, i), **kwargs) for i in range(start, start + n)]


def to_arrays(scenes: Sequence[Scene]) -> tuple[np.ndarray, np.ndarray]:
    """Stack scenes into ``uint8 [N, H, W, 3]`` images and ``float32 [N, C]`` labels."""
    images = np.stack([s.image for s in scenes])
    labels = np.stack([s.labels for s in scenes])
    return images, labels


def scene_to_pil(scene: Scene):
    from PIL import Image

    return Image.fromarray(scene.image, mode="RGB")


def mask_for_class(scene: Scene, class_index: int) -> np.ndarray:
    """Union of the masks of the scene's objects of ``SHAPES[class_index]`` (bool [H, W])."""
    if not 0 <= class_index < len(SHAPES):
        raise IndexError(f"class_index {class_index} out of range 0..{len(SHAPES) - 1}")
    out = np.zeros(scene.image.shape[:2], bool)
    for o, m in zip(scene.objects, scene.masks):
        if o.shape == SHAPES[class_index]:
            out |= m
    return out


def scene_slug(scene: Scene) -> str:
    """'red-circle_blue-square' — for file names."""
    return "_".join(f"{o.colour}-{o.shape}" for o in scene.objects)


def main(argv: Sequence[str] | None = None) -> int:
    """Write scenes as PNGs: ``python -m attnviz.scenes --seeds 1 2 --out DIR``."""
    import argparse
    import json
    from pathlib import Path

    ap = argparse.ArgumentParser(prog="python -m attnviz.scenes", description=main.__doc__)
    ap.add_argument("--seeds", type=int, nargs="+", required=True, help="make_scene(seed) for each")
    ap.add_argument("--out", default=".", help="folder for scene_<colour-shape_...>.png")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for seed in args.seeds:
        scene = make_scene(seed)
        path = out / f"scene_{scene_slug(scene)}.png"
        scene_to_pil(scene).save(path, optimize=True)
        print(json.dumps({"file": path.name, "seed": seed, "caption": scene.caption,
                          "objects": [o._asdict() for o in scene.objects]}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
