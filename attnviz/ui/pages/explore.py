"""Explore: predictions, a target, one or more methods, the overlays with their legends, and exports."""
from __future__ import annotations

import dataclasses
import functools
import io
import json
import time
from typing import Any, Optional
from urllib.parse import urlencode

import numpy as np
import streamlit as st

from attnviz import render
from attnviz.errors import UsageError
from attnviz.methods import list_methods
from attnviz.methods.registry import MethodSpec
from attnviz.ui import backbone, figures, gates_panel, mapview, notes, panels, state, urlstate
from attnviz.ui.compute import export_record, model_key, top_k
from attnviz.ui.context import load_context, query_label
from attnviz.ui.errors import guard
from attnviz.ui.faithfulness import faithfulness_ui
from attnviz.ui.widgets import (default_method, forget_on_new_capture, is_default, link_target, map_or_run,
                                markdown_literal, method_family, method_ui, page_header, params_ui, pretty,
                                shared_url_values, target_ui, widget_value)

PER_ROW = 2            # maps side by side: four across left each ~140 px at 1440 px, too small to read


def _apply_url(url: dict[str, str], specs: dict[str, MethodSpec], ctx) -> None:
    """Method, comparisons and parameters from the link; one warning per bad value (the target: _apply_target)."""
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
    main = st.session_state.get("method") or default_method(method_family(ctx.adapter), list(specs))
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
        shown = widget_value(param, value, ctx, method)
        if shown is None:      # e.g. a layer this model does not have
            urlstate.warn(f"The link's {name.replace('_', ' ')} '{raw}' does not fit this model; using the default.")
            continue
        store.setdefault(method, {})[name] = shown
        st.session_state.pop(f"p:{method}:{name}", None)


def _apply_target(raw: Optional[str], ctx) -> None:
    """The link's target, once the image it was made on is the one shown."""
    if raw is None:
        return
    try:
        st.session_state["target"] = ctx.adapter.resolve_target(ctx.capture, raw).index
    except UsageError:
        urlstate.warn(f"The link's target '{raw}' is not one of this model's targets; using the top one.")


def _chosen_target(ctx) -> int:
    """The target the picker holds, or the one it will start on (drawn before the picker is)."""
    from attnviz.ui.context import default_target
    t = st.session_state.get("target")
    return t if isinstance(t, int) and 0 <= t < len(ctx.capture.targets) else default_target(ctx.adapter, ctx.capture)


def predictions_ui(ctx) -> None:
    """What the model thinks: top classes, every prompt's match, or the caption word by word."""
    cap, adapter = ctx.capture, ctx.adapter
    kind = cap.targets[0].kind
    font = figures.PRESENT_FONT if ctx.display.present else None
    if kind == "embedding":
        st.caption(backbone.target_sentence(cap.targets[0].label, float(cap.scores[0])))
        return
    if kind == "token":
        if hasattr(adapter, "caption_text"):
            st.markdown(f"**Caption:** {markdown_literal(adapter.caption_text(cap))}")
        probs = adapter.probabilities(cap).detach().float().cpu().numpy()
        rows = [{"index": t.index, "label": f"{t.index}: {t.label}", "probability": float(probs[t.index])}
                for t in cap.targets]
        chosen = _chosen_target(ctx)
        fig = panels.figure(("predictions", ctx.digest, model_key(adapter), chosen, font),
                            lambda: figures.predictions_figure(rows, chosen, keep_order=True, font_size=font))
        st.plotly_chart(figures.presented(fig) if font else fig, key="predictions", config={"displayModeBar": False})
        return
    k = min(5 if kind == "class" else 12, len(cap.targets))
    rows = top_k(adapter, cap, k)
    multi = getattr(adapter, "multi_label", False) or getattr(adapter, "kind", "") == "siglip"
    what = "predictions" if kind == "class" else "prompt matches"
    st.markdown(f"**Top {k} {what}**" + (" (independent probabilities: several can be high)" if multi else ""))
    chosen = _chosen_target(ctx)      # the figure is built once per capture, target and font
    fig = panels.figure(("predictions", ctx.digest, model_key(adapter), chosen, font, k),
                        lambda: figures.predictions_figure(rows, chosen, font_size=font))
    st.plotly_chart(figures.presented(fig) if font else fig, key="predictions", config={"displayModeBar": False})


