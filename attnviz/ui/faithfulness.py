"""The faithfulness panel under a map: deletion / insertion curves and the randomisation check.

Both run the model many times, so they wait for a button and run as background jobs with a
progress bar; results are cached by the engine like maps (same image, model, method, settings
and target: shown again without running).
"""
from __future__ import annotations

from typing import Any, Callable, Optional

import streamlit as st

from ..methods.registry import MethodSpec
from ..metrics import deletion_summary
from . import figures, mapview, notes, state
from .errors import guard
from .widgets import pretty, run_on_click

PANEL_KEY = "faith_panel"      # one key on every page: the panel stays open when the method or word changes
BASELINE_WORDS = {"blur": "a blurred copy", "mean": "the mean colour", "black": "black", "zeros": "zeros"}


def baseline_words(name: str) -> str:
    return BASELINE_WORDS.get(str(name), f"the {name} image")


def deletion_caption(s: dict) -> str:
    """The line under the deletion / insertion chart, every term in plain words."""
    text = (f"Area under the curve (AUC): deletion {s['deletion_auc']:.3f} against {s['random_deletion_auc']:.3f} "
            f"for a random order (lower is better: the target's {s['quantity']} falls sooner) · insertion "
            f"{s['insertion_auc']:.3f} against {s['random_insertion_auc']:.3f} (higher is better) · "
            f"{s['steps']} steps; deleted parts become {baseline_words(s['deletion_baseline'])}, and insertion "
            f"starts from {baseline_words(s['insertion_baseline'])} of the image.")
    if s["quantity"] == "score":
        text += (" The curve follows the target's raw score (its logit: any number, higher means surer), not a "
                 "probability: this model's scores do not define one on their own (a caption word's probability "
                 "is a softmax over the whole vocabulary at its place).")
    return text


VERDICT_MARGIN = 0.05     # an AUC within 5 % of the curve's swing (intact image vs all changed) of random's: a tie


def _compare(kind: str, result: dict, s: dict) -> str:
    """'better', 'no better' or 'worse': the map's order against the random order(s), for one curve kind.
    Deletion is better when its AUC is lower, insertion when it is higher."""
    c = result[kind]
    swing = abs(float(c.values[0]) - float(c.values[-1]))
    margin = VERDICT_MARGIN * max(swing, 1e-12)
    gain = s[f"random_{kind}_auc"] - s[f"{kind}_auc"]          # > 0: the map's curve lies lower
    gain = gain if kind == "deletion" else -gain
    return "better" if gain > margin else "worse" if gain < -margin else "no better"


def verdict(result: dict, s: Optional[dict] = None) -> tuple[str, str]:
    """(sentence, tone) for deletion / insertion: is the map's order better than random, no better, or worse?
    ``tone``: "good" (both better), "bad" (neither), "mixed". Computed from the curves' numbers."""
    s = s or deletion_summary(result)
    if s["random_deletion_auc"] is None or s["random_insertion_auc"] is None:
        return "", "mixed"
    d, i = _compare("deletion", result, s), _compare("insertion", result, s)

    def part(kind: str, word: str) -> str:
        return f"{kind} is {word} than a random order" if word != "no better" else f"{kind} is no better than random"
    text = f"Verdict: {part('deletion', d)} and {part('insertion', i)}"
    if d == i == "better":
        return text + ": the map ranks first the parts this score depends on.", "good"
    if "better" not in (d, i):
        return (text + ": on this image the map does not find what the score depends on any better than chance "
                "(read it as a picture of the method, not as an explanation).", "bad")
    return text + ": a mixed result; trust the map only where both curves agree.", "mixed"


def faithfulness_ui(ctx, spec: MethodSpec, exp, params: dict[str, Any], target: Any, *,
                    label: Optional[str] = None, pick: Optional[Callable[[], tuple[Any, Any]]] = None) -> None:
    """An expander with the two checks for the shown map (``exp`` of ``spec`` with ``params``).

    ``pick``: drawn first inside the expander, returns the (map, target) to check instead (a page
    with one map per prompt lets the user choose which).
    """
    eng = state.engine()
    # Keyed and tracked: open or closed, the panel stays so when the method, target or word changes.
    with st.expander(label or f"Is the {pretty(spec.name)} map faithful?", key=PANEL_KEY, on_change="rerun"):
        st.markdown(notes.FAITHFULNESS)
        if pick is not None:
            exp, target = pick()
        args = (ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params)
        c1, c2 = st.columns(2)
        with c1, guard("Deletion and insertion"):
            curves = eng.peek_faithfulness(*args) or run_on_click(
                "Run deletion / insertion", f"faith:di:{spec.name}", eng.check_key("deletion", *args),
                lambda update: eng.faithfulness(*args, exp=exp, progress=update), label="Deletion and insertion")
            if curves is not None:
                st.plotly_chart(figures.deletion_figure(curves), key=f"faith:di:fig:{spec.name}")
                summary = deletion_summary(curves)
                sentence, tone = verdict(curves, summary)
                if sentence:
                    {"good": st.success, "bad": st.warning}.get(tone, st.info)(sentence)
                st.caption(deletion_caption(summary))
        with c2, guard("The randomisation check"):
            steps = eng.peek_randomisation(*args) or run_on_click(
                "Randomise the model's weights", f"faith:rand:{spec.name}", eng.check_key("randomise", *args),
                lambda update: eng.randomisation(*args, exp=exp, progress=update), label="Randomisation check")
            if steps is not None:
                st.plotly_chart(figures.randomisation_figure(steps), key=f"faith:rand:fig:{spec.name}")
                st.caption("Spearman: the rank correlation of the two maps' values (1 = the same order, 0 = "
                           "unrelated); |map| ranks by size whatever the sign. Blocks count from 0, the first "
                           "block after the patch embedding.")
                shown = [steps[0], steps[len(steps) // 2], steps[-1]] if len(steps) > 2 else list(steps)
                d = ctx.display
                st.caption("The map as blocks are randomised (from the top), each on its own scale:")
                for col, s in zip(st.columns(len(shown)), shown):
                    scale = mapview.scale_for(s.map, exp.signed, d)
                    col.image(mapview.draw(ctx.img.display, s.map, scale, d, ctx.box), caption=s.label,
                              width="stretch")
