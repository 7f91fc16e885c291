"""Ask the image: explain one word of a vision-language model's answer (library call and the CLI's
``explain --question`` path).

``ask(adapter, image, question, answer=None)`` captures once (the model answers greedily when no answer is
given); ``explain_word`` maps one answer token with any VLM method (generic names such as ``relevance`` or
``saliency`` are accepted, ``methods.vlm.VLM_NAMES``); ``record`` is the CLI's JSON.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any, Optional

from .errors import UsageError
from .methods.registry import explain
from .methods.vlm import vlm_method
from .types import Capture, Explanation

DEFAULT_METHOD = "answer_relevance"


def ask(adapter, image, question: str, answer: Optional[str] = None, *, max_new_tokens: Optional[int] = None,
        grads: bool = True) -> Capture:
    if getattr(adapter, "family", None) != "vlm":
        raise UsageError(f"{adapter.name} does not answer questions; --question needs a vision-language model "
                         "(LLaVA, PaliGemma, Qwen2-VL, Idefics3 / SmolVLM).")
    return adapter.capture(adapter.prepare(image, question=question, answer=answer, max_new_tokens=max_new_tokens),
                           grads=grads)


def explain_word(adapter, capture: Capture, method: str = DEFAULT_METHOD, target: Any = None, **params) -> Explanation:
    return explain(adapter, capture, vlm_method(method), target, **params)


def record(adapter, capture: Capture, exp: Explanation, timings: dict[str, float]) -> dict[str, Any]:
    tgt = exp.target or adapter.resolve_target(capture, None)
    return {"model": adapter.name, "method": exp.method,
            "target": {"index": tgt.index, "label": tgt.label, "kind": tgt.kind},
            "score": float(capture.scores[tgt.index]),
            "probability": float(adapter.probabilities(capture)[tgt.index]),
            "map_shape": list(exp.map.shape), "over": exp.over, "signed": exp.signed, "params": exp.params,
            "meta": {k: v for k, v in exp.meta.items() if k != "seconds"},
            **adapter.answer_record(capture),
            "notes": list(capture.extras.get("notes", [])),
            "timings": {k: round(v, 4) for k, v in timings.items()}}


def _write(path: Path, image, capture: Capture, exp: Explanation) -> None:
    """``.npy``: the map on the image-token canvas (a tiled input's tiles in place); views shown beside it
    (Idefics3's global view) go to ``<stem>.<view>.npy``. ``.png``: the overlay on the original image."""
    import numpy as np
    from . import render
    suffix = path.suffix.lower()
    if suffix == ".npy":
        np.save(path, exp.map.astype("float32"))
        for name, m in exp.meta.get("beside", {}).items():
            np.save(path.with_name(f"{path.stem}.{name.replace(' ', '_')}.npy"), np.asarray(m, dtype="float32"))
    elif exp.over == "tokens":
        raise UsageError("A map over the question's tokens has no image overlay; use --out x.npy or --json.")
    else:
        img = render.overlay(image, exp.map, norm="signed" if exp.signed else "minmax", box=capture.box)
        path.write_bytes(render.to_png_bytes(img))


def cmd_ask(args, load, params: dict[str, str]) -> int:
    """``explain IMAGE --question Q [--answer A]``: one answer word's map; ``load(args)`` gives the adapter,
    ``params`` are the --param pairs."""
    from .images import load_path
    t0 = time.perf_counter()
    if not args.question:
        raise UsageError("--answer needs a --question.")
    if args.out and Path(args.out).suffix.lower() not in (".npy", ".png"):
        raise UsageError(f"--out must end in .npy or .png, got '{Path(args.out).name}'.")
    if args.out and not Path(args.out).resolve().parent.is_dir():
        raise UsageError(f"--out: the folder '{Path(args.out).parent}' does not exist.")
    image = load_path(args.image)
    # the parser's default method is the ViTs' rollout; a VLM's default is relevance on the answer word
    method = DEFAULT_METHOD if args.method == "rollout" else vlm_method(args.method)
    from .methods import get_method
    spec = get_method(method)
    params = dict(params)
    if "layer" in params and method == "image_attention":     # --param layer=mean, as the ViT methods spell it
        params["decoder_layer"] = params.pop("layer")
    for flag, name in (("layer", "decoder_layer"), ("head", "head")):
        if getattr(args, flag) is not None:
            if name not in [p.name for p in spec.params]:
                raise UsageError(f"Method '{method}' has no --{flag}.")
            params[name] = str(getattr(args, flag))
    t1 = time.perf_counter()
    adapter = load(args)
    t2 = time.perf_counter()
    cap = ask(adapter, image, args.question, args.answer, grads=True)
    t3 = time.perf_counter()
    exp = explain_word(adapter, cap, method, args.target, **params)
    t4 = time.perf_counter()
    if args.out:
        _write(Path(args.out), image, cap, exp)
    rec = record(adapter, cap, exp, {"image": t1 - t0, "model_load": t2 - t1, "capture": t3 - t2, "method": t4 - t3,
                                     "total": time.perf_counter() - t0})
    for note in rec["notes"]:
        print(f"attnviz: {note}", file=sys.stderr)
    if args.json:
        print(json.dumps(rec))
    else:
        t = rec["target"]
        print(f"answer: {rec['answer']}")
        print(f"{rec['model']} · {rec['method']} · word {t['index']} ('{t['label']}', p {rec['probability']:.3g}) · "
              f"map {'×'.join(map(str, rec['map_shape']))} over {rec['over']} · {rec['timings']['total']:.2f} s")
    return 0
