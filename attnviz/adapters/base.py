"""The ModelAdapter protocol and the registry of model families.

An adapter turns one family of Hugging Face models into the same few calls:
``prepare`` an image, ``capture`` one forward (attentions + per-target
scores, gradients on demand), list ``targets``, and ``forward_scores`` for
Captum. A new family is one file that subclasses ``ModelAdapter`` and is
decorated with ``@register_adapter``.

What a model gives the methods is declared, not inferred from its family name:
``provides`` (per model) names what its captures hold, from
``methods.registry.NEEDS``: "attentions" for transformers; "stages" (feature
maps), and "channel_gates" / "spatial_gates" where it has SE / ECA / CBAM
blocks, for CNNs. A method lists what it needs; the registry refuses a method
whose needs a model does not provide, in one sentence.
"""
from __future__ import annotations

import inspect
import os
import threading
from contextlib import nullcontext
from typing import Any, Callable, ClassVar, Collection, Optional, Sequence

import torch
from PIL import Image

from .. import precision
from ..errors import ModelUnavailable, UsageError
from ..tokens.budget import Cost, checkpointed_layers, dense_cost, largest_square
from ..tokens.chunked import QK
from ..tokens.geometry import MAX_PATCHES, MAX_ROWS_PATCHES, rounded_size
from ..tokens.readout import READS_PATCHES, static_readout
from ..types import Capture, Target, TokenLayout
from .fast_attention import (NAME as FAST_EAGER, Recorder, install_checkpointing, recording, scores_only,
                             use_fast_eager)

ADAPTERS: dict[str, type["ModelAdapter"]] = {}


def register_adapter(cls: type["ModelAdapter"]) -> type["ModelAdapter"]:
    """Class decorator: make a family loadable by ``load_model``."""
    ADAPTERS[cls.family] = cls
    return cls


def adapter_for_config(config) -> type["ModelAdapter"]:
    for cls in ADAPTERS.values():
        if cls.matches(config):
            return cls
    arch = ", ".join(getattr(config, "architectures", None) or [config.model_type])
    raise ModelUnavailable(f"attnviz does not support this model family yet ({arch}).")


def pick_device() -> torch.device:
    """CUDA, then Apple MPS, then CPU; ATTNVIZ_DEVICE overrides."""
    forced = os.environ.get("ATTNVIZ_DEVICE")
    if forced:
        return torch.device(forced)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def config_names(config, architectures: Collection[str], model_types: Collection[str]) -> bool:
    """Whether a config names one of ``architectures`` (or, naming none, one of ``model_types``)."""
    archs = getattr(config, "architectures", None) or []
    return bool(set(archs) & set(architectures)) or (not archs and config.model_type in model_types)


def accepts_kwarg(fn: Callable, name: str) -> bool:
    return name in inspect.signature(fn).parameters


def class_targets(config, scores: torch.Tensor) -> tuple[Target, ...]:
    """One target per class of a classification head, labelled from the config's ``id2label``."""
    labels = config.id2label
    return tuple(Target(i, str(labels.get(i, i)), "class", float(s)) for i, s in enumerate(scores.tolist()))