def compute_ui(ctx, spec: MethodSpec, params: dict[str, Any], target: Any) -> Optional[Any]:
    """The cached map, or compute it (slow methods wait for the Run button and run as a background job)."""
    return map_or_run(ctx.adapter, ctx.entry, ctx.digest, spec, target, params,
                      button=f"Run {pretty(spec.name)}", key=f"run:{spec.name}",
                      help="This method runs the model many times; it shows its progress while it works.",
                      note=f"{pretty(spec.name)} runs the model many times: press Run when the settings are right "
                           "(display changes while it runs do not stop it).")


FIRST_VIEW = "rollout"     # the class-agnostic map a capture's forward alone gives (shown while a backward waits)


def first_view_ui(ctx, specs: dict[str, MethodSpec], spec: MethodSpec, params: dict[str, Any], target: Any):
    """While the main map waits for its backward pass (a burst: the model's line serves every new image's
    forward first, issue 23), show the forward's own attention rollout at once, labelled as what it is;
    returns the slot to clear once the main map is drawn (None when nothing was shown)."""
    adapter, cap = ctx.adapter, ctx.capture
    # a capture from a line (serve.local, or a Ray Serve replica: serve.remote) says whether a target's backward
    # is still to come; any other capture's gradients come at once
    waits = getattr(cap._grad_fn, "waits", None)
    if waits is None or FIRST_VIEW not in specs or spec.name == FIRST_VIEW or not spec.class_specific or spec.slow:
        return None
    eng = state.engine()
    if eng.peek(adapter, ctx.entry, ctx.digest, spec.name, target, params) is not None:
        return None
    t = adapter.resolve_target(cap, target)
    if t.index in cap._grads or not waits(t.index):
        return None                     # its backward is done or running now: the main map comes at once
    exp = eng.explain(adapter, ctx.entry, ctx.digest, FIRST_VIEW, None, {})     # attentions only: no model run
    slot = st.empty()
    with slot.container():
        scale = mapview.scale_for(exp.map, exp.signed, ctx.display)
        panels.show_map(ctx.img, exp.map, scale, ctx.display, ctx.map_box(exp.map.shape, exp.over),
                        method=FIRST_VIEW, caption=f"{pretty(FIRST_VIEW)} (class-agnostic), shown first")
        st.info(f"This is **{pretty(FIRST_VIEW)}**, which the model's forward pass gives at once. The "
                f"**{pretty(spec.name)}** map for **{markdown_literal(t.label)}** needs a backward pass, which "
                "waits while other students' images get their forward passes; it replaces this map when done.",
                icon=":material/hourglass_top:")
    return slot


def _meta_caption(exp, ctx) -> str:
    bits = [f"{exp.meta.get('seconds', 0.0):.2f} s"]
    if exp.target is not None:
        bits.append(f"for **{markdown_literal(exp.target.label)}**")
    else:
        bits.append("class-agnostic (same map for every target)")
    if "relative_delta" in exp.meta:
        bits.append(f"convergence delta {exp.meta['convergence_delta']:.3g} "
                    f"({exp.meta['relative_delta']:.1%} of the score gap)")
    if "query" in exp.params:
        bits.append(f"query: {query_label(exp.params['query'], ctx.capture)}")
    bits.append(f"map {'×'.join(map(str, exp.map.shape))} over {exp.over}")
    return " · ".join(bits)


