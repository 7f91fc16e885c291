"""Command line: ``python -m attnviz explain | batch | bench | models``.

Exit codes (stable): 0 ok, 2 usage, 3 unreadable or rejected image,
4 model not available. Errors are one sentence on stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Optional, Sequence

EXIT_OK, EXIT_USAGE, EXIT_IMAGE, EXIT_MODEL = 0, 2, 3, 4


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

    def explain_args(p):
        p.add_argument("--model", help="catalog name, hub id or save_pretrained folder (default: catalog default, else the demo model)")
        p.add_argument("--method", default="rollout", help="explanation method (see `models --methods`)")
        p.add_argument("--target", help="class index or label / prompt index or text / caption-token index (default: top)")
        p.add_argument("--text", action="append", default=[], help="a text prompt (repeat for several; image–text models) / a caption to score (captioning models)")
        p.add_argument("--layer", type=int, help="layer index, from 0 as outputs.attentions; negative from the end")
        p.add_argument("--head", help="head index or mean/max/min")
        p.add_argument("--param", action="append", default=[], metavar="K=V", help="method parameter (repeatable)")
        p.add_argument("--size", type=_size, help="model input HEIGHTxWIDTH (rounded to whole patches)")
        p.add_argument("--faithfulness", action="store_true",
                       help="also run deletion / insertion (RISE) for the map, with a random order as the yardstick")
        p.add_argument("--sanity", action="store_true",
                       help="also run the cascading weight-randomisation check (Adebayo et al. 2018)")

    e = sub.add_parser("explain", help="explain one image")
    e.add_argument("image")
    explain_args(e)
    e.add_argument("--out", help="PATH.npy (raw float32 map) or PATH.png (overlay at the original size)")
    e.add_argument("--json", action="store_true", help="print one JSON object with the result")

    b = sub.add_parser("batch", help="explain every image in a folder")
    b.add_argument("folder")
    explain_args(b)
    b.add_argument("--out-dir", required=True,
                   help="folder (not the images' own) for <file>.npy, <file>.png and results.jsonl; "
                        "<file> is the image's whole name, e.g. cat.jpg.npy")

    m = sub.add_parser("models", help="list the catalog and whether each model is available offline")
    m.add_argument("--methods", action="store_true", help="list the explanation methods and their parameters")
    m.add_argument("--json", action="store_true")

    bench = sub.add_parser("bench", help="time every method against one bare forward (ViT-B/16, random weights)")
    bench.add_argument("--repeats", type=int, default=5)
    bench.add_argument("--quick", action="store_true", help="a tiny model, for a smoke test")
    bench.add_argument("--captum", action="store_true", help="also time the (slow) Captum methods")
    return ap


def _method_params(args) -> dict[str, str]:
    from .errors import UsageError
    from .methods import get_method
    spec = get_method(args.method)
    params = _params(args.param)
    names = [p.name for p in spec.params]
    for flag in ("layer", "head"):
        value = getattr(args, flag)
        if value is None:
            continue
        if flag not in names:
            raise UsageError(f"Method '{spec.name}' has no --{flag} (its parameters: {', '.join(names) or 'none'}).")
        params[flag] = str(value)
    return params


def _load(args):
    from . import load_model
    from .catalog import resolve
    if not args.model:
        print(f"attnviz: using {resolve(None).reason}.", file=sys.stderr)
    return load_model(args.model)


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
    if exp.over == "tokens" and suffix == ".png":
        raise UsageError("A map over prompt tokens has no image overlay; use --out x.npy or --json.")
    if suffix == ".npy":
        import numpy as np
        np.save(path, exp.map.astype("float32"))
    elif suffix == ".png":
        img = render.overlay(image, exp.map, norm="signed" if exp.signed else "minmax", box=cap.box)
        path.write_bytes(render.to_png_bytes(img))
    else:
        raise UsageError(f"--out must end in .npy or .png, got '{path.name}'.")


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
        "pooling": cap.pooling,               # what the "output" query reads (adapters/pooling.py)
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
    from .images import load_path
    t0 = time.perf_counter()
    image = load_path(args.image)
    params = _method_params(args)
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
    timings = {"image": t_load - t0, "model_load": t_model - t_load, **timings,
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
    from tqdm import tqdm
    from .images import ImageRejected, load_path
    folder, out = Path(args.folder), Path(args.out_dir)
    if not folder.is_dir():
        from .errors import UsageError
        raise UsageError(f"'{folder}' is not a folder.")
    if out.resolve() == folder.resolve():
        from .errors import UsageError
        raise UsageError("--out-dir must be another folder than the images (the maps would overwrite them).")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    params = _method_params(args)
    adapter = _load(args)
    out.mkdir(parents=True, exist_ok=True)
    rejected = 0
    checked: list[dict] = []
    with open(out / "results.jsonl", "w") as log:
        for path in tqdm(files, unit="image", file=sys.stderr):
            try:
                image = load_path(path)
            except ImageRejected as e:
                rejected += 1
                log.write(json.dumps({"file": path.name, "error": str(e)}) + "\n")
                continue
            t0 = time.perf_counter()
            cap, exp, timings, checks = _explain_one(adapter, image, args, params)
            # named after the whole file name: a.jpg and a.png are two images, two sets of maps
            _write_out(out / f"{path.name}.npy", image, cap, exp)
            _write_out(out / f"{path.name}.png", image, cap, exp)
            timings["total"] = time.perf_counter() - t0
            log.write(json.dumps({"file": path.name, **_record(adapter, cap, exp, timings), **checks}) + "\n")
            if "faithfulness" in checks:
                checked.append(checks["faithfulness"])
    print(f"{len(files) - rejected} explained, {rejected} rejected; results in {out / 'results.jsonl'}", file=sys.stderr)
    if checked:
        print(_faithfulness_line(checked), file=sys.stderr)
    return EXIT_OK if rejected == 0 else EXIT_IMAGE


def _faithfulness_line(checked: list[dict]) -> str:
    """One line over a folder: mean AUCs and how often the map beat its random order."""
    n = len(checked)
    mean = {k: sum(c[k] for c in checked) / n for k in ("deletion_auc", "random_deletion_auc", "insertion_auc",
                                                         "random_insertion_auc")}
    beat_del = sum(c["deletion_auc"] < c["random_deletion_auc"] for c in checked)
    beat_ins = sum(c["insertion_auc"] > c["random_insertion_auc"] for c in checked)
    return (f"faithfulness over {n} images: deletion AUC {mean['deletion_auc']:.4g} (random "
            f"{mean['random_deletion_auc']:.4g}), insertion AUC {mean['insertion_auc']:.4g} (random "
            f"{mean['random_insertion_auc']:.4g}); the map beat random on deletion in {beat_del}/{n}, "
            f"on insertion in {beat_ins}/{n}")


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
    from .errors import ModelUnavailable, UsageError
    from .images import ImageRejected
    if args.command != "models":     # `models` never loads torch or transformers: it answers at once
        _quiet_libraries()
    try:
        if args.command == "explain":
            return cmd_explain(args)
        if args.command == "batch":
            return cmd_batch(args)
        if args.command == "models":
            return cmd_models(args)
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