def class_probabilities(scores: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """[B, classes] probabilities of a classification head: sigmoid for a multi-label one, else softmax."""
    return torch.sigmoid(scores) if multi_label else torch.softmax(scores, -1)


#: Gradients whose leading batch dimension (one image) a capture drops, like the tensors it keeps.
_PER_IMAGE = ("attentions", "stages", "head_outputs")

#: Attention paths a capture can take: "full" keeps every layer's [H, T, T] weights (``output_attentions``);
#: "rows" runs SDPA and keeps q, k (v, head outputs) per layer, O(T·d) (``tokens/chunked.py``); "auto"
#: takes "rows" from :data:`ROWS_FROM_TOKENS` tokens on, where the family and its attention allow it.
ATTENTION_PATHS = ("auto", "full", "rows")

#: From this many tokens "auto" captures rows. Measured in CPU time on DINOv2-S (``highres_probe``
#: with path "full" / "rows"): the chunked rollout is faster from about 577 tokens, the chunked relevance
#: 1.2–1.4× slower up to 1,025 (its checkpointed backward recomputes each block) but without the full path's
#: 3·H·T² floats per layer; below 1,024 tokens that memory is small, so the faster full path is kept.
ROWS_FROM_TOKENS = 1024


def _detached(v: Any) -> Any:
    """A capture's extra out of the graph: a tensor or a tuple of tensors detached (float32 if the pass was
    in half precision: ``precision.kept``), anything else as it is."""
    if isinstance(v, torch.Tensor):
        return precision.kept(v)
    if isinstance(v, tuple) and all(isinstance(x, torch.Tensor) for x in v):
        return tuple(precision.kept(x) for x in v)
    return v


def _grad_function(scores: torch.Tensor, wrt: dict[str, tuple[torch.Tensor, ...]]):
    """``t -> {name: d scores[t] / d tensors}``: one backward through the retained graph per target."""
    def grad_fn(t: int):
        if not 0 <= t < scores.shape[0]:
            raise UsageError(f"Target {t} is out of range (0–{scores.shape[0] - 1}).")
        names = list(wrt)
        flat = [x for n in names for x in wrt[n]]
        gs = torch.autograd.grad(scores[t], flat, retain_graph=True, allow_unused=True)
        out, i = {}, 0
        for n in names:
            k = len(wrt[n])
            got = tuple(precision.kept(torch.zeros_like(x) if g is None else g) for x, g in zip(wrt[n], gs[i:i + k]))
            out[n] = tuple(g[0] for g in got) if n in _PER_IMAGE else got   # image batch of 1
            i += k
        return out
    return grad_fn


class ModelAdapter:
    """Base class of every family. Subclasses fill in the ``_``-methods."""

    family: ClassVar[str] = "base"
    task: ClassVar[str] = ""
    #: What every model of the family gives a method (keys of ``methods.registry.NEEDS``) ...
    PROVIDES: ClassVar[frozenset] = frozenset({"pixels", "attentions"})
    #: ... and what some of its models do (listing a family's methods without a model in hand).
    MAY_PROVIDE: ClassVar[frozenset] = frozenset()
    #: Whether two threads may run this adapter's forward (and backward) on the one model at once: true
    #: when the forward keeps no state on shared modules (its hooks act only for their own thread:
    #: ``hooks.this_thread``). The app then serves that many sessions side by side (``queue.TurnLock``
    #: lanes); tests/test_lanes.py checks every family that says so against a serial run.
    concurrent_forwards: ClassVar[bool] = True
    #: whether several images of one size can share a forward (``engine/capture.capture_batch``): the
    #: forward reads nothing per image but the pixels, and its extras are shared by every image of the
    #: batch (``batch_shared_extras``) or hold each image's rows in turn (``batch_row_extras``: tensors
    #: whose first dimension is B × k, image i's rows i·k … (i+1)·k − 1, as transformers' window partition
    #: orders them)
    batches_images: ClassVar[bool] = False
    batch_shared_extras: ClassVar[tuple[str, ...]] = ()
    batch_row_extras: ClassVar[tuple[str, ...]] = ()
    #: Whether the family's attention views may run on the chunked path: its capture's attentions are
    #: dense self-attention layers of the tower the views read, each through ``fast_eager``.
    ROWS_CAPTURE: ClassVar[bool] = False
    #: Whether the model's passes may run in a reduced ``precision`` (``ATTNVIZ_PRECISION=bfloat16``): false
    #: for families whose output is generated text (the map must explain the tokens ``generate`` gave).
    REDUCED_PRECISION: ClassVar[bool] = True
    #: Whether a pass that returns attention weights holds each layer's dense [H, T, T] over the layout's T
    #: tokens (false: Swin's windows, a CNN's gates): what ``precision.MAX_TOKENS`` limits.
    DENSE_ATTENTION: ClassVar[bool] = True

    def __init__(self, model: torch.nn.Module, processor: Any, *, name: str, source: str,
                 device: Optional[torch.device] = None):
        self.device = device or pick_device()
        self.model = model.to(self.device).eval()
        # Only inputs need gradients (Captum, attention grads); frozen weights skip weight grads.
        self.model.requires_grad_(False)
        # Eager attention (weights returned) in fewer passes, where it is provably the model's own arithmetic.
        use_fast_eager(self.model)
        self.processor = processor
        self.name = name
        self.source = source
        # One model serves every app session: forwards take turns (the app swaps in a queue.TurnLock with
        # up to ATTNVIZ_MODEL_LANES at once where concurrent_forwards allows), one batch at a time, so a
        # long method (IG, occlusion) never holds the model longer than one batch.
        self.lock = threading.RLock()
        #: "auto", "full" or "rows" (``ATTENTION_PATHS``); ATTNVIZ_ATTENTION_PATH sets the default.
        self.attention_path = os.environ.get("ATTNVIZ_ATTENTION_PATH", "auto")
        #: On the chunked path with gradients, checkpoint token blocks (``fast_attention.checkpointed``): the
        #: backward recomputes a checkpointed block instead of keeping its activations. "auto": the lowest
        #: blocks, as many as ``budget.checkpointed_layers`` says the size needs; True: every block; False: none.
        #: ATTNVIZ_CHECKPOINT=0 / 1 / auto (the default).
        env = os.environ.get("ATTNVIZ_CHECKPOINT", "auto").strip().lower()
        self.checkpoint_blocks = {"0": False, "1": True}.get(env, "auto")
        #: The dtype the model's passes compute in (``attnviz.precision``; ATTNVIZ_PRECISION, float32 unless
        #: set); a capture keeps float32 either way. Families with ``REDUCED_PRECISION`` false stay float32.
        self.precision = precision.from_env() if self.REDUCED_PRECISION else torch.float32

    @property
    def precision(self) -> torch.dtype:
        return self._precision

    @precision.setter
    def precision(self, dtype: torch.dtype) -> None:
        self._precision = precision.parse(dtype)
        if self._precision != torch.float32:
            precision.shadow(self.model)          # half-precision weight copies, made once (precision.py)

    # --- family hooks -------------------------------------------------
    @classmethod
    def matches(cls, config) -> bool:
        raise NotImplementedError

    @classmethod
    def load(cls, source: str, config, *, name: str, local_only: bool = False) -> "ModelAdapter":
        raise NotImplementedError

    @classmethod
    def tiny(cls, **kwargs) -> "ModelAdapter":
        """A random 2-layer model of this family, for tests."""
        raise NotImplementedError

    def prepare(self, image: Image.Image, *, texts: Optional[Sequence[str]] = None,
                size: Optional[tuple[int, int]] = None) -> dict[str, Any]:
        raise NotImplementedError

    def _run(self, inputs: dict[str, Any], pixel_values: torch.Tensor, *, attentions: bool):
        """One forward. Returns (scores [B, n_targets], attentions L×[B,H,T,T] or None, extras)."""
        raise NotImplementedError

    def reduced_for(self, n_tokens: int, *, recorded: bool = True) -> bool:
        """Whether a pass over ``n_tokens`` may run in the reduced ``precision``: up to ``precision.MAX_TOKENS``,
        and on the chunked path (``recorded``: a capture whose attention runs through the recorder's flash
        kernel, no T×T weights; its q, k, v and log-sum-exp are kept float32). Between the two, a pass that
        returns every layer's T×T weights stays float32: there the attention's T² work, not matrix products,
        is the cost, and bfloat16 keeps it twice (``precision.MAX_TOKENS``). Families without dense attention
        (``DENSE_ATTENTION`` false: Swin's windows, CNNs) at any size."""
        if not self.DENSE_ATTENTION:
            return True
        return n_tokens <= precision.MAX_TOKENS or (recorded and self.rows_path(n_tokens))

    def run(self, inputs: dict[str, Any], pixel_values: torch.Tensor, *, attentions: bool,
            reduced: bool = True):
        """``_run`` in the adapter's ``precision`` (``reduced=False``: float32 whatever it is): the scores come
        back float32; attentions and extras in the dtype the pass made them (still in the graph: their
        gradients are taken there), for the caller to keep with ``precision.kept``."""
        dtype = self.precision if reduced else torch.float32
        with precision.computing(self.device, dtype):
            scores, attentions, extras = self._run(inputs, pixel_values, attentions=attentions)
        return scores.float(), attentions, extras

    def layout(self, inputs: dict[str, Any]) -> TokenLayout:
        raise NotImplementedError

    def _targets(self, inputs: dict[str, Any], scores: torch.Tensor) -> tuple[Target, ...]:
        raise NotImplementedError

    def token_block(self, layer: int) -> torch.nn.Module:
        """The module whose output is the token sequence [B, T, D] after ``layer``."""
        raise NotImplementedError

    @property
    def pooling(self) -> str:
        """How the output reads the last block's tokens: a key of ``pooling.POOLINGS``, declared once
        per family (from the architecture and its config, never guessed from shapes)."""
        return "cls"

    @property
    def reads_last_patches(self) -> bool:
        """Whether the output reads patch tokens after the last block (mean or attention pooling
        does; CLS pooling does not, so Grad-CAM on that block would see zero gradients)."""
        return self.pooling in READS_PATCHES

    @property
    def provides(self) -> frozenset:
        """What this model's captures hold for the methods (``methods.registry.NEEDS``)."""
        return self.PROVIDES

    def block(self, layer: int) -> torch.nn.Module:
        """The module holding block ``layer``'s weights (what the randomisation check re-initialises):
        a transformer block here; a CNN's stage."""
        return self.token_block(layer)

    # --- shared machinery ---------------------------------------------
    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    def family_method_defaults(self, method: str) -> dict[str, Any]:
        """Parameter defaults this family prefers for ``method`` (over the registry's)."""
        return {}

    def method_defaults(self, method: str) -> dict[str, Any]:
        """Defaults that follow from the pooling, the family's, then what the checkpoint declares in its config.

        Grad-CAM and every other ``*_cam`` default to the last block when the output reads its patch tokens
        (mean or attention pooling), else to the block before (CLS pooling: the last block's patches never
        reach the score).

        A checkpoint may declare its own, e.g. ``"attnviz": {"method_defaults": {"relevance":
        {"start_layer": 0}}}`` in ``config.json`` (a shallow model whose early layers are not noise).
        Values still go through the method's parameter checks.
        """
        out = {"layer": -1 if self.reads_last_patches else -2} if method.endswith("_cam") else {}
        out.update(self.family_method_defaults(method))
        declared = getattr(getattr(self.model, "config", None), "attnviz", None)
        if isinstance(declared, dict):
            per_method = (declared.get("method_defaults") or {}).get(method) or {}
            if isinstance(per_method, dict):
                out.update({str(k): v for k, v in per_method.items()})
        return out

    def probabilities(self, capture: Capture) -> torch.Tensor:
        """Scores as probabilities for display (softmax unless the family says otherwise)."""
        return torch.softmax(capture.scores, dim=-1)

    def probabilities_from_scores(self, scores: torch.Tensor) -> Optional[torch.Tensor]:
        """[B, n_targets] probabilities from a batch of ``forward_scores``; None when the scores alone
        do not define one (a single softmax target would always be 1)."""
        return torch.softmax(scores, dim=-1) if scores.shape[-1] > 1 else None

    def forward_scores(self, pixel_values: torch.Tensor, inputs: dict[str, Any]) -> torch.Tensor:
        """[B, n_targets] scores for a batch of pixel tensors: the function Captum explains. Without autograd
        (perturbation metrics, occlusion, ablation, LIME, Score-CAM) ``fast_eager`` families run PyTorch's
        fused attention (``scores_only``); gradient methods keep the eager arithmetic their tests compare with."""
        with self.lock, (nullcontext() if torch.is_grad_enabled() else scores_only()):
            scores, _, _ = self.run(inputs, pixel_values, attentions=False)
        return scores

    def capture(self, inputs: dict[str, Any], *, grads: bool = True) -> Capture:
        """One forward with attentions (or a CNN's stage maps and gates); ``grads`` keeps the graph for
        per-target backward passes.

        ``_run`` returns the attentions of a transformer; a CNN returns none and lists in ``extras``
        its ``stages`` (S × [1, C, h, w], in the graph), ``stage_grids`` and ``gates``.
        """
        inputs = self.complete_inputs(inputs)
        pixel_values = inputs["pixel_values"].to(self.device)
        layout = self.layout(inputs)
        rec = None
        if self.rows_path(layout.n_tokens):
            blocks = [self.token_block(li) for li in range(self.checkpointed_layers(layout.n_tokens))] if grads else []
            install_checkpointing(blocks)
            rec = Recorder(self._attention_modules(), grads, blocks)
        with torch.set_grad_enabled(grads), self.lock, (recording(rec) if rec else nullcontext()):
            x = pixel_values.detach().clone().requires_grad_(grads)
            scores, attentions, extras = self.run(inputs, x, attentions=True, reduced=self.reduced_for(layout.n_tokens))
        if rec is not None:
            attentions, kept = self._recorded(rec, layout)
            grad_name = "head_outputs"                                 # L × [1, H, T, d]: ∇A = dO·Vᵀ
        else:
            attentions = tuple(attentions or ())
            kept = tuple(precision.kept(a[0]) for a in attentions)     # L × [H, T, T]
            grad_name = "attentions"
            if "attentions" in self.provides:
                self._check_attentions(attentions, layout, extras)
        stages = tuple(extras.pop("stages", ()))
        scores = scores[0]                                             # [n_targets]
        # Tensors to differentiate: every layer's [1, H, T, T] attention as the forward used it (on the
        # chunked path its [1, H, T, d] head output), or every stage's [1, C, h, w] feature map, plus
        # whatever else the family lists in extras["grad_wrt"].
        wrt = {k: v for k, v in ((grad_name, attentions), ("stages", stages)) if v}
        wrt.update(extras.pop("grad_wrt", {}))
        readout = extras.pop("readout", None)                          # [1, T] when the forward measured it
        cross = extras.pop("cross_attentions", None)                   # an encoder–decoder's L × [1, H, Q, T_image]
        stage_grids = tuple(extras.pop("stage_grids", ()))
        gates = tuple(extras.pop("gates", ()))
        grad_fn = _grad_function(scores, wrt) if grads else None
        return Capture(
            scores=scores.detach(),
            attentions=kept,                                         # L × [H, T, T] (or L × QK rows)
            layout=layout,
            inputs=inputs,
            targets=self._targets(inputs, scores.detach()),
            box=inputs.get("box"),
            extras={k: _detached(v) for k, v in extras.items()},
            cross_attentions=None if cross is None else tuple(precision.kept(a[0]) for a in cross),   # L × [H, Q, T_image]
            readout=precision.kept(readout[0]) if readout is not None else self.readout(layout),
            pooling=self.pooling,
            stages=tuple(precision.kept(s[0]) for s in stages),      # S × [C, h, w]
            stage_grids=stage_grids,
            gates=gates,
            _grad_fn=grad_fn,
        )

    def rows_path(self, n_tokens: int) -> bool:
        """Whether a capture of ``n_tokens`` tokens takes the chunked path (``attention_path``)."""
        path = str(self.attention_path).strip().lower()
        if path not in ATTENTION_PATHS:
            raise UsageError(f"Attention path must be one of {', '.join(ATTENTION_PATHS)}, got '{path}'.")
        able = self.ROWS_CAPTURE and getattr(self.model.config, "_attn_implementation", None) == FAST_EAGER
        if path == "rows" and not able:
            raise UsageError(f"{self.name} cannot capture attention rows (it does not run attnviz's own eager "
                             "attention): use the full path.")
        if path == "auto" and self.precision != torch.float32 and n_tokens > precision.MAX_TOKENS:
            # in reduced precision a full capture of this size would run float32 (``reduced_for``); the rows run
            # bfloat16 (ViT-B/16 at 384², 577 tokens, 2 threads, CPU s: rollout 1.24 -> 0.33, relevance
            # 2.32 -> 1.22, peak 1,530 -> 1,213 MB)
            return able
        return able and (path == "rows" or (path == "auto" and n_tokens >= ROWS_FROM_TOKENS))

    # --- input sizes: what a size costs, what fits ----------------------
    def max_patches(self) -> int:
        """The most patches a chosen input size may make: more on the chunked path (no T² memory)."""
        return MAX_ROWS_PATCHES if self.rows_path(MAX_PATCHES + 1) else MAX_PATCHES

    def estimate(self, size: tuple[int, int]) -> Optional[Cost]:
        """Expected time and memory of a capture and its attention views at input ``size`` (height, width),
        from the model's shape and this machine (``tokens/budget.py``); None where the family has none.
        The app shows it before running a high-resolution input."""
        cfg = getattr(self.model.config, "vision_config", None) or self.model.config
        patch, prefix = getattr(self, "patch_size", None), getattr(self, "prefix", None)
        if patch is None or prefix is None or not hasattr(cfg, "intermediate_size"):
            return None
        h, w = rounded_size(size, patch)
        tokens = (h // patch[0]) * (w // patch[1]) + len(prefix)
        weights = sum(p.numel() * p.element_size() for p in self.model.parameters())
        rows = self.rows_path(tokens)
        return dense_cost(cfg.num_hidden_layers, cfg.num_attention_heads, cfg.hidden_size, cfg.intermediate_size,
                          tokens, "rows" if rows else "full", weights,
                          checkpointed=self.checkpointed_layers(tokens) if rows else 0,
                          pixels=getattr(cfg, "num_channels", 3) * h * w,
                          dtype=self.precision if self.reduced_for(tokens) else torch.float32)

    def checkpointed_layers(self, n_tokens: int) -> int:
        """How many token blocks (the lowest) a chunked capture with gradients of ``n_tokens`` tokens checkpoints
        (``checkpoint_blocks``; "auto": ``budget.checkpointed_layers`` from the model's shape)."""
        mode = self.checkpoint_blocks
        if mode != "auto":
            return self.n_layers if mode else 0
        cfg = getattr(self.model.config, "vision_config", None) or self.model.config
        if not hasattr(cfg, "intermediate_size"):
            return self.n_layers
        half = self.precision != torch.float32 and self.reduced_for(n_tokens)
        return checkpointed_layers(self.n_layers, cfg.hidden_size, cfg.intermediate_size, n_tokens,
                                   hidden_itemsize=2 if half else 4)

    def check_size(self, size: tuple[int, int]) -> None:
        """Refuse, in one sentence, a chosen input size whose capture would not fit in this machine's memory."""
        cost = self.estimate(size)
        if cost is None or cost.fits:
            return
        patch = self.patch_size[0]
        side = largest_square(lambda s: self.estimate((s, s)), patch, patch)
        h, w = rounded_size(size, self.patch_size)
        fits = f"at most about {side}×{side} fits" if side else "no size fits"
        raise UsageError(f"The input size {h}×{w} ({cost.tokens:,} tokens) would need about "
                         f"{cost.relevance_bytes / 2 ** 30:.1f} GB for the attention views, and "
                         f"{cost.available_bytes / 2 ** 30:.1f} GB are available here: {fits}.")

    def _attention_modules(self) -> dict:
        """module -> layer for every submodule of each token block (the attention module among them)."""
        return {m: li for li in range(self.n_layers) for m in self.token_block(li).modules()}

    def _recorded(self, rec: Recorder, layout: TokenLayout) -> tuple[tuple, tuple]:
        """(head outputs to differentiate L × [1, H, T, d] or (), the capture's L × ``QK`` rows)."""
        if sorted(rec.layers) != list(range(self.n_layers)):
            raise RuntimeError(f"Expected {self.n_layers} attention layers, recorded {len(rec.layers)}.")
        kept = []
        for li in range(self.n_layers):
            r = rec.layers[li]
            q = r["q"][0]                                                   # [H, T, d]
            if q.shape[1] != layout.n_tokens:
                raise RuntimeError(f"Token layout mismatch: attention over {q.shape[1]} tokens, "
                                   f"layout says {layout.n_tokens}.")
            bias = r["bias"]
            if bias is not None:                                            # [1 or B, 1 or H, T, T]
                bias = bias[0].expand(q.shape[0], -1, -1)                   # [H, T, T]
            # float32 whatever the pass computed in: the recorder kept them so (``Recorder.attend``)
            kept.append(QK(q=q, k=r["k"][0], scaling=r["scaling"], bias=bias,
                           v=None if r["v"] is None else r["v"][0],
                           lse=None if r["lse"] is None else r["lse"][0]))          # [H, T]
        outs = tuple(rec.layers[li]["out"] for li in range(self.n_layers)) if rec.grads else ()
        return outs, tuple(kept)

    def complete_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """What the forward needs that a caller may leave out, filled in before a capture (a captioner's caption,
        a vision-language model's answer: each generated greedily). Most families need nothing more."""
        return inputs

    def _check_attentions(self, attentions: tuple, layout: TokenLayout, extras: dict[str, Any]) -> None:
        if len(attentions) != self.n_layers:
            raise RuntimeError(f"Expected {self.n_layers} attention tensors, got {len(attentions)}: "
                               "the model is not running eager attention.")
        if attentions[0].shape[-1] != layout.n_tokens:
            raise RuntimeError(
                f"Token layout mismatch: attention over {attentions[0].shape[-1]} tokens, layout says {layout.n_tokens}.")

    def readout(self, layout: TokenLayout) -> Optional[torch.Tensor]:
        """[T] weights with which the output reads the last layer's tokens, from the declared pooling.
        None for attention pooling: the forward measures it per image (``extras["readout"]``)."""
        return static_readout(self.pooling, layout)

    def target_readout(self, capture: Capture, target: Target) -> Optional[torch.Tensor]:
        """[T] readout for a class-specific method explaining ``target``.

        A static pooling reads the same tokens whatever the target. An attention pooling is an
        attention like any other, so families that have one weight it by its gradient for the target,
        E_h[(∇A ⊙ A)⁺] (Chefer et al. 2021, eq. 5), in ``_readout_attention``.
        """
        if self.pooling != "attention":
            return capture.readout
        w = self._readout_attention(capture, target)                     # [T], >= 0
        total = w.sum()
        # A target whose score does not move with the pooling attention at all falls back to the plain one.
        return w / total if total > 0 else capture.readout

    def _readout_attention(self, capture: Capture, target: Target) -> torch.Tensor:
        raise NotImplementedError(f"{type(self).__name__} declares attention pooling but no gradient-weighted readout.")

    def resolve_target(self, capture: Capture, target: Any = None) -> Target:
        """A target from an index, a label (case-insensitive) or None (the top-scoring one)."""
        ts = capture.targets
        if target is None:
            return max(ts, key=lambda t: t.score) if ts[0].kind == "class" else ts[0]
        if isinstance(target, Target):
            return target
        s = str(target).strip()
        try:
            i = int(s)
        except ValueError:
            matches = [t for t in ts if t.label.lower() == s.lower()]
            if not matches:
                raise UsageError(f"Unknown target '{s}': give an index (0–{len(ts) - 1}) or one of the labels.") from None
            return matches[0]
        if i < 0:
            i += len(ts)
        if not 0 <= i < len(ts):
            raise UsageError(f"Target {s} is out of range (0–{len(ts) - 1}).")
        return ts[i]