def scales_for(ctx, shown: list[tuple[MethodSpec, Any]]) -> list[mapview.Scale]:
    """Each map on its own scale: methods differ in units and sign, so one shared scale washes some out."""
    return [mapview.scale_for(exp.map, exp.signed, ctx.display) for _, exp in shown]


def map_title(spec: MethodSpec, exp) -> str:
    """A map's title: the method, and the target it explains ("relevance for square"), when it has one."""
    return pretty(spec.name) + (f" for {exp.target.label}" if exp.target is not None else "")


def results_ui(ctx, shown: list[tuple[MethodSpec, Any]], scales: list[mapview.Scale]) -> None:
    """Overlays side by side, each with its legend, and hoverable figures."""
    d = ctx.display
    t0 = time.perf_counter()
    # Lazy tabs: only the open tab is drawn (the hover figure is the costly part of a redraw).
    # ``open`` is None when tab state is not tracked (then both are drawn).
    tab_img, tab_hover = st.tabs(["Overlay", "Hover for values"], key="view_tab", on_change="rerun")
    for tab, hover in ((tab_img, False), (tab_hover, True)):
        if tab.open is False:
            continue
        with tab:
            for start in range(0, len(shown), PER_ROW):
                row = list(zip(shown, scales))[start:start + PER_ROW]
                cols = st.columns(PER_ROW if len(shown) > 1 else 1)
                for col, ((spec, exp), scale) in zip(cols, row):
                    with col, guard(f"Drawing {pretty(spec.name)}"):
                        if hover:
                            box = ctx.map_box(exp.map.shape, exp.over)      # a CNN grid where its cells lie
                            fig = render.heatmap_figure(ctx.img.display, exp.map, title=map_title(spec, exp),
                                                        cmap=scale.cmap, norm=scale.norm, alpha=d.alpha,
                                                        resample=d.resample, box=box, vmin=scale.lo,
                                                        vmax=scale.hi, hover_label=notes.units(spec.name),
                                                        compact=len(shown) > 1, over=exp.over)
                            st.plotly_chart(figures.presented(fig) if d.present else fig, key=f"fig:{spec.name}")
                        else:
                            panels.show_map(ctx.img, exp.map, scale, d, ctx.map_box(exp.map.shape, exp.over),
                                            method=spec.name, caption=map_title(spec, exp),
                                            width=panels.present_width(ctx.img.display.size) if d.present
                                            else "stretch")
    if len(shown) > 1:
        st.caption("Each map has its own colour scale, shown in its legend: the methods measure different things "
                   "in different units (and some have a sign), so one shared scale would wash some of them out. "
                   "Compare where each map is bright, not how bright.")
    ctx.timings["render"] = time.perf_counter() - t0
    for spec, exp in shown:
        st.caption(f"**{pretty(spec.name)}** · {_meta_caption(exp, ctx)}")
        with st.expander(f"About {pretty(spec.name)}"):
            st.markdown(notes.method_note(spec.name, spec.description))
            st.caption(spec.description)


def export_png(ctx, shown, scales) -> bytes:
    """Every shown map at the image's own size, side by side, each with its legend: the screen's colours."""
    pictures = [mapview.picture(ctx.img.image, exp.map, scale, ctx.display, ctx.capture.box,
                                f"{pretty(spec.name)} · {mapview.legend_title(spec.name, scale)}")
                for (spec, exp), scale in zip(shown, scales)]
    return render.to_png_bytes(render.side_by_side(pictures))


def export_maps(shown) -> tuple[bytes, str, str]:
    """(bytes, suffix, mime): the raw map as .npy, or every compared map by method name in one .npz."""
    buf = io.BytesIO()
    if len(shown) == 1:
        np.save(buf, shown[0][1].map.astype(np.float32))
        return buf.getvalue(), "npy", "application/octet-stream"
    np.savez(buf, **{spec.name: exp.map.astype(np.float32) for spec, exp in shown})
    return buf.getvalue(), "npz", "application/zip"


