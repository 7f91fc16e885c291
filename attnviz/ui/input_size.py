"""The model's input size (issue 20): the processor's own (often a 224 px centre crop, a 14×14 or 16×16 map) or
the whole image at a chosen long side (DINO's own pictures run at 480–518 px: a 37×37 map), with the cost of
each choice shown before it is picked: tokens, and the memory every layer's attention takes."""
from __future__ import annotations

from typing import Any, Optional

import streamlit as st

SIDES = (0, 224, 336, 448, 518, 672, 896)     # 0: the processor's own size and crop
KEY = "input_side"
GEOMETRY = "_input_geometry"                  # session state: what the last loaded model and image look like


def size_for(image_size: tuple[int, int], side: int, patch: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of the model input: the whole image with its long side ``side``, in whole patches."""
    w, h = image_size
    scale = side / max(w, h)
    ph, pw = patch
    return max(ph, round(h * scale / ph) * ph), max(pw, round(w * scale / pw) * pw)


def tokens(geometry: dict[str, Any], size: tuple[int, int]) -> int:
    ph, pw = geometry["patch"]
    return geometry["prefix"] + (size[0] // ph) * (size[1] // pw)


def attention_bytes(geometry: dict[str, Any], n_tokens: int) -> int:
    """Every layer's attention weights, L·H·T²·4 bytes (float32); 0 for a model without global attention."""
    if not geometry.get("global_attention"):
        return 0
    return geometry["layers"] * geometry["heads"] * n_tokens ** 2 * 4


def _gb(n: int) -> str:
    return f"{n / 2 ** 30:.2f} GB" if n >= 2 ** 28 else f"{n / 2 ** 20:.0f} MB"


def label(side: int, geometry: Optional[dict[str, Any]]) -> str:
    """The option's label: the size and, when the model is known, its cost."""
    if not geometry:
        return "the model's own" if side == 0 else f"{side} px, whole image"
    if side == 0:
        size = geometry.get("default_input")
        return f"the model's own ({size[1]}×{size[0]})" if size else "the model's own"
    size = size_for(geometry["image"], side, geometry["patch"])
    t = tokens(geometry, size)
    mem = attention_bytes(geometry, t)
    return f"{size[1]}×{size[0]} · {t:,} tokens" + (f" · {_gb(mem)}" if mem else "")


def cost_sentence(geometry: dict[str, Any]) -> str:
    """What the numbers in the options mean, from the model and input now in use."""
    t = tokens(geometry, geometry["input"])
    mem = attention_bytes(geometry, t)
    now = f"Now {geometry['input'][1]}×{geometry['input'][0]} px, {t:,} tokens"
    if not mem:
        return now + ". Time grows with the number of pixels."
    return (now + f"; every layer's attention takes {geometry['layers']}·{geometry['heads']}·T²·4 bytes = "
            f"{_gb(mem)} (about twice that with the gradients relevance needs). The model's time grows between "
            f"linearly and with the square of the tokens (last run: {geometry['seconds']:.2f} s).")


def input_size_ui(image_size: Optional[tuple[int, int]] = None) -> int:
    """The sidebar's input-size picker: 0 (the processor's) or a long side in pixels. ``image_size``: the
    image chosen in this run (the costs are for it; the model's numbers are from its last run)."""
    geometry = st.session_state.get(GEOMETRY)
    if geometry and image_size is not None and tuple(image_size) != geometry["image"]:
        geometry = {**geometry, "image": tuple(image_size), "default_input": None}
    st.session_state.setdefault(KEY, 0)
    side = st.selectbox("Model input size", SIDES, key=KEY, format_func=lambda s: label(s, geometry),
                        help="The model's own: its processor's resize and crop (often a 224 px centre crop). A "
                             "size: the whole image, uncropped, its long side at that many pixels, so the map has "
                             "more patches (ViTs interpolate their position embeddings). Each option shows its "
                             "tokens and the memory its attention takes.")
    if geometry and side:
        st.caption(cost_sentence(geometry))
    return int(side)


def remember(adapter, capture, image_size: tuple[int, int], side: int, seconds: float) -> None:
    """Keep what the options' costs are computed from: this model's patches, layers and heads, this image."""
    lay = capture.layout
    old = st.session_state.get(GEOMETRY) or {}
    same_model = old.get("model") == getattr(adapter, "source", adapter.name)
    default_input = tuple(lay.input_size) if side == 0 else (old.get("default_input") if same_model else None)
    st.session_state[GEOMETRY] = {
        "model": getattr(adapter, "source", adapter.name), "patch": tuple(lay.patch_size), "prefix": lay.n_prefix,
        "layers": capture.n_layers, "heads": capture.n_heads, "image": tuple(image_size),
        "input": tuple(lay.input_size), "default_input": default_input, "seconds": float(seconds),
        "global_attention": bool(capture.attentions) and not capture.extras.get("windows"),
    }


