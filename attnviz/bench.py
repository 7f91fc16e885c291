"""``python -m attnviz bench``: method timings as ratios to one bare forward.

Builds the ViT-B/16 architecture from its config with random weights (no
download), and times, in the same run on the same input, one bare SDPA
forward (the unit) and each attention view from one capture. Targets: every
attention view of one image (all layers × heads + rollout + relevance for
the top class, capture included) <= 3.0× a bare forward; rollout (capture
without gradients included) <= 1.3×.
"""
from __future__ import annotations

import copy
import statistics
import time
from typing import Callable, Optional

import torch

from . import precision

TARGETS = {"all attention views (1 capture)": 3.0, "rollout (capture + method)": 1.3}
#: The faithfulness checks (issue 24): deletion + insertion with batched, pooled forwards; the randomisation check.
FAITHFULNESS_TARGETS = {"  deletion + insertion (20 steps, 1 random)": 40.0,
                        "  randomisation check (relevance, all blocks)": 25.0}


def _median_time(fn: Callable[[], object], repeats: int) -> float:
    fn()                                           # warm-up (allocator, kernels)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _paired(fn: Callable[[], object], unit: Callable[[], object], repeats: int) -> tuple[float, float]:
    """(median seconds, median ratio): each run of ``fn`` is timed right after a run of ``unit``
    and divided by it, so load from other processes mostly cancels out of the ratio."""
    fn()
    times, ratios = [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        unit()
        t1 = time.perf_counter()
        fn()
        t2 = time.perf_counter()
        times.append(t2 - t1)
        ratios.append((t2 - t1) / (t1 - t0))
    return statistics.median(times), statistics.median(ratios)


def _models(quick: bool):
    import transformers
    from .adapters.classifier import ClassifierAdapter
    if quick:
        cfg = transformers.ViTConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                                     intermediate_size=128, image_size=64, patch_size=16)
    else:
        cfg = transformers.ViTConfig(num_labels=1000)   # ViT-B/16 at 224², as google/vit-base-patch16-224
    eager, sdpa = _eager_and_sdpa(transformers.ViTForImageClassification, cfg)
    processor = transformers.ViTImageProcessor(size={"height": cfg.image_size, "width": cfg.image_size})
    adapter = ClassifierAdapter(eager, processor, name="vit-b16-random", source="<config>")
    return adapter, sdpa


def _eager_and_sdpa(model_cls, cfg):
    """The same random weights twice: eager attention (what a capture reads) and SDPA (the bare unit)."""
    torch.manual_seed(0)
    eager = model_cls(cfg)
    eager.set_attn_implementation("eager")
    sdpa = model_cls(copy.deepcopy(cfg))                 # own config: the attn choice lives there
    sdpa.set_attn_implementation("sdpa")
    sdpa.load_state_dict(eager.state_dict())
    return eager, sdpa.eval().requires_grad_(False)