def view_link(values: dict[str, Any]) -> str:
    """The address that reopens this view (the page's own address, when the browser told it)."""
    base = ""
    try:
        base = st.context.url or ""
    except Exception:   # noqa: BLE001  (not inside a browser session, e.g. a test)
        base = ""
    query = urlencode({k: str(v) for k, v in values.items() if v is not None and v != ""})
    return f"{base}?{query}" if query else base


def export_ui(ctx, shown, scales, settings: dict[str, Any], link: str) -> None:
    """Overlay PNG (every map, original size, legends), the raw maps and a JSON record with a link back;
    each file is made when its button is clicked (a display change redraws these buttons)."""
    names = [spec.name for spec, _ in shown]
    stem = f"attnviz-{'+'.join(names)}-{ctx.digest[:8]}"
    suffix, mime = ("npy", "application/octet-stream") if len(shown) == 1 else ("npz", "application/zip")

    def record_json() -> str:
        records = [export_record(adapter=ctx.adapter, capture=ctx.capture, exp=exp, settings=settings,
                                 timings=ctx.timings, image_name=ctx.image_name, digest=ctx.digest)
                   for _, exp in shown]
        record = {**records[0], "link": link, "scales": {spec.name: {"low": s.lo, "high": s.hi, "colormap": s.cmap,
                                                                      "normalisation": s.norm}
                                                          for (spec, _), s in zip(shown, scales)}}
        if len(records) > 1:
            record["compared"] = [{k: r[k] for k in ("method", "params", "class_specific", "target", "map", "meta")}
                                  for r in records[1:]]
        return json.dumps(record, indent=2, default=str)
    what = pretty(names[0]) if len(names) == 1 else f"all {len(names)} maps"
    st.markdown(f"**Export** ({what})")
    c1, c2, c3, c4 = st.columns(4)
    c1.download_button("Overlay PNG", lambda: export_png(ctx, shown, scales), file_name=f"{stem}.png",
                       mime="image/png", on_click="ignore", key="dl_png", width="stretch",
                       help="At the image's own size, each map with its legend, on the scales shown above.")
    c2.download_button(f"Raw map{'s' if len(names) > 1 else ''} .{suffix}", lambda: export_maps(shown)[0],
                       file_name=f"{stem}.{suffix}",
                       mime=mime, on_click="ignore", key="dl_npy", width="stretch",
                       help="float32: [rows, cols] over the patch grid or [H, W] over the model's input pixels"
                            + ("; one array per method, by name." if len(names) > 1 else "."))
    c3.download_button("Settings .json", record_json, file_name=f"{stem}.json",
                       mime="application/json", on_click="ignore", key="dl_json", width="stretch",
                       help="Model, methods, target, parameters, scales, scores, timings, versions, and the "
                            "link that reopens this view.")

    def report_html() -> str:
        from attnviz.report_image import image_report_html
        (_, exp), scale = shown[0], scales[0]
        return image_report_html(ctx.img.image, exp, record=json.loads(record_json()), box=ctx.capture.box,
                                 cmap=scale.cmap, norm=scale.norm, vmin=scale.lo, vmax=scale.hi,
                                 alpha=ctx.display.alpha)
    c4.download_button("Report .html", report_html, file_name=f"{stem}.html", mime="text/html",
                       on_click="ignore", key="dl_html", width="stretch",
                       help="One self-contained page: the first map on its overlay with its legend, the target, the "
                            "top predictions, the settings and versions.")


def _url_values(ctx, method: str, compare: list[str], params: dict[str, dict], specs, target) -> dict[str, Any]:
    out = shared_url_values(ctx)
    out.update(method=method, compare=",".join(compare) or None, target=target)
    for m, vals in params.items():
        family_defaults = getattr(ctx.adapter, "method_defaults", lambda _: {})(m)
        for p in specs[m].params:
            if p.name in vals and not is_default(p, vals[p.name], ctx, m, family_defaults):
                out[p.name if m == method else f"{m}.{p.name}"] = vals[p.name]
    return out


