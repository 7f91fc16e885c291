"""The faithfulness panel under a map: deletion / insertion curves and the randomisation check.

Both run the model many times, so they wait for a button and show progress;
results are cached by the engine like maps (same image, model, method,
settings and target: shown again without running).
"""
from __future__ import annotations

from typing import Any

import streamlit as st

from .. import render
from ..methods.registry import MethodSpec
from . import figures, notes, state
from .errors import guard
from .widgets import pretty


def _progress(label: str):
    bar = st.progress(0.0, text=f"{label}: starting…")

    def update(done: int, total: int) -> None:
        bar.progress(min(1.0, done / max(total, 1)), text=f"{label}: {done}/{total}")
    return bar, update


def faithfulness_ui(ctx, spec: MethodSpec, exp, params: dict[str, Any], target: Any) -> None:
    """An expander with the two checks for the shown map (``exp`` of ``spec`` with ``params``)."""
    eng = state.engine()
    args = (ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params)
    with st.expander(f"Is the {pretty(spec.name)} map faithful?"):
        st.markdown(notes.FAITHFULNESS)
        c1, c2 = st.columns(2)
        curves = eng.peek_faithfulness(*args)
        with c1, guard("Deletion and insertion"):
            if curves is None and st.button("Run deletion / insertion", key=f"faith:di:{spec.name}"):
                bar, update = _progress("Deletion and insertion")
                curves = eng.faithfulness(*args, exp=exp, progress=update)
                bar.empty()
            if curves is not None:
                st.plotly_chart(figures.deletion_figure(curves), key=f"faith:di:fig:{spec.name}")
                d, i = curves["deletion"], curves["insertion"]
                rd = sum(c.auc for c in curves["random_deletion"]) / max(1, len(curves["random_deletion"]))
                ri = sum(c.auc for c in curves["random_insertion"]) / max(1, len(curves["random_insertion"]))
                st.caption(f"Deletion AUC {d.auc:.3f} (random order {rd:.3f}; lower is better) · insertion AUC "
                           f"{i.auc:.3f} (random {ri:.3f}; higher is better) · {len(d.values) - 1} steps, "
                           f"deleted to the {d.baseline} image, inserted into the {i.baseline} one.")
        steps = eng.peek_randomisation(*args)
        with c2, guard("The randomisation check"):
            if steps is None and st.button("Randomise the model's weights", key=f"faith:rand:{spec.name}"):
                bar, update = _progress("Randomisation check")
                steps = eng.randomisation(*args, exp=exp, progress=update)
                bar.empty()
            if steps is not None:
                st.plotly_chart(figures.randomisation_figure(steps), key=f"faith:rand:fig:{spec.name}")
                shown = [steps[0], steps[len(steps) // 2], steps[-1]] if len(steps) > 2 else list(steps)
                cols = st.columns(len(shown))
                d = ctx.display
                for col, s in zip(cols, shown):
                    img = render.overlay(ctx.img.display, s.map, alpha=d.alpha, cmap=d.cmap_for(exp.signed),
                                         norm=d.norm_for(exp.signed), resample=d.resample, box=ctx.box)
                    col.image(img, caption=f"{s.label} randomised", width="stretch")