def run_bench(repeats: int = 5, quick: bool = False, captum: bool = False) -> int:
    from .methods.attention import attention_grid
    from .methods.registry import explain
    torch.set_grad_enabled(True)
    adapter, bare = _models(quick)
    size = adapter.model.config.image_size
    x = torch.randn(1, 3, size, size)
    inputs = {"pixel_values": x, "box": None}

    def bare_forward():
        with torch.no_grad():
            bare(pixel_values=x)

    def rollout_view():
        cap = adapter.capture(inputs, grads=False)
        explain(adapter, cap, "rollout")

    def all_views():
        cap = adapter.capture(inputs, grads=True)
        attention_grid(cap, "cls")                  # every layer × head, one op
        for head in ("mean", "max", "min"):
            explain(adapter, cap, "attention", head=head)
        explain(adapter, cap, "rollout")
        explain(adapter, cap, "relevance")          # top class: one backward

    unit = _median_time(bare_forward, repeats)
    rows = [("bare SDPA forward (unit)", unit, 1.0)]
    rows.append(("capture, no gradients", *_paired(lambda: adapter.capture(inputs, grads=False), bare_forward, repeats)))
    rows.append(("rollout (capture + method)", *_paired(rollout_view, bare_forward, repeats)))
    rows.append(("all attention views (1 capture)", *_paired(all_views, bare_forward, repeats)))
    cap = adapter.capture(inputs, grads=True)
    top = adapter.resolve_target(cap, None)
    cap.attention_grads(top.index)
    for name in ("attention", "rollout", "relevance", "grad_rollout", "attn_grad"):
        t = _median_time(lambda n=name: explain(adapter, cap, n), repeats)
        rows.append((f"  {name} on a ready capture", t, t / unit))
    t = _median_time(lambda: cap._grad_fn(top.index), repeats)
    rows.append(("  one backward to every attention", t, t / unit))
    rows += _faithfulness_rows(adapter, cap, explain(adapter, cap, "relevance"), unit)
    if captum:
        light = {"integrated_gradients": {"n_steps": 16}, "gradient_shap": {"n_samples": 8},
                 "smoothgrad": {"nt_samples": 8}, "lime": {"n_samples": 64}, "kernel_shap": {"n_samples": 64}}
        for name in ("saliency", "input_x_gradient", "grad_cam", "integrated_gradients", "gradient_shap",
                     "smoothgrad", "occlusion", "feature_ablation", "lime", "kernel_shap"):
            params = light.get(name, {})
            label = f"  {name}" + (f" ({', '.join(f'{k}={v}' for k, v in params.items())})" if params else "")
            t = _median_time(lambda n=name, p=params: explain(adapter, cap, n, **p), 1)
            rows.append((label, t, t / unit))

    print(f"attnviz bench: {'tiny ViT' if quick else 'ViT-B/16'} random weights, input {size}×{size}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads, median of {repeats}")
    failed = _print_rows(rows, {**TARGETS, **FAITHFULNESS_TARGETS})
    failed |= run_swin_bench(repeats, quick)          # issue 12: the same views through Swin's hierarchy
    return 0 if (quick or not failed) else 1


def _faithfulness_rows(adapter, cap, exp, unit: float) -> list[tuple[str, float, float]]:
    """Deletion + insertion (2 × 21 steps, the same for one random order: 79 distinct images, 78 forwarded in
    pooled batches of 8, the input's scores being the capture's; a further map of the same image reuses the
    random curves: 40 images) and the cascading randomisation check (a
    model copy, one capture + map per block), as rows. ``bench --faithfulness`` breaks the first down."""
    from .metrics import cascading_randomisation, deletion_insertion
    from .metrics.deletion import forget_random_curves

    def first_map():
        forget_random_curves(cap)                 # the image's first map pays for its random yardstick
        return deletion_insertion(adapter, cap, exp)
    rows = []
    t = _median_time(first_map, 1)
    rows.append(("  deletion + insertion (20 steps, 1 random)", t, t / unit))
    t = _median_time(lambda: deletion_insertion(adapter, cap, exp), 1)
    rows.append(("  deletion + insertion, a further map (random reused)", t, t / unit))
    t = _median_time(lambda: cascading_randomisation(adapter, cap, exp), 1)
    rows.append(("  randomisation check (relevance, all blocks)", t, t / unit))
    return rows