def map_panel_ui(ctx, shown, settings: Optional[dict[str, Any]], values: dict[str, Any], display) -> None:
    """What a display change redraws (the page's map panel): the maps, their exports and the link.

    ``ctx`` is a :func:`panels.light` context (kept between the panel's reruns); ``settings`` is None
    when the main method has no map yet (nothing to export).
    """
    ctx = dataclasses.replace(ctx, display=display)
    scales = scales_for(ctx, shown)
    results_ui(ctx, shown, scales)
    values = {**values, **shared_url_values(ctx)}
    if settings is not None:
        with guard("Preparing the downloads"):
            export_ui(ctx, shown, scales, {**settings, "display": dataclasses.asdict(display)}, view_link(values))
    urlstate.sync(values)


def controls_ui(ctx, specs: dict[str, MethodSpec]) -> tuple[Any, Optional[str], list[str], dict[str, dict]]:
    """Predictions, the target, the method(s) and their settings (folded away until opened)."""
    params: dict[str, dict] = {}
    target, method, compare = None, None, []
    with guard("Drawing the predictions"):
        predictions_ui(ctx)
    with guard("The target picker"):
        target = target_ui(ctx)
    with guard("The method picker"):
        method, compare = method_ui(specs, method_family(ctx.adapter))
        for name in [method, *compare]:
            with st.expander(f"{pretty(name)} settings"):
                if not specs[name].params:
                    st.caption("This method has no settings.")
                params[name] = params_ui(specs[name], ctx)
    return target, method, compare, params


def main() -> None:
    t_start = time.perf_counter()
    page_header("Where does the model look?", "explore")
    ctx = None
    with guard("Preparing the image and model"):
        ctx = load_context()
    if ctx is None:
        return
    # Maps over text tokens (CLIP's text methods) are not drawn on the image; the CLI has them.
    specs = {m.name: m for m in list_methods(ctx.adapter) if m.over in ("patches", "pixels")}
    forget_on_new_capture(ctx, "target")
    url = urlstate.consume("explore")
    if url:
        _apply_url(url, specs, ctx)
    _apply_target(link_target(ctx, url.get("target") if url else None, "explore"), ctx)

    if ctx.display.present:      # presentation: the controls fold into one box, the maps get the width
        with st.expander("Target, method and settings", expanded=False):
            target, method, compare, params = controls_ui(ctx, specs)
        right = st.container()
    else:
        left, right = st.columns([1, 2], gap="large")
        with left:
            target, method, compare, params = controls_ui(ctx, specs)
    if method is None or method not in params:
        return
    shown = []
    with right:
        if backbone.is_backbone(ctx.adapter):       # what a backbone is looked at for comes first
            backbone.heads_ui(ctx)
        first = None
        with guard("The first map"):
            first = first_view_ui(ctx, specs, specs[method], params[method], target)
        for name in [method, *compare]:
            with guard(f"{pretty(name)}"):
                exp = compute_ui(ctx, specs[name], params[name], target)
                if exp is not None:
                    shown.append((specs[name], exp))
        if first is not None:
            first.empty()
        if shown:
            settings = None
            if shown[0][0].name == method:
                settings = {"model": getattr(ctx.adapter, "source", "") or ctx.adapter.name, "method": method,
                            "compare": compare, "target": target, "params": params}
            panels.map_panel(functools.partial(map_panel_ui, panels.light(ctx), shown, settings,
                                               _url_values(ctx, method, compare, params, specs, target)), ctx.display)
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
        with guard("The channel gates"):
            gates_panel.gates_ui(ctx)       # a CNN's SE / ECA / CBAM gates: over channels, not a map on the image
    if not shown:
        urlstate.sync(_url_values(ctx, method, compare, params, specs, target))


if __name__ == "__main__":
    main()
