"""Small data types shared by adapters, methods, render and the UI.

Convention: batch dimension is squeezed away once a capture is made; every
tensor stored here is for ONE image.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch


@dataclass(frozen=True)
class TokenLayout:
    """Where each token of a vision transformer's sequence comes from.

    The sequence is ``prefix_names`` (CLS, distillation, register tokens, in
    model order) followed by ``rows * cols`` patch tokens in row-major order.
    ``input_size`` is the (height, width) of the tensor the model saw and
    ``patch_size`` its (height, width) patch.
    """

    prefix_names: tuple[str, ...]
    rows: int
    cols: int
    patch_size: tuple[int, int]
    input_size: tuple[int, int]

    @property
    def n_prefix(self) -> int:
        return len(self.prefix_names)

    @property
    def n_patches(self) -> int:
        return self.rows * self.cols

    @property
    def n_tokens(self) -> int:
        return self.n_prefix + self.n_patches

    def patch_token(self, row: int, col: int) -> int:
        """Sequence index of the patch at (row, col)."""
        if not (0 <= row < self.rows and 0 <= col < self.cols):
            from .errors import UsageError
            raise UsageError(f"Patch ({row}, {col}) is outside the {self.rows}×{self.cols} grid.")
        return self.n_prefix + row * self.cols + col

    def token_name(self, index: int) -> str:
        if index < self.n_prefix:
            return self.prefix_names[index]
        r, c = divmod(index - self.n_prefix, self.cols)
        return f"patch({r},{c})"

    def footprint(self, box: Optional[Sequence[float]], image_size: tuple[int, int]) -> tuple[float, float, float, float]:
        """Where the grid's cells lie on the original image, as (left, top, right, bottom).

        ``box``: the part of an image of ``image_size = (width, height)`` the model saw (None: all of
        it), which the input tensor fills. A cell is ``patch_size`` input pixels, so the grid reaches
        past the input where a CNN's ⌈H / stride⌉ cells overhang it (the last cell holds fewer real
        pixels) and falls short where a ViT leaves rows unread: the box scaled by
        rows·patch / H and cols·patch / W from its top-left corner."""
        left, top, right, bottom = box if box is not None else (0, 0, image_size[0], image_size[1])
        h, w = self.input_size
        ph, pw = self.patch_size
        return (left, top, left + (right - left) * self.cols * pw / w, top + (bottom - top) * self.rows * ph / h)

    def to_grid(self, per_token: torch.Tensor | np.ndarray) -> np.ndarray:
        """Patch part of a per-token vector as a float32 [rows, cols] grid."""
        v = per_token.detach().float().cpu().numpy() if isinstance(per_token, torch.Tensor) else np.asarray(per_token)
        if v.shape[-1] != self.n_tokens:
            raise ValueError(f"Expected {self.n_tokens} tokens, got {v.shape[-1]}.")
        return v[..., self.n_prefix:].reshape(*v.shape[:-1], self.rows, self.cols).astype(np.float32)  # [..., rows, cols]


@dataclass(frozen=True)
class Target:
    """What an explanation is for: a class, a text prompt, a caption token, or an embedding."""

    index: int
    label: str
    kind: str  # "class" | "prompt" | "token" | "embedding"
    score: float = float("nan")


@dataclass(frozen=True)
class Gate:
    """One attention gate of a convolutional block, as it fired for one image.

    Channel gates (squeeze-and-excitation, Hu et al. 2018; ECA, Wang et al. 2020; CBAM's channel half,
    Woo et al. 2018) scale each channel of a feature map by ``value[c]`` in [0, 1]; a spatial gate
    (CBAM's spatial half) scales each location by ``value[i, j]``. ``features`` is the map the gate
    multiplies (channel gates: ``[C, h, w]``, the block's own features before the gate), on ``grid``.
    """

    index: int                  # order in the forward pass
    name: str                   # the gate module's path in the model
    kind: str                   # "channel" | "spatial"
    module: str                 # "SE" | "ECA" | "CBAM"
    stage: int                  # the stage the block belongs to
    value: torch.Tensor         # channel: [C]; spatial: [h, w]; in [0, 1]
    grid: TokenLayout           # the gated feature map's h×w grid and stride
    features: Optional[torch.Tensor] = None   # channel gates: [C, h, w] the map the gate scales


@dataclass
class Capture:
    """Everything one forward pass left behind for one image.

    ``attentions[l]`` is layer l's post-softmax attention, ``[H, T, T]``.
    ``scores`` are the per-target scalars a method may explain (class logits,
    prompt similarities, caption-token log-probs). Gradients of a target's
    score w.r.t. every layer's attention come from ``attention_grads`` and are
    computed once per target (one backward) and cached; the same backward
    fills ``grads(target, key)`` for any other tensors the adapter listed
    (e.g. a text tower's attentions).

    ``readout`` ([T]) says how the model's output reads the final tokens: a
    one-hot on CLS for most ViTs, half CLS / half distillation token for
    distilled DeiT, 1/N on each patch for mean pooling (BEiT), half CLS and
    half patch mean for DINOv2's classifier, the attention-pooling weights for
    SigLIP (``pooling`` names which; see ``tokens/readout.py``). Methods read
    their map as ``readout @ M`` when the query is "output".

    A convolutional network has no attention weights (``attentions`` is empty):
    its capture holds each stage's feature map (``stages[s]``, ``[C, h, w]``, in
    forward order; ``grads(t, "stages")`` their gradients), each stage's grid
    (``stage_grids[s]``: rows × cols and the stride, a ``TokenLayout`` without
    prefix tokens) and its gates (SE / ECA excitations, CBAM spatial maps).
    ``layout`` is then the last stage's grid, the one its pooling reads.
    """

    scores: torch.Tensor                 # [n_targets]
    attentions: tuple[torch.Tensor, ...]  # L × [H, T, T], detached
    layout: TokenLayout
    inputs: dict[str, torch.Tensor]
    targets: tuple[Target, ...]
    box: Optional[tuple[int, int, int, int]] = None  # crop of the original image the model saw
    cross_attentions: Optional[tuple[torch.Tensor, ...]] = None  # L × [H, Q, T_image]
    extras: dict[str, Any] = field(default_factory=dict)
    readout: Optional[torch.Tensor] = None                               # [T]
    pooling: str = "cls"                 # how the output reads the final tokens (tokens/readout.py)
    stages: tuple[torch.Tensor, ...] = ()           # CNNs: S × [C, h, w] stage outputs, detached
    stage_grids: tuple[TokenLayout, ...] = ()       # CNNs: S stage grids (rows, cols, stride as patch_size)
    gates: tuple[Gate, ...] = ()                    # CNNs: channel / spatial gates in forward order
    _grad_fn: Optional[Callable[[int], dict[str, tuple[torch.Tensor, ...]]]] = field(default=None, repr=False)
    _grads: dict[int, dict[str, tuple[torch.Tensor, ...]]] = field(default_factory=dict, repr=False)
    # Sessions sharing a capture take turns for a backward through its retained graph.
    _grad_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def n_layers(self) -> int:
        """What a layer index counts: attention layers of a transformer (Swin: its windowed blocks across
        every stage, ``extras["windows"]``), stages of a CNN."""
        return len(self.attentions) or len(self.extras.get("windows", ())) or len(self.stages)

    @property
    def n_heads(self) -> int:
        return self.attentions[0].shape[0] if self.attentions else 0

    def grads(self, target: int, key: str = "attentions") -> tuple[torch.Tensor, ...]:
        """d score[target] / d tensors named ``key`` (one backward per target, cached)."""
        with self._grad_lock:
            if target not in self._grads:
                if self._grad_fn is None:
                    raise RuntimeError("This capture was made without gradients.")
                self._grads[target] = self._grad_fn(target)
        return self._grads[target][key]

    def map_box(self, shape: Sequence[int], image_size: tuple[int, int], over: str = "patches"
                ) -> Optional[tuple[int, int, int, int]]:
        """The box to lay a map of ``shape`` on the original image with (``render.overlay``'s ``box``):
        a CNN's grid map where its cells truly lie (:meth:`TokenLayout.footprint` of the stage grid of
        that shape), else the part of the image the model saw (``box``; None: all)."""
        if over != "patches" or not self.stage_grids:
            return self.box
        for grid in self.stage_grids:
            if (grid.rows, grid.cols) == tuple(shape):
                if (grid.rows * grid.patch_size[0], grid.cols * grid.patch_size[1]) == tuple(grid.input_size):
                    return self.box                                       # the cells fill the input exactly
                return tuple(int(round(v)) for v in grid.footprint(self.box, image_size))  # type: ignore[return-value]
        return self.box

    def attention_grads(self, target: int) -> tuple[torch.Tensor, ...]:
        """d score[target] / d attentions[l], L × [H, T, T]."""
        return self.grads(target, "attentions")

    def release_graph(self) -> None:
        """Drop the autograd graph (memory); gradients already computed stay cached."""
        self._grad_fn = None

    def nbytes(self) -> int:
        """Bytes of the tensors this capture holds (attentions, gradients computed so far, stages, extras,
        inputs; each storage once). An autograd graph a gradient function may still keep is not counted: a
        cache bounded by this should also bound its entries (``ui.cache.ResultCache``)."""
        seen: set[int] = set()
        objects: set[int] = set()
        total = 0
        todo: list[Any] = [self.scores, self.attentions, self.cross_attentions, self.inputs, self.readout,
                           self.stages, self.extras, self._grads]
        while todo:
            x = todo.pop()
            if isinstance(x, torch.Tensor):
                st = x.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
            elif isinstance(x, dict):
                todo.extend(x.values())
            elif isinstance(x, (list, tuple)):
                todo.extend(x)
            elif hasattr(x, "__dataclass_fields__") and id(x) not in objects:
                objects.add(id(x))      # e.g. the chunked path's per-layer ``QK`` rows (q, k, v, lse, bias)
                todo.extend(getattr(x, f, None) for f in x.__dataclass_fields__)
        return total


@dataclass(frozen=True)
class Explanation:
    """A raw map plus what it is over and how to read it.

    ``over`` is "patches" (``map`` is [rows, cols] over the token grid) or
    "pixels" ([H, W] of the model input), "tokens" (prompt tokens) or
    "channels" (one value per channel of a block). ``signed`` says whether negative
    values carry meaning (evidence against); otherwise the map is >= 0.
    ``grid`` is the geometry of a patch map that is not over the capture's
    ``layout`` (a CNN stage other than the last); None means ``layout``.
    """

    map: np.ndarray
    over: str
    signed: bool
    method: str
    target: Optional[Target]
    params: dict[str, Any]
    meta: dict[str, Any] = field(default_factory=dict)
    grid: Optional[TokenLayout] = None