def run_randomisation_bench(quick: bool = False) -> int:
    """The cascading randomisation check (relevance, every block) in CPU seconds on one thread, over one bare
    SDPA forward's: CPU time is what a loaded machine cannot inflate the way it does wall time. Twice each,
    alternating: steps that reuse the untouched blocks' activations, and full recomputation of every step."""
    import attnviz.metrics.randomisation as R
    from .methods.registry import explain
    torch.set_num_threads(1)
    torch.set_grad_enabled(True)
    adapter, bare = _models(quick)
    size = adapter.model.config.image_size
    x = torch.randn(1, 3, size, size)
    cap = adapter.capture({"pixel_values": x, "box": None}, grads=True)
    exp = explain(adapter, cap, "relevance")

    def cpu(fn) -> float:
        t = time.process_time()
        fn()
        return time.process_time() - t
    with torch.no_grad():
        cpu(lambda: bare(pixel_values=x))                                     # warm-up
    print(f"attnviz bench --randomisation: {'tiny ViT' if quick else 'ViT-B/16'} random weights, {size}², "
          "one thread, CPU seconds")
    seconds: dict[bool, list[float]] = {True: [], False: []}
    units = []
    for reuse in (False, True, False, True):
        R.REUSE = reuse
        try:
            seconds[reuse].append(cpu(lambda: R.cascading_randomisation(adapter, cap, exp)))
        finally:
            R.REUSE = True
        with torch.no_grad():
            units += [cpu(lambda: bare(pixel_values=x)) for _ in range(3)]
    unit = statistics.median(units)                        # one unit for every ratio: they compare as seconds do
    for reuse in (False, True):
        what = "reusing untouched blocks" if reuse else "full recomputation"
        print(f"  {what:26} {' '.join(f'{t:.2f}' for t in seconds[reuse])} s  "
              f"{min(seconds[reuse]) / unit:6.1f}× forward (best)")
    best = min(seconds[True]) / unit
    target = FAITHFULNESS_TARGETS["  randomisation check (relevance, all blocks)"]
    print(f"bare forward {unit:.3f} s; randomisation check {best:.1f}× a bare forward (full recomputation "
          f"{min(seconds[False]) / unit:.1f}×), target <= {target:.0f}×")
    return 0 if quick or best <= target else 1


def _print_rows(rows, targets: dict[str, float]) -> bool:
    """Print (name, seconds, ratio) rows with their targets; True when a target is missed."""
    print(f"{'what':44} {'seconds':>9} {'× forward':>10}  target   (ratios of paired runs: each right after a bare forward)")
    failed = False
    for name, t, ratio in rows:
        target = targets.get(name)
        mark = ""
        if target is not None:
            ok = ratio <= target
            failed |= not ok
            mark = f"<= {target:.1f}  {'ok' if ok else 'MISSED'}"
        print(f"{name:44} {t:9.4f} {ratio:10.2f}  {mark}")
    return failed


# --- Swin (issue 12): rollout and relevance through shifted windows and patch merges ----------------------

#: Against Swin's own bare SDPA forward, as the ViT targets are against ViT's.
SWIN_TARGETS = {"rollout (capture + method)": 1.3, "relevance (capture + backward + method)": 3.0}


