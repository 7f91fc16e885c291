"""Explore: predictions, a target, one or more methods, the overlay, and exports."""
from __future__ import annotations

import dataclasses
import io
import json
import time
from typing import Any, Optional

import numpy as np
import streamlit as st

from attnviz import render
from attnviz.errors import UsageError
from attnviz.methods import list_methods
from attnviz.methods.registry import MethodSpec
from attnviz.ui import figures, notes, state, urlstate
from attnviz.ui.context import load_context, query_label
from attnviz.ui.compute import comparable, export_record, top_k
from attnviz.ui.errors import guard
from attnviz.ui.faithfulness import faithfulness_ui
from attnviz.ui.widgets import (default_method, forget_on_new_capture, markdown_literal, method_ui, page_header,
                                params_ui, pretty, run_on_click, shared_url_values, target_ui, widget_value)



def _apply_url(url: dict[str, str], specs: dict[str, MethodSpec], ctx) -> None:
    """Method, comparisons, target and parameters from the link; one warning per bad value."""
    if "method" in url:
        if url["method"] in specs:
            st.session_state["method"] = url["method"]
        else:
            urlstate.warn(f"The link's method '{url['method']}' does not apply to this model; using the default.")
    if "compare" in url:
        names = [n for n in url["compare"].split(",") if n]
        bad = [n for n in names if n not in specs]
        if bad:
            urlstate.warn(f"The link asks to compare unknown methods ({', '.join(bad)}); they are left out.")
        st.session_state["compare"] = [n for n in names if n in specs and n != st.session_state.get("method")][:3]
    if "target" in url:
        try:
            st.session_state["target"] = ctx.adapter.resolve_target(ctx.capture, url["target"]).index
        except UsageError:
            urlstate.warn(f"The link's target '{url['target']}' is not one of this model's targets; using the top one.")
    main = st.session_state.get("method") or default_method(ctx.adapter.family, list(specs))
    store = st.session_state.setdefault("_params", {})
    for key, raw in url.items():
        method, _, name = key.rpartition(".")
        method = method or main
        spec = specs.get(method)
        param = next((p for p in spec.params if p.name == name), None) if spec else None
        if param is None:
            continue
        try:
            value = param.parse(raw)
        except UsageError as e:
            urlstate.warn(f"The link's {str(e)[0].lower()}{str(e)[1:].rstrip('.')}; using the default.")
            continue
        if widget_value(param, value, ctx, method) is None:      # e.g. a layer this model does not have
            urlstate.warn(f"The link's {name.replace('_', ' ')} '{raw}' does not fit this model; using the default.")
            continue
        store.setdefault(method, {})[name] = value
        st.session_state.pop(f"p:{method}:{name}", None)


def _chosen_target(ctx) -> int:
    """The target the picker holds, or the one it will start on (drawn before the picker is)."""
    t = st.session_state.get("target")
    return t if isinstance(t, int) and 0 <= t < len(ctx.capture.targets) else \
        ctx.adapter.resolve_target(ctx.capture, None).index


def predictions_ui(ctx) -> None:
    """What the model thinks: top classes, every prompt's match, or the caption word by word."""
    cap, adapter = ctx.capture, ctx.adapter
    kind = cap.targets[0].kind
    if kind == "embedding":
        st.caption(f"This model has no classes: methods explain **{cap.targets[0].label}** "
                   f"({float(cap.scores[0]):.3g}).")
        return
    if kind == "token":
        if hasattr(adapter, "caption_text"):
            st.markdown(f"**Caption:** {markdown_literal(adapter.caption_text(cap))}")
        probs = adapter.probabilities(cap).detach().float().cpu().numpy()
        rows = [{"index": t.index, "label": f"{t.index}: {t.label}", "probability": float(probs[t.index])}
                for t in cap.targets]
        st.plotly_chart(figures.predictions_figure(rows, _chosen_target(ctx), keep_order=True),
                        key="predictions", config={"displayModeBar": False})
        return
    k = min(5 if kind == "class" else 12, len(cap.targets))
    rows = top_k(adapter, cap, k)
    multi = getattr(adapter, "multi_label", False) or getattr(adapter, "kind", "") == "siglip"
    what = "predictions" if kind == "class" else "prompt matches"
    st.markdown(f"**Top {k} {what}**" + (" (independent probabilities: several can be high)" if multi else ""))
    st.plotly_chart(figures.predictions_figure(rows, _chosen_target(ctx)), key="predictions",
                    config={"displayModeBar": False})


