"""One forward for several images: per-image captures from a batched forward.

A vision transformer in eval mode treats each image of a batch on its own
(LayerNorm is per token, attention stays inside an image), so a batch of B
prepared inputs of one size gives, image by image, the same attentions and
scores as B separate forwards, in one pass. The per-image captures it
returns are ordinary :class:`~attnviz.types.Capture` objects: every method
runs on them unchanged.

Per-image gradients come from ONE backward per target rank: because image i's
score depends only on image i's attentions, ``d(Σ_i score_i[t_i]) / dA`` has
``d score_i[t_i] / dA_i`` in row i (``grads_for_batch``; a test checks this
against per-image backwards).

Families whose forward depends on the pixels alone (no per-image prompt or caption) run batched here:
those whose adapter says ``batches_images`` (ViT-family classifiers and backbones, Swin). A Swin block's
window attentions come batched as ``[B · n_windows, H, S, S]`` (transformers' window partition puts image
i's windows in rows i·n_windows …), so image i's capture holds its own rows and its gradients are those rows
of the batch's. Others are captured one image at a time by the adapter itself.
"""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from ..precision import kept
from ..types import Capture

def batchable(adapter) -> bool:
    return bool(getattr(adapter, "batches_images", False))


def _rows(name: str, t: torch.Tensor, n_images: int, i: int) -> torch.Tensor:
    """Image ``i``'s part of a batch tensor: ``attentions`` [B, H, T, T] -> [H, T, T]; a row extra
    [B · k, ...] -> [k, ...]."""
    return t[i] if name == "attentions" else t.unflatten(0, (n_images, -1))[i]


class CaptureBatch(list):
    """The per-image captures of one batched forward (a list, row ``i`` is ``self[i]``), and the batch's own
    attention tensors, L × [B, H, T, T] detached: the captures' attentions are their rows, so a method that
    runs on the whole batch (``engine/attention.py``) reads them without stacking B images again."""

    def __init__(self, caps: Sequence[Capture], attentions: tuple[torch.Tensor, ...]):
        super().__init__(caps)
        self.attentions = attentions


def capture_batch(adapter, inputs: Sequence[dict[str, Any]], *, grads: bool = False) -> list[Capture]:
    """Captures of several prepared images of the same input size from one forward: a
    :class:`CaptureBatch` for a batched family, else a list of the adapter's own captures.

    ``grads``: keep the batch's graph so that :func:`grads_for_batch` (or a capture's own
    ``attention_grads``) can take gradients to every layer's attention.
    """
    if not batchable(adapter) or adapter.rows_path(adapter.layout(inputs[0]).n_tokens):
        # the chunked path (large inputs) captures one image at a time: no [B, H, T, T] to share
        return [adapter.capture(inp, grads=grads) for inp in inputs]
    pixel_values = torch.cat([inp["pixel_values"] for inp in inputs]).to(adapter.device)   # [B, C, H, W]
    n = len(inputs)
    with torch.set_grad_enabled(grads), adapter.lock:
        # The weights are frozen: without an input that requires grad there would be no graph at all.
        x = pixel_values.detach().clone().requires_grad_(grads)
        scores, attentions, extras = adapter.run(inputs[0], x, attentions=True,
                                                 reduced=adapter.reduced_for(adapter.layout(inputs[0]).n_tokens))
    attentions = tuple(attentions or ())
    readout = extras.pop("readout", None)                                  # [B, T] when the forward measured it
    wrt = {"attentions": attentions} if attentions else {}
    wrt.update(extras.pop("grad_wrt", {}))
    shared = {k: extras.pop(k) for k in adapter.batch_shared_extras if k in extras}
    rows = {k: extras.pop(k) for k in adapter.batch_row_extras if k in extras}
    if extras:
        raise RuntimeError(f"{adapter.family} forwards return per-image extras ({', '.join(extras)}); "
                           "they cannot be captured in a batch.")
    if "attentions" in adapter.provides:          # the images share one size, so one layout checks them all
        adapter._check_attentions(attentions, adapter.layout(inputs[0]), shared)
    batch_attentions = tuple(kept(a) for a in attentions)                  # L × [B, H, T, T] float32, out of the graph
    caps = []
    for i, inp in enumerate(inputs):
        layout = adapter.layout(inp)
        s = scores[i].detach()                                            # [n_targets]
        own = {k: tuple(kept(_rows(k, t, n, i)) for t in v) for k, v in rows.items()}
        caps.append(Capture(
            scores=s,
            attentions=tuple(a[i] for a in batch_attentions),              # L × [H, T, T]
            layout=layout, inputs=inp, targets=adapter._targets(inp, s), box=inp.get("box"),
            extras={**shared, **own},
            readout=kept(readout[i]) if readout is not None else adapter.readout(layout),
            pooling=adapter.pooling,
            _grad_fn=_ImageGrads(scores, wrt, i, n) if grads else None,
        ))
    return CaptureBatch(caps, batch_attentions)


