"""The faithfulness panel under a map: deletion / insertion curves and the randomisation check.

Both run the model many times, so they wait for a button and show progress;
results are cached by the engine like maps (same image, model, method,
settings and target: shown again without running).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import streamlit as st

from .. import render
from ..methods.registry import MethodSpec
from ..metrics import deletion_summary
from . import figures, notes, state
from .errors import guard
from .widgets import pretty, run_on_click


def faithfulness_ui(ctx, spec: MethodSpec, exp, params: dict[str, Any], target: Any, *,
                    label: Optional[str] = None, pick: Optional[Callable[[], tuple[Any, Any]]] = None) -> None:
    """An expander with the two checks for the shown map (``exp`` of ``spec`` with ``params``).

    ``pick``: drawn first inside the expander, returns the (map, target) to check instead (a page
    with one map per prompt lets the user choose which).
    """
    eng = state.engine()
    with st.expander(label or f"Is the {pretty(spec.name)} map faithful?"):
        st.markdown(notes.FAITHFULNESS)
        if pick is not None:
            exp, target = pick()
        args = (ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params)
        c1, c2 = st.columns(2)
        with c1, guard("Deletion and insertion"):
            curves = eng.peek_faithfulness(*args) or run_on_click(
                "Run deletion / insertion", f"faith:di:{spec.name}",
                lambda update: eng.faithfulness(*args, exp=exp, progress=update), label="Deletion and insertion")
            if curves is not None:
                st.plotly_chart(figures.deletion_figure(curves), key=f"faith:di:fig:{spec.name}")
                s = deletion_summary(curves)
                st.caption(f"Deletion AUC {s['deletion_auc']:.3f} (random order {s['random_deletion_auc']:.3f}; "
                           f"lower is better) · insertion AUC {s['insertion_auc']:.3f} (random "
                           f"{s['random_insertion_auc']:.3f}; higher is better) · the target's {s['quantity']} over "
                           f"{s['steps']} steps, deleted to the {s['deletion_baseline']} image, inserted into the "
                           f"{s['insertion_baseline']} one.")
        with c2, guard("The randomisation check"):
            steps = eng.peek_randomisation(*args) or run_on_click(
                "Randomise the model's weights", f"faith:rand:{spec.name}",
                lambda update: eng.randomisation(*args, exp=exp, progress=update), label="Randomisation check")
            if steps is not None:
                st.plotly_chart(figures.randomisation_figure(steps), key=f"faith:rand:fig:{spec.name}")
                shown = [steps[0], steps[len(steps) // 2], steps[-1]] if len(steps) > 2 else list(steps)
                d = ctx.display
                st.caption("The map as blocks are randomised (from the top):")
                for col, s in zip(st.columns(len(shown)), shown):
                    img = render.overlay(ctx.img.display, s.map, alpha=d.alpha, cmap=d.cmap_for(exp.signed),
                                         norm=d.norm_for(exp.signed), resample=d.resample, box=ctx.box)
                    col.image(img, caption=s.label, width="stretch")
