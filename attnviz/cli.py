"""Command line: ``python -m attnviz explain | batch | bench | models | loadtest``.

Exit codes (stable): 0 ok, 2 usage, 3 unreadable or rejected image,
4 model not available, 75 ``batch``'s --out-dir is in use by another batch run
(sysexits' EX_TEMPFAIL: try again when it ends), 141 output closed early (``| head``: no traceback, as
a shell tool killed by SIGPIPE). Errors are one sentence on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_USAGE, EXIT_IMAGE, EXIT_MODEL, EXIT_BUSY, EXIT_PIPE = 0, 2, 3, 4, 75, 141
REJECTED_SHOWN = 5           # batch: rejected files listed on stderr with their reason


def _quiet_libraries() -> None:
    import warnings
    import transformers
    transformers.logging.set_verbosity_error()     # e.g. the torchvision fallback notice
    transformers.logging.disable_progress_bar()    # "Loading weights" bars would mix with our output
    warnings.filterwarnings("ignore", module="captum")


def _params(pairs: Sequence[str]) -> dict[str, str]:
    from .errors import UsageError
    out = {}
    for p in pairs or ():
        if "=" not in p:
            raise UsageError(f"--param expects key=value, got '{p}'.")
        k, v = p.split("=", 1)
        out[k.strip()] = v.strip()
    return out


def _size(text: Optional[str]):
    if not text:
        return None
    try:
        h, w = (int(x) for x in text.lower().split("x"))
        if h < 1 or w < 1:
            raise ValueError
    except ValueError:
        raise argparse.ArgumentTypeError("--size expects HEIGHTxWIDTH, e.g. 224x320") from None
    return (h, w)


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m attnviz", description="See where a vision transformer looks.")
    sub = ap.add_subparsers(dest="command", required=True)

    def explain_args(p, several: bool = False):
        p.add_argument("--model", help="catalog name, hub id or save_pretrained folder (default: catalog default, else the demo model)")
        if several:
            p.add_argument("--method", action="append", help="explanation method (see `models --methods`; default "
                           "rollout); several as a,b,c or repeated: one capture per image, each method's rows and "
                           "--faithfulness numbers, compared by `report`")
        else:
            p.add_argument("--method", default="rollout", help="explanation method (see `models --methods`)")
        p.add_argument("--target", help="class index or label / prompt index or text / caption-token index (default: top)")
        p.add_argument("--text", action="append", default=[], help="a text prompt (repeat for several; image–text models) / a caption to score (captioning models)")
        p.add_argument("--layer", type=int, help="layer index, from 0 as outputs.attentions; negative from the end")
        p.add_argument("--head", help="head index or mean/max/min")
        p.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter (repeatable)")
        p.add_argument("--size", type=_size, help="model input HEIGHTxWIDTH (rounded to whole patches)")
        p.add_argument("--precision", choices=("float32", "bfloat16"),
                       help="what the model's passes compute in (default ATTNVIZ_PRECISION, else float32); "
                            "bfloat16 is ~3-4x faster on CPUs with AMX, maps within r > 0.999 of float32")
        p.add_argument("--faithfulness", action="store_true",
                       help="also run deletion / insertion (RISE) for the map, with a random order as the yardstick"
                            + ("; and ROAD (MoRF, LeRF)" if several else ""))
        p.add_argument("--sanity", action="store_true",
                       help="also run the cascading weight-randomisation check (Adebayo et al. 2018)")

    e = sub.add_parser("explain", help="explain one image")
    e.add_argument("image")
    explain_args(e)
    e.add_argument("--out", help="PATH.npy (raw float32 map) or PATH.png (overlay at the original size)")
    e.add_argument("--json", action="store_true", help="print one JSON object with the result")
    e.add_argument("--question", help="vision-language models: the question to ask about the image")
    e.add_argument("--answer", help="vision-language models: an answer to check (default: the model answers); "
                                    "--target is then the answer token index (default: its first content word)")

    b = sub.add_parser("batch", help="explain every image in a folder, several per forward (or on Ray Data)")
    b.add_argument("folder", help="a folder, subfolders included (one subfolder per class: a labelled set), "
                                  "or a URI pyarrow's filesystems read")
    explain_args(b, several=True)
    b.add_argument("--out-dir", required=True,
                   help="folder (not the images' own) for results.parquet (one row per image and target), "
                        "and in-process <file>.npy, <file>.png and results.jsonl; <file> is the image's whole "
                        "name, e.g. cat.jpg.npy. Run again to resume: images already done are skipped")
    b.add_argument("--engine", choices=("inprocess", "ray"), default="inprocess",
                   help="inprocess (default) or ray: Ray Data, a local instance unless RAY_ADDRESS names a cluster")
    b.add_argument("--batch-size", type=int, default=8, help="images per forward (default 8)")
    b.add_argument("--top-k", type=int, default=1,
                   help="class-specific methods: explain each image's k top targets, one row each (default 1)")
    b.add_argument("--workers", type=int, help="ray: workers, each holding the model (default: CPUs / --threads)")
    b.add_argument("--threads", type=int, default=1, help="ray: CPUs and torch threads per worker (default 1)")
    b.add_argument("--no-files", action="store_true",
                   help="write results.parquet only (no per-image .npy / .png, no results.jsonl; ray never writes them)")

    rp = sub.add_parser("report", help="one self-contained HTML page summarising a batch run")
    rp.add_argument("results", help="a batch --out-dir")
    rp.add_argument("--out", required=True, help="the HTML file to write")
    rp.add_argument("--masks", help="a folder of object masks named like the images (same relative path, "
                                    "any image extension; non-zero = object): adds the pointing game")
    rp.add_argument("--examples", type=int, default=6, help="best and worst examples shown of each (default 6)")

    m = sub.add_parser("models", help="list the catalog and whether each model is available offline")
    m.add_argument("--methods", action="store_true", help="list the explanation methods and their parameters")
    m.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="time every method against one bare forward (ViT-B/16, random weights)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--quick", action="store_true", help="a tiny model, for a smoke test")
    bench.add_argument("--captum", action="store_true", help="also time the (slow) Captum methods")
    bench.add_argument("--batch", action="store_true",
                       help="batch throughput instead: the batch engine against a bare batched forward, images/s")
    bench.add_argument("--ray", action="store_true",
                       help="the Ray engine against in-process on the same files (with --batch: after it)")
    bench.add_argument("--images", type=int, help="with --batch: images per run (default 16; 200 with --ray)")
    bench.add_argument("--highres", action="store_true",
                       help="DINOv2-S at 518², 896², 1792²: attention views' time and memory over a bare forward")
    bench.add_argument("--randomisation", action="store_true",
                       help="the randomisation check's CPU time (one thread) over a bare forward's, steps reusing "
                            "the untouched blocks against full recomputation")
    bench.add_argument("--faithfulness", action="store_true",
                       help="CPU time (one thread) of the perturbation metrics' forwards (deletion + insertion, "
                            "ROAD) before / after the fused attention, per-image cost by batch size")
    bench.add_argument("--sizes", help="with --highres: square sides to run, e.g. 1792 or 518,896 (default 518,896,1792)")
    bench.add_argument("--precision", dest="precision_bench", action="store_true",
                       help="float32 against bfloat16 passes: CPU time per image and how far the maps move")
    bench.add_argument("--app", action="store_true",
                       help="the app instead: server CPU per interaction (demo model and ViT-B/16, random weights)")

    lt = sub.add_parser("loadtest", help="many sessions on one app server at once (Streamlit's protocol, no browsers)")
    lt.add_argument("--sessions", type=int, default=30, help="concurrent sessions (default 30)")
    lt.add_argument("--model", help="the started app's ATTNVIZ_MODEL (catalog name, hub id, folder, or "
                                    "random-vit-b16); default: the app's own default")
    lt.add_argument("--url", action="append", help="an app already running on this machine (http://127.0.0.1:PORT) "
                    "instead; repeat it for several servers (each session stays on one)")
    lt.add_argument("--batch-log", help="with --url: the ATTNVIZ_BATCH_LOG file those apps write (batch sizes, "
                                        "queue waits)")
    lt.add_argument("--ramp", type=float, default=30.0, help="seconds over which the sessions open (default 30)")
    lt.add_argument("--think", type=float, default=2.0, help="mean pause between a session's clicks (default 2 s)")
    lt.add_argument("--seed", type=int, default=0)
    lt.add_argument("--images", help="a folder of images to upload (default: a different synthetic scene each)")
    lt.add_argument("--timeout", type=float, default=180.0, help="longest wait for one run (default 180 s)")
    lt.add_argument("--limit", type=float, default=900.0, help="longest the whole test may take (default 900 s)")
    lt.add_argument("--json", dest="json_path", help="also write the measurements to this JSON file")
    return ap


def _method_params(args) -> dict[str, str]:
    from .errors import UsageError
    from .methods import get_method
    specs = [get_method(m.strip()) for m in args.method.split(",")]     # batch: several, comma-joined
    params = _params(args.param)
    names = [p.name for spec in specs for p in spec.params]
    for flag in ("layer", "head"):
        value = getattr(args, flag)
        if value is None:
            continue
        if flag not in names:
            which = f"Method '{specs[0].name}' has" if len(specs) == 1 else f"None of the methods {args.method} has"
            raise UsageError(f"{which} no --{flag} (parameters: {', '.join(dict.fromkeys(names)) or 'none'}).")
        params[flag] = str(value)
    return params


def _load(args):
    from . import load_model
    from .catalog import resolve
    if not args.model:
        print(f"attnviz: using {resolve(None).reason}.", file=sys.stderr)
    adapter = load_model(args.model)
    if getattr(args, "precision", None) and adapter.REDUCED_PRECISION:
        from .precision import parse
        adapter.precision = parse(args.precision)
    return adapter


def _explain_one(adapter, image, args, params, progress=None):
    from .methods.registry import explain, get_method
    # A class-agnostic map never differentiates the capture: without the graph the forward is a plain
    # one, as fast as a bare model call (image–text records still need it for each prompt's words).
    grads = get_method(args.method).class_specific or adapter.family == "clip"
    t0 = time.perf_counter()
    cap = adapter.capture(adapter.prepare(image, texts=args.text or None, size=args.size), grads=grads)
    t1 = time.perf_counter()
    exp = explain(adapter, cap, args.method, args.target, progress=progress, **params)
    timings = {"capture": t1 - t0, "method": time.perf_counter() - t1}
    checks = _checks(adapter, cap, exp, args, timings)
    return cap, exp, timings, checks


def _checks(adapter, cap, exp, args, timings) -> dict:
    """The faithfulness checks asked for (--faithfulness, --sanity), JSON-ready."""
    from .metrics import cascading_randomisation, deletion_insertion, deletion_summary
    out: dict = {}
    target = adapter.resolve_target(cap, args.target).index
    if args.faithfulness:
        t0 = time.perf_counter()
        out["faithfulness"] = deletion_summary(deletion_insertion(adapter, cap, exp, target=target))
        timings["faithfulness"] = time.perf_counter() - t0
    if args.sanity:
        t0 = time.perf_counter()
        out["sanity"] = [s.to_dict() for s in cascading_randomisation(adapter, cap, exp)]
        timings["sanity"] = time.perf_counter() - t0
    return out


def _write_out(path: Path, image, cap, exp) -> None:
    from . import render
    from .errors import UsageError
    suffix = path.suffix.lower()
    if exp.over in ("tokens", "channels") and suffix == ".png":
        what = "prompt tokens" if exp.over == "tokens" else "a block's channels"
        raise UsageError(f"A map over {what} has no image overlay; use --out x.npy or --json.")
    if suffix == ".npy":
        import numpy as np
        np.save(path, exp.map.astype("float32"))
    elif suffix == ".png":
        img = render.overlay(image, exp.map, norm=render.default_norm(exp.signed),
                             box=cap.map_box(exp.map.shape, image.size, exp.over))
        path.write_bytes(render.to_png_bytes(img))
    else:
        raise UsageError(f"--out must end in .npy or .png, got '{path.name}'.")


def _precision_name(dtype) -> str:
    from .precision import name
    return name(dtype)


def _record(adapter, cap, exp, timings) -> dict:
    tgt = exp.target or adapter.resolve_target(cap, None)
    rec = {
        "model": adapter.name,
        "method": exp.method,
        "target": {"index": tgt.index, "label": tgt.label, "kind": tgt.kind},
        "score": float(cap.scores[tgt.index]),
        "class_specific": exp.target is not None,
        "map_shape": list(exp.map.shape),
        "over": exp.over,
        "signed": exp.signed,
        "pooling": cap.pooling,               # what the "output" query reads (tokens/readout.py)
        "precision": _precision_name(adapter.precision),   # what the model's passes computed in
        "params": exp.params,
        "meta": {k: v for k, v in exp.meta.items() if k != "seconds"},
        "timings": {k: round(v, 4) for k, v in timings.items()},
    }
    if adapter.family == "captioning":        # the caption's tokens with their probabilities
        rec["caption"] = adapter.caption_record(cap)
    if adapter.family == "clip":              # every prompt, its score and per-token relevance
        rec["prompts"] = _prompt_records(adapter, cap)
    if adapter.family in ("captioning", "clip"):
        rec["notes"] = list(cap.extras.get("notes", []))
    return rec


def cmd_explain(args) -> int:
    if args.question is not None or args.answer is not None:      # a vision-language model's answer (attnviz/ask.py)
        from .ask import cmd_ask
        return cmd_ask(args, _load, _params(args.param))
    from .images import load_path
    t0 = time.perf_counter()
    image = load_path(args.image)
    t_image = time.perf_counter()
    params = _method_params(args)     # the methods' first use imports torch, transformers and captum
    if args.out:
        from .errors import UsageError
        if Path(args.out).suffix.lower() not in (".npy", ".png"):
            raise UsageError(f"--out must end in .npy or .png, got '{Path(args.out).name}'.")
        if not Path(args.out).resolve().parent.is_dir():       # said before the model runs, not after
            raise UsageError(f"--out: the folder '{Path(args.out).parent}' does not exist.")
    t_load = time.perf_counter()
    adapter = _load(args)
    t_model = time.perf_counter()
    progress = _tqdm_progress() if not args.json else None
    cap, exp, timings, checks = _explain_one(adapter, image, args, params, progress)
    if args.out:
        _write_out(Path(args.out), image, cap, exp)
    timings = {"image": t_image - t0, "imports": t_load - t_image, "model_load": t_model - t_load, **timings,
               "total": time.perf_counter() - t0}
    rec = {**_record(adapter, cap, exp, timings), **checks}
    for note in cap.extras.get("notes", []):
        print(f"attnviz: {note}", file=sys.stderr)
    if adapter.family == "captioning" and not args.json:
        print(f"caption: {rec['caption']['text']}")
    if args.json:
        print(json.dumps(rec))
    else:
        t = rec["target"]
        print(f"{rec['model']} · {rec['method']} · target {t['index']} ({t['label']}, score {rec['score']:.4g}) · "
              f"map {'×'.join(map(str, rec['map_shape']))} over {rec['over']} · {timings['total']:.2f} s")
        if "faithfulness" in rec:
            f = rec["faithfulness"]
            print(f"deletion AUC {f['deletion_auc']:.4g} (random order {f['random_deletion_auc']:.4g}, lower is better) · "
                  f"insertion AUC {f['insertion_auc']:.4g} (random {f['random_insertion_auc']:.4g}, higher is better) · "
                  f"target {f['quantity']}")
        if "sanity" in rec:
            print("weights randomised from the top: Spearman |map| " +
                  ", ".join(f"{s['randomised']} {s['spearman_abs']:.2f}" for s in rec["sanity"]))
    return EXIT_OK


def _prompt_records(adapter, cap) -> list[dict]:
    """Each prompt with its score, probability and per-token text relevance."""
    from .methods.registry import explain
    probs = adapter.probabilities(cap).tolist()
    out = []
    for t in cap.targets:
        rel = explain(adapter, cap, "text_relevance", t.index)
        out.append({"index": t.index, "text": t.label, "score": t.score, "probability": probs[t.index],
                    "tokens": [{"token": tok, "relevance": float(v)} for tok, v in zip(rel.meta["tokens"], rel.map)],
                    "words": [{"word": w, "relevance": v} for w, v in rel.meta["words"]]})
    return out


def _tqdm_progress():
    from tqdm import tqdm
    bar = {"bar": None}

    def update(done: int, total: int) -> None:
        if bar["bar"] is None:
            bar["bar"] = tqdm(total=total, unit="eval", file=sys.stderr, leave=False)
        bar["bar"].n = done
        bar["bar"].refresh()
        if done >= total:
            bar["bar"].close()
    return update


def cmd_batch(args) -> int:
    """Explain a folder with the batch engine (in-process or Ray); results.parquet, resumable."""
    from .engine import Job, Source, run_inprocess
    from .engine.local import check_places, faithfulness_line, pending_files
    from .errors import UsageError
    if args.batch_size < 1 or args.top_k < 1 or args.threads < 1 or (args.workers is not None and args.workers < 1):
        raise UsageError("--batch-size, --top-k, --threads and --workers must be at least 1.")
    source, out = Source(args.folder), Path(args.out_dir)
    args.method = ",".join(m.strip() for given in (args.method or ["rollout"]) for m in given.split(",") if m.strip())
    params = _method_params(args)
    adapter = _load(args)
    job = Job(model=_model_spec(args, adapter), method=args.method, params=params, target=args.target,
              top_k=args.top_k, texts=tuple(args.text), size=args.size, faithfulness=args.faithfulness,
              sanity=args.sanity, batch_size=args.batch_size,
              precision=_precision_name(adapter.precision))   # what it computes in (text generators: float32)
    if args.engine == "ray":
        from .engine.results import run_lock
        from .engine.ray_engine import rows_for, run_ray
        from .engine.worker import Worker
        worker = Worker(job, adapter)           # bad parameters or targets: one sentence before Ray starts
        del adapter
        check_places(source, out)
        with run_lock(out):
            todo, skipped = pending_files(source, out, worker)
            del worker
            timing = run_ray(job, source, out, todo, workers=args.workers, threads=args.threads)
        rows = rows_for(out, {source.display(f) for f in todo})
        rejected = len({r["path"] for r in rows if r["error"] is not None})
        explained = len({r["path"] for r in rows if r["error"] is None})
        print(f"ray: start-up {timing['startup']:.1f} s, {len(todo)} images in {timing['seconds']:.1f} s",
              file=sys.stderr)
    else:
        from tqdm import tqdm
        with tqdm(unit="image", file=sys.stderr, disable=None) as bar:
            s = run_inprocess(job, source, out, adapter=adapter, files=not args.no_files, progress=bar.update)
        rows, rejected, explained, skipped = s.rows, s.rejected, s.explained, s.skipped
    print(f"{explained} explained, {rejected} rejected, {skipped} already done; results in "
          f"{out / 'results.parquet'}", file=sys.stderr)
    errors = {r["path"]: r["error"] for r in rows if r["error"] is not None}
    for path, why in list(errors.items())[:REJECTED_SHOWN]:        # which files, and why, without opening the results
        print(f"  rejected {path}: {why}", file=sys.stderr)
    if len(errors) > REJECTED_SHOWN:
        print(f"  … and {len(errors) - REJECTED_SHOWN} more (the error column of the results)", file=sys.stderr)
    line = faithfulness_line(rows)
    if line:
        print(line, file=sys.stderr)
    return EXIT_OK if rejected == 0 else EXIT_IMAGE


def _model_spec(args, adapter) -> str:
    """What every batch worker loads: the catalog name when the model is in the catalog, else its source."""
    from .catalog import resolve
    res = resolve(args.model)
    return res.entry.name if res.entry else adapter.source


def cmd_report(args) -> int:
    from .report import build_report
    path = build_report(args.results, args.out, masks=args.masks, examples=args.examples)
    print(f"report written to {path}", file=sys.stderr)
    return EXIT_OK


def cmd_models(args) -> int:
    from .catalog import is_available_offline, load_catalog
    if args.methods:
        from .methods import list_methods
        rows = [{"name": m.name, "class_specific": m.class_specific, "over": m.over, "signed": m.signed,
                 "kind": m.kind, "description": m.description,
                 "params": {p.name: p.default for p in m.params}} for m in list_methods()]
        if args.json:
            print(json.dumps(rows))
        else:
            for r in rows:
                ps = " ".join(f"{k}={v}" for k, v in r["params"].items())
                print(f"{r['name']:22} {r['over']:8} {'class' if r['class_specific'] else 'any  '}  {r['description']}  [{ps}]")
        return EXIT_OK
    cat = load_catalog()
    rows = [{"name": e.name, "hub": e.hub, "family": e.family, "task": e.task,
             "offline": is_available_offline(e), "default": e.name == cat.default,
             "offline_default": e.name == cat.offline_default, "notes": e.notes} for e in cat.entries]
    if args.json:
        print(json.dumps(rows))
    else:
        for r in rows:
            mark = "yes" if r["offline"] else "no "
            tag = " (default)" if r["default"] else " (offline default)" if r["offline_default"] else ""
            print(f"{r['name']:32} offline: {mark}  {r['family']:10} {r['task']:22}{tag}")
    return EXIT_OK


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)      # argparse exits 2 on usage errors
    from .errors import ModelUnavailable, OutDirBusy, UsageError
    from .images import ImageRejected
    if args.command != "models":     # `models` never loads torch or transformers: it answers at once
        _quiet_libraries()
    try:
        if args.command == "explain":
            return cmd_explain(args)
        if args.command == "batch":
            return cmd_batch(args)
        if args.command == "report":
            return cmd_report(args)
        if args.command == "models":
            return cmd_models(args)
        if args.command == "loadtest":
            from .loadtest import run_loadtest
            return run_loadtest(sessions=args.sessions, model=args.model, url=args.url, ramp=args.ramp,
                                think=args.think, seed=args.seed, images_dir=args.images, timeout=args.timeout,
                                limit=args.limit, json_path=args.json_path, batch_log=args.batch_log)
        if args.highres:
            from .bench import run_highres_bench
            sizes = (224, 518) if args.quick else (518, 896, 1792)
            if args.sizes:
                try:
                    sizes = tuple(int(x) for x in args.sizes.split(","))
                except ValueError:
                    raise UsageError(f"--sizes takes square sides separated by commas, got '{args.sizes}'.") from None
            return run_highres_bench(sizes=sizes, repeats=min(args.repeats, 3))
        if args.randomisation:
            from .bench import run_randomisation_bench
            return run_randomisation_bench(quick=args.quick)
        if args.faithfulness:
            from .bench_faithfulness import run_faithfulness_bench
            return run_faithfulness_bench(quick=args.quick, repeats=min(args.repeats, 3))
        if args.precision_bench:
            from .bench_precision import run_precision_bench
            return run_precision_bench(repeats=min(args.repeats, 5), quick=args.quick)
        if args.app:
            from .bench import run_app_bench
            return run_app_bench()
        if args.batch or args.ray:
            from .bench_batch import run_batch_bench
            return run_batch_bench(images=args.images, ray=args.ray, batch=args.batch, quick=args.quick,
                                   repeats=args.repeats)
        from .bench import run_bench
        return run_bench(repeats=args.repeats, quick=args.quick, captum=args.captum)
    except UsageError as e:
        print(f"attnviz: {e}", file=sys.stderr)
        return EXIT_USAGE
    except ImageRejected as e:
        print(f"attnviz: {e}", file=sys.stderr)
        return EXIT_IMAGE
    except ModelUnavailable as e:
        print(f"attnviz: {e}", file=sys.stderr)
        return EXIT_MODEL
    except OutDirBusy as e:
        print(f"attnviz: {e}", file=sys.stderr)
        return EXIT_BUSY
    except BrokenPipeError:
        # The reader went away (``attnviz models --json | head``): stop quietly. Point stdout at devnull
        # so the interpreter's final flush does not raise a second time.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_PIPE