def run_swin_bench(repeats: int = 5, quick: bool = False) -> bool:
    """The swin-tiny architecture (random weights, 224²; a 2-stage toy with ``quick``): capture, rollout and
    relevance (the row vector pulled through every block's windows and the merges) as ratios to its own bare
    forward. True when a target is missed."""
    import transformers

    from .adapters.swin import SwinAdapter
    from .methods.registry import explain
    if quick:
        cfg = transformers.SwinConfig(image_size=32, patch_size=2, embed_dim=16, depths=[2, 2], num_heads=[2, 2],
                                      window_size=4, num_labels=10)
    else:
        cfg = transformers.SwinConfig(num_labels=1000)   # = microsoft/swin-tiny-patch4-window7-224's architecture
    eager, bare = _eager_and_sdpa(transformers.SwinForImageClassification, cfg)
    size = cfg.image_size
    adapter = SwinAdapter(eager, transformers.ViTImageProcessor(size={"height": size, "width": size}),
                          name="swin-tiny-random", source="<config>")
    inputs = {"pixel_values": torch.randn(1, 3, size, size), "box": None}
    bare_forward = torch.no_grad()(lambda: bare(pixel_values=inputs["pixel_values"]))

    def rollout_view():
        explain(adapter, adapter.capture(inputs, grads=False), "rollout")

    def relevance_view():
        explain(adapter, adapter.capture(inputs, grads=True), "relevance")      # top class: one backward

    unit = _median_time(bare_forward, repeats)
    rows = [("bare SDPA forward (unit)", unit, 1.0)]
    rows.append(("capture, no gradients", *_paired(lambda: adapter.capture(inputs, grads=False), bare_forward,
                                                   repeats)))
    rows.append(("rollout (capture + method)", *_paired(rollout_view, bare_forward, repeats)))
    rows.append(("relevance (capture + backward + method)", *_paired(relevance_view, bare_forward, repeats)))
    cap = adapter.capture(inputs, grads=True)
    top = adapter.resolve_target(cap, None)
    cap.grads(top.index, "windows")
    for name in ("attention", "rollout", "relevance", "grad_rollout"):
        t = _median_time(lambda n=name: explain(adapter, cap, n), repeats)
        rows.append((f"  {name} on a ready capture", t, t / unit))
    t = _median_time(lambda: cap._grad_fn(top.index), repeats)
    rows.append(("  one backward to every window attention", t, t / unit))
    h = cap.extras["hierarchy"]
    print(f"\nSwin: {'tiny Swin' if quick else 'swin-tiny'} random weights, input {size}×{size}, stage grids "
          f"{' '.join(f'{r}×{c}' for r, c in h.grids)}, window {cfg.window_size}, {len(h.blocks)} blocks")
    return _print_rows(rows, SWIN_TARGETS)


# --- the app: server CPU per interaction (``bench --app``, issue 13) -----------------------------

def run_app_bench(repeats: int = 3) -> int:
    """Start the app on the demo model and on a random ViT-B/16 and print the server CPU of each
    interaction against its target (see :mod:`attnviz.loadtest.appbench`); 0 when all are met."""
    from .loadtest.appbench import run_app_bench as run
    return run(repeats)


# --- high resolution (issue 22): attention views without the T² wall ------------------------------------

#: DINOv2-S at its native 518² and above: (rollout, relevance) / bare forward, and MB over a bare forward.
HIGHRES_TARGETS = {518: (1.2, 2.6, 150, 400), 896: (1.5, 3.0, 512, 1024)}
HIGHRES_SIZES = (518, 896, 1792)
HIGHRES_OPS = ("bare", "rollout", "views", "relevance")


def dinov2_small(image_size: int = 518, num_labels: int = 1000):
    """The DINOv2-S/14 architecture (12 layers, 6 heads, width 384) with a 1000-class head, random weights."""
    import transformers
    cfg = transformers.Dinov2Config(hidden_size=384, num_hidden_layers=12, num_attention_heads=6,
                                    intermediate_size=1536, patch_size=14, image_size=image_size,
                                    num_labels=num_labels)
    torch.manual_seed(0)
    model = transformers.Dinov2ForImageClassification(cfg)
    model.config.architectures = ["Dinov2ForImageClassification"]
    model.set_attn_implementation("eager")
    return model