def compute_ui(ctx, spec: MethodSpec, params: dict[str, Any], target: Any) -> Optional[Any]:
    """The cached map, or compute it (slow methods wait for the Run button and show progress)."""
    eng = state.engine()
    cached = eng.peek(ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params)
    if cached is not None:
        return cached
    if spec.slow:
        return run_on_click(
            f"Run {pretty(spec.name)}", f"run:{spec.name}",
            lambda update: eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params, progress=update),
            label=pretty(spec.name), primary=True,
            help="This method runs the model many times; it shows its progress while it works.",
            note=f"{pretty(spec.name)} runs the model many times: press Run when the settings are right "
                 "(changing a setting while it runs stops it).")
    return eng.explain(ctx.adapter, ctx.entry, ctx.digest, spec.name, target, params)


def _meta_caption(exp) -> str:
    bits = [f"{exp.meta.get('seconds', 0.0):.2f} s"]
    if exp.target is not None:
        bits.append(f"for **{exp.target.label}**")
    else:
        bits.append("class-agnostic (same map for every target)")
    if "relative_delta" in exp.meta:
        bits.append(f"convergence delta {exp.meta['convergence_delta']:.3g} "
                    f"({exp.meta['relative_delta']:.1%} of the score gap)")
    if "query" in exp.params:
        bits.append(f"query: {query_label(exp.params['query'])}")
    bits.append(f"map {'×'.join(map(str, exp.map.shape))} over {exp.over}")
    return " · ".join(bits)


def results_ui(ctx, shown: list[tuple[MethodSpec, Any]]) -> None:
    """Overlays side by side (one shared colour scale when several) and hoverable figures."""
    d = ctx.display
    if len(shown) == 1:
        spec, exp = shown[0]
        maps = [exp.map]
        signed = exp.signed
        vmin = vmax = None
        hover = "value"
    else:
        maps = [comparable(e.map) for _, e in shown]
        signed = any(e.signed for _, e in shown)
        vmin, vmax = render.shared_range(maps, d.norm_for(signed))
        hover = "× average"
    cmap, norm = d.cmap_for(signed), d.norm_for(signed)
    t0 = time.perf_counter()
    # Lazy tabs: only the open tab is drawn (the hover figure is the costly part of a redraw).
    # ``open`` is None when tab state is not tracked (then both are drawn).
    tab_img, tab_hover = st.tabs(["Overlay", "Hover for values"], key="view_tab", on_change="rerun")
    if tab_img.open is not False:
        with tab_img:
            cols = st.columns(len(shown))
            for col, (spec, exp), m in zip(cols, shown, maps):
                with col, guard(f"Drawing {pretty(spec.name)}"):
                    img = render.overlay(ctx.img.display, m, alpha=d.alpha, cmap=cmap, norm=norm,
                                         resample=d.resample, box=ctx.box, vmin=vmin, vmax=vmax)
                    st.image(img, caption=pretty(spec.name), width="stretch")
            if len(shown) > 1:
                st.caption(f"One shared scale for all maps, each in units of its own average |value| "
                           f"({vmin:.3g} to {vmax:.3g} × average).")
    if tab_hover.open is not False:
        with tab_hover:
            cols = st.columns(len(shown))
            for col, (spec, exp), m in zip(cols, shown, maps):
                with col, guard(f"Drawing {pretty(spec.name)}"):
                    fig = render.heatmap_figure(ctx.img.display, m, title=pretty(spec.name), cmap=cmap, norm=norm,
                                                alpha=d.alpha, resample=d.resample, box=ctx.box, vmin=vmin,
                                                vmax=vmax, hover_label=hover, compact=len(shown) > 1)
                    st.plotly_chart(fig, key=f"fig:{spec.name}")
    ctx.timings["render"] = time.perf_counter() - t0
    for spec, exp in shown:
        st.caption(f"**{pretty(spec.name)}** · {_meta_caption(exp)}")
        with st.expander(f"About {pretty(spec.name)}"):
            st.markdown(notes.method_note(spec.name, spec.description))
            st.caption(spec.description)