class _ImageGrads:
    """A capture's own gradient function: a backward through the batch's graph for image ``i`` only.

    It also names the batch's graph, so :func:`grads_for_batch` can serve several images in one backward.
    """

    def __init__(self, scores: torch.Tensor, wrt: dict[str, tuple[torch.Tensor, ...]], i: int, n_images: int):
        self.scores, self.wrt, self.i, self.n = scores, wrt, i, n_images   # [B, n_targets], name -> batch tensors
        self.flat = tuple(t for v in wrt.values() for t in v)

    def split(self, gs: Sequence[torch.Tensor], i: int) -> dict[str, tuple[torch.Tensor, ...]]:
        """The batch's gradients (in ``flat`` order) -> image ``i``'s, by name."""
        out, k = {}, 0
        for name, v in self.wrt.items():
            out[name] = tuple(kept(_rows(name, g, self.n, i)) for g in gs[k:k + len(v)])
            k += len(v)
        return out

    def __call__(self, t: int) -> dict[str, tuple[torch.Tensor, ...]]:
        return self.split(torch.autograd.grad(self.scores[self.i, t], self.flat, retain_graph=True), self.i)


def grads_for_batch(caps: Sequence[Capture], targets: Sequence[int], *,
                    last: bool = False) -> Optional[tuple[torch.Tensor, ...]]:
    """Fill each capture's gradient cache for its target with ONE backward over the whole batch.

    ``targets[i]`` is image i's target index. Captures from one :func:`capture_batch` call with
    ``grads=True`` share one backward; any others (any family's, made with gradients) get their own.
    Gradients already cached stay.

    Returns that backward's attention gradients, L × [B, H, T, T] over the batch's rows (each capture's are
    its row, ``caps[i]._grad_fn.i``), when every capture's came from it and the family has plain attentions;
    else None.

    ``last``: no other backward will run through this batch's graph, so autograd frees each saved tensor
    as soon as its step is done (the gradients then reuse that memory instead of new pages) and the
    captures' graph is released.
    """
    todo = [i for i, (c, t) in enumerate(zip(caps, targets)) if t not in c._grads]
    fns = [caps[i]._grad_fn for i in todo]
    batch = fns[0] if fns and isinstance(fns[0], _ImageGrads) else None
    if batch is None or any(not isinstance(f, _ImageGrads) or f.scores is not batch.scores for f in fns):
        for i in todo:
            # one backward per image, to every tensor its family differentiates (Swin's are "windows")
            with caps[i]._grad_lock:
                if targets[i] not in caps[i]._grads:
                    caps[i]._grads[targets[i]] = caps[i]._grad_fn(targets[i])
        return None
    rows = torch.tensor([f.i for f in fns])
    cols = torch.tensor([targets[i] for i in todo])
    total = batch.scores[rows, cols].sum()                       # images are independent: Σ_i s_i[t_i]
    gs = torch.autograd.grad(total, batch.flat, retain_graph=not last)   # every tensor of the batch's graph
    for i, f in zip(todo, fns):
        with caps[i]._grad_lock:
            caps[i]._grads[targets[i]] = batch.split(gs, f.i)
    if last:
        for c in caps:
            c.release_graph()
    if len(todo) != len(caps) or "attentions" not in batch.wrt:
        return None
    return tuple(kept(g) for g in gs[:len(batch.wrt["attentions"])])           # L × [B, H, T, T]