def highres_probe(size: int, op: str, repeats: int = 1, path: str = "auto", threads: int = 2) -> dict:
    """One measurement in this process (run it in a fresh one): DINOv2-S at ``size``², ``op`` in
    :data:`HIGHRES_OPS`; seconds (median of ``repeats`` after one warm-up; one cold run when 0), the bare
    SDPA forward's seconds in the same process (the unit; measured before ``op``), and the process's peak
    resident memory (``ru_maxrss``)."""
    import resource

    import transformers

    from .adapters.classifier import ClassifierAdapter
    from .methods.attention import attention_grid
    from .methods.registry import explain
    torch.set_num_threads(threads)
    adapter = ClassifierAdapter(dinov2_small(), transformers.ViTImageProcessor(), name="dinov2-s-random",
                                source="<config>")
    adapter.attention_path = path
    impl = adapter.model.config._attn_implementation
    x = torch.randn(1, 3, size, size)
    inputs = {"pixel_values": x, "box": None}

    def bare():
        adapter.model.set_attn_implementation("sdpa")
        try:
            with torch.no_grad():
                adapter.model(pixel_values=x)
        finally:
            adapter.model.set_attn_implementation(impl)

    def rollout():
        explain(adapter, adapter.capture(inputs, grads=False), "rollout")

    def views():
        cap = adapter.capture(inputs, grads=True)
        attention_grid(cap, "cls")                     # every layer × head
        for head in ("mean", "max", "min"):
            explain(adapter, cap, "attention", head=head)
        explain(adapter, cap, "rollout")
        explain(adapter, cap, "relevance")             # top class: one backward

    def relevance():
        explain(adapter, adapter.capture(inputs, grads=True), "relevance")

    def bare_reduced():
        with precision.computing(adapter.device, adapter.precision):
            bare()

    fn = {"bare": bare, "rollout": rollout, "views": views, "relevance": relevance}[op]
    unit, unit_cpu = _wall_cpu(bare, repeats)
    reduced = {}
    if adapter.precision != torch.float32 and op != "bare":
        # the same bare forward in the capture's precision (after the float32 unit: the bare cell's peak stays
        # float32's), for the ratio against a forward in that precision
        reduced["unit_reduced"], reduced["unit_reduced_cpu"] = _wall_cpu(bare_reduced, repeats)
    t, cpu = (unit, unit_cpu) if op == "bare" else _wall_cpu(fn, repeats)
    if op != "bare":                                # (its timing run would raise the bare cell's peak, the unit's)
        cost = adapter.estimate((size, size))       # what the app shows before running (tokens/budget.py)
        reduced["estimate_s"] = {"forward": cost.forward_s, "rollout": cost.rollout_s, "relevance": cost.relevance_s}
    return {"size": size, "op": op, "tokens": adapter.layout(inputs).n_tokens, "seconds": t, "unit": unit,
            "cpu": cpu, "unit_cpu": unit_cpu, "precision": precision.name(adapter.precision), **reduced,
            "rows": adapter.rows_path(adapter.layout(inputs).n_tokens),
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _cpu_ratio(r: dict) -> float:
    """A cell's CPU time over its bare forward's (wall time where an older record has no CPU time)."""
    return r["cpu"] / r["unit_cpu"] if "cpu" in r else r["seconds"] / r["unit"]


def _wall_cpu(fn, repeats: int) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds of this process, all threads) of ``repeats`` runs after one
    warm-up; one cold run when ``repeats`` is 0. CPU time is the fairer measure on a shared machine."""
    if repeats:
        fn()
    walls, cpus = [], []
    for _ in range(max(1, repeats)):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    return statistics.median(walls), statistics.median(cpus)


def in_fresh_process(call: str, label: str) -> Optional[dict]:
    """The JSON dict ``call`` (a Python expression calling an ``attnviz`` probe, e.g.
    ``"attnviz.bench.highres_probe(518, 'bare')"``) returns, evaluated in a fresh interpreter (its peak
    memory and allocator are its own); None, with ``label`` and the error on stderr, if it failed."""
    import json
    import os
    import subprocess
    import sys
    module = call.split("(", 1)[0].rsplit(".", 1)[0]
    code = f"import json, {module}; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TRANSFORMERS_VERBOSITY": "error"})
    if out.returncode:
        print(f"{label}: failed\n{out.stderr[-2000:]}", file=sys.stderr)
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_highres_bench(sizes=HIGHRES_SIZES, repeats: int = 1, path: str = "auto", threads: int = 2) -> int:
    """``bench --highres``: per size and view a fresh process (its peak memory is its own), each timing its
    view against a bare SDPA forward it runs itself. Prints the table with the targets; 1 when one is missed."""
    import os
    import sys
    results = {}
    for size in sizes:
        reps = repeats if size <= 896 else 0          # 1792²: one cold run of each
        for op in HIGHRES_OPS:
            got = in_fresh_process(f"attnviz.bench.highres_probe({size}, {op!r}, {reps}, {path!r}, {threads})",
                                   f"{size}² {op}")
            if got is None:
                continue
            results[size, op] = got
            print(f"  {size}² {op}: {got}", file=sys.stderr, flush=True)    # as each cell ends
    load = os.getloadavg()
    print(f"attnviz bench --highres: DINOv2-S/14 random weights, torch {torch.__version__}, {threads} threads, "
          f"attention path {path}, passes in {precision.name(precision.from_env())}, load average {load[0]:.1f} {load[1]:.1f} {load[2]:.1f}; one process per cell "
          "(peak RSS), time as a ratio to a bare SDPA forward in the same process: CPU time (wall time)")
    print(f"{'input':>6} {'tokens':>7} {'path':>5} {'bare fwd s':>10} {'bare MB':>8}   "
          f"{'rollout':>24} {'all views':>24} {'relevance':>24}   target (rollout, relevance, +MB)")
    failed = False
    for size in sizes:
        bare = results.get((size, "bare"))
        if bare is None:
            continue
        cells = []
        for op in ("rollout", "views", "relevance"):
            r = results.get((size, op))
            cells.append(f"{_cpu_ratio(r):5.2f}× ({r['seconds'] / r['unit']:.2f}×) {r['peak_mb'] - bare['peak_mb']:+6.0f}MB"
                         if r else f"{'failed':>24}")
        target = HIGHRES_TARGETS.get(size)
        mark = ""
        if target:
            got = [results.get((size, op)) for op in ("rollout", "relevance")]
            ok = all(got) and _cpu_ratio(got[0]) <= target[0] and _cpu_ratio(got[1]) <= target[1] and \
                got[0]["peak_mb"] - bare["peak_mb"] <= target[2] and got[1]["peak_mb"] - bare["peak_mb"] <= target[3]
            failed |= not ok
            mark = f"≤{target[0]}× ≤{target[1]}× +{target[2]}/+{target[3]}MB {'ok' if ok else 'MISSED'}"
        rows = results.get((size, "rollout"), {}).get("rows")
        print(f"{size:>5}² {bare['tokens']:>7,} {'rows' if rows else 'full':>5} {bare['seconds']:10.2f} "
              f"{bare['peak_mb']:8.0f}   {cells[0]:>24} {cells[1]:>24} {cells[2]:>24}   {mark}")
        reduced = [results.get((size, op)) for op in ("rollout", "views", "relevance")]
        if any(r and "unit_reduced_cpu" in r for r in reduced):
            # the passes ran in bfloat16 (ATTNVIZ_PRECISION): the same cells against a bfloat16 bare forward
            cells = [f"{r['cpu'] / r['unit_reduced_cpu']:5.2f}× ({r['seconds'] / r['unit_reduced']:.2f}×)"
                     if r and "unit_reduced_cpu" in r else "" for r in reduced]
            fwd = next(r for r in reduced if r and "unit_reduced_cpu" in r)
            print(f"{'':>6} {'':>7} {'':>5} {fwd['unit_reduced']:10.2f} {fwd['precision'][:8]:>8}   "
                  f"{cells[0]:>24} {cells[1]:>24} {cells[2]:>24}   (against a {fwd['precision']} bare forward)")
        # the forward in the passes' precision: the bare cell's float32 one, or a cell's reduced bare forward
        fwd_s = next((r["unit_reduced"] for r in reduced if r and "unit_reduced" in r), bare["seconds"])
        got = results.get((size, "rollout"), {}).get("estimate_s")
        est = [f"{op} {got[op]:.2f} s (measured {fwd_s if op == 'forward' else results[size, op]['seconds']:.2f} s)"
               for op in ("forward", "rollout", "relevance")
               if got and (op == "forward" or (size, op) in results)]
        if est:
            print(f"{'':>6} adapter.estimate, wall time: {'; '.join(est)}")
    return 1 if failed else 0
