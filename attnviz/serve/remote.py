"""The app's side of the Ray Serve application (``ATTNVIZ_SERVE``): captures and maps over the network.

The app keeps its own copy of the model's adapter for what needs no computation (preparing an image,
labels, method defaults), and sends the model work to the Serve application ``ray_app`` deployed:
a capture comes back as its summary (scores, targets, token layout; the attention tensors stay on the
replica) and a map as its :class:`~attnviz.types.Explanation`. The app caches maps as before, so a
display change (opacity, colormap, normalisation) never crosses the network.
"""
from __future__ import annotations

import os
from typing import Any, Optional

import torch

from ..errors import ModelUnavailable
from ..types import Capture, Explanation


class RemoteModel:
    """Serve handle calls for one application: ``capture(inputs)`` and ``explain(inputs, ...)``."""

    def __init__(self, app_name: str, handle=None):
        if handle is None:
            handle = _connect(app_name)
        self.app_name, self.handle = app_name, handle

    def __deepcopy__(self, memo) -> None:
        # A copy of the adapter (the randomisation check's) runs here, on its own weights: no remote.
        return None

    def capture(self, inputs: dict[str, Any]) -> Capture:
        """A capture with the replica's scores, targets and layout; its attentions are placeholders of
        the right shape that hold no values (a zero broadcast: 4 bytes each), so a page can count layers
        and heads, while every map is computed where the real ones are."""
        s = self.handle.capture.remote(inputs).result()     # a new image: any replica, so that new ones batch
        layers, heads, tokens = s["shape"]
        hollow = torch.zeros(()).expand(heads, tokens, tokens)           # [H, T, T], no storage behind it
        return Capture(scores=s["scores"], attentions=(hollow,) * layers, layout=s["layout"], inputs=inputs,
                       targets=s["targets"], box=s["box"], readout=s["readout"], pooling=s["pooling"],
                       extras={"remote": self.app_name}, _grad_fn=_RemoteGrads(s.get("ready", ())))

    def explain(self, inputs: dict[str, Any], method: str, target: Any = None,
                params: Optional[dict[str, Any]] = None) -> Explanation:
        return self._to(inputs).explain.remote(inputs, method, target, dict(params or {})).result()

    def _to(self, inputs: dict[str, Any]):
        """The handle for a request on an image already captured: its digest as the multiplexed model id,
        so that Serve sends it to the replica that holds the capture (``ray_app.AttnvizModel._claim``)."""
        from .ray_app import digest_of
        return self.handle.options(multiplexed_model_id=digest_of(inputs))


class _RemoteGrads:
    """A remote capture's gradient function: the gradients stay on the replica (its maps are made there);
    ``waits(t)`` tells the page whether target ``t``'s backward was still to come when the capture's forward
    came back (the replica runs new images' forwards first), so it shows the forward's own map meanwhile."""

    def __init__(self, ready):
        self.ready = {int(t) for t in ready}

    def waits(self, target: int) -> bool:
        return int(target) not in self.ready

    def came(self, target: int) -> None:
        """A class-specific map for ``target`` came back: its gradients are on the replica now."""
        self.ready.add(int(target))

    def __call__(self, target: int):
        raise RuntimeError("This capture's gradients stay on the Ray Serve replica that made it: ask it for "
                           "the map (RemoteModel.explain).")


def _connect(app_name: str):
    """A handle to the Serve application ``app_name`` on the Ray cluster at ``RAY_ADDRESS`` (default: the
    one running on this machine); ModelUnavailable in one sentence when there is none."""
    import ray
    from ray import serve
    address = os.environ.get("RAY_ADDRESS", "auto")
    try:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False)
        return serve.get_app_handle(app_name)
    except Exception as exc:   # noqa: BLE001  (Ray raises several kinds; the page needs one sentence)
        raise ModelUnavailable(
            f"ATTNVIZ_SERVE names the Ray Serve application '{app_name}', but it could not be reached on the Ray "
            f"cluster at {address} ({type(exc).__name__}): start it (README, More than one machine) or unset "
            "ATTNVIZ_SERVE.") from exc


def is_remote(capture: Capture) -> bool:
    """Whether ``capture`` is a summary of one held by a Serve replica (its attentions hold no values)."""
    return "remote" in capture.extras