def export_ui(ctx, spec: MethodSpec, exp, settings: dict[str, Any]) -> None:
    """Overlay PNG (original size, made on click), the raw map (.npy) and a JSON record."""
    d = ctx.display
    stem = f"attnviz-{spec.name}-{ctx.digest[:8]}"
    image, box = ctx.img.image, ctx.capture.box
    cmap, norm = d.cmap_for(exp.signed), d.norm_for(exp.signed)

    def png() -> bytes:
        return render.to_png_bytes(render.overlay(image, exp.map, alpha=d.alpha, cmap=cmap, norm=norm,
                                                  resample=d.resample, box=box))
    buf = io.BytesIO()
    np.save(buf, exp.map.astype(np.float32))
    record = export_record(adapter=ctx.adapter, capture=ctx.capture, exp=exp, settings=settings,
                           timings=ctx.timings, image_name=ctx.image_name, digest=ctx.digest)
    st.markdown(f"**Export** ({pretty(spec.name)})")
    c1, c2, c3 = st.columns(3)
    c1.download_button("Overlay PNG", png, file_name=f"{stem}.png", mime="image/png", on_click="ignore",
                       key="dl_png", width="stretch")
    c2.download_button("Raw map .npy", buf.getvalue(), file_name=f"{stem}.npy", mime="application/octet-stream",
                       on_click="ignore", key="dl_npy", width="stretch")
    c3.download_button("Settings .json", json.dumps(record, indent=2, default=str), file_name=f"{stem}.json",
                       mime="application/json", on_click="ignore", key="dl_json", width="stretch")


def _url_values(ctx, method: str, compare: list[str], params: dict[str, dict], specs, target) -> dict[str, Any]:
    out = shared_url_values(ctx.model_option, ctx.display)
    out.update(method=method, compare=",".join(compare) or None, target=target)
    for m, vals in params.items():
        defaults = specs[m].defaults()
        for k, v in vals.items():
            if str(v) != str(defaults.get(k)):
                out[k if m == method else f"{m}.{k}"] = v
    return out


def main() -> None:
    t_start = time.perf_counter()
    page_header("Where does the model look?", "explore")
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context()
    if ctx is None:
        return
    # Maps over text tokens (CLIP's text methods) are not drawn on the image; the CLI has them.
    specs = {m.name: m for m in list_methods(ctx.adapter.family) if m.over in ("patches", "pixels")}
    forget_on_new_capture(ctx, "target")
    url = urlstate.consume("explore")
    if url:
        _apply_url(url, specs, ctx)

    left, right = st.columns([1, 2], gap="large")
    params: dict[str, dict] = {}
    method, compare, target = None, [], None
    with left:
        with guard("Drawing the predictions"):
            predictions_ui(ctx)
        with guard("The target picker"):
            target = target_ui(ctx)
        with guard("The method picker"):
            method, compare = method_ui(specs, ctx.adapter.family)
            for name in [method, *compare]:
                with st.expander(f"{pretty(name)} settings", expanded=name == method and bool(specs[name].params)):
                    if not specs[name].params:
                        st.caption("This method has no settings.")
                    params[name] = params_ui(specs[name], ctx)
    if method is None or method not in params:
        return
    shown = []
    with right:
        for name in [method, *compare]:
            with guard(f"{pretty(name)}"):
                exp = compute_ui(ctx, specs[name], params[name], target)
                if exp is not None:
                    shown.append((specs[name], exp))
        if shown:
            results_ui(ctx, shown)
            if shown[0][0].name == method:
                with guard("The faithfulness checks"):
                    faithfulness_ui(ctx, shown[0][0], shown[0][1], params[method], target)
            total = time.perf_counter() - t_start
            ctx.timings["page"] = total
            t = ctx.timings
            parts = [f"loading the model {t['model_load']:.2f} s"] if t.get("model_load", 0) > 0.05 else []
            parts.append(f"model run {t['capture']:.2f} s" if t.get("capture") else "model run cached")
            parts.append(f"drawing {t.get('render', 0):.2f} s")
            st.caption(f"This view took {total:.2f} s ({', '.join(parts)}).",
                       help="Changing opacity, colormap or normalisation redraws without running the model.")
    if shown and shown[0][0].name == method:
        settings = {"model_option": ctx.model_option, "method": method, "compare": compare, "target": target,
                    "params": params, "display": dataclasses.asdict(ctx.display)}
        with guard("Preparing the downloads"):
            export_ui(ctx, shown[0][0], shown[0][1], settings)
    urlstate.sync(_url_values(ctx, method, compare, params, specs, target))


if __name__ == "__main__":
    main()
