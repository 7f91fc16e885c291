"""Helpers shared by the gate methods (``channel_attention``, ``spatial_attention``): pick a gate, summarise it."""
from __future__ import annotations

from ..errors import UsageError
from ..types import Capture, Gate
from .common import checked_index

KIND_WORDS = {"channel": "channel attention (SE / ECA / CBAM channel gate)", "spatial": "CBAM spatial attention"}


def gates_of(capture: Capture, kind: str) -> list[Gate]:
    """The capture's gates of one kind ("channel" or "spatial"), in forward order."""
    return [g for g in capture.gates if g.kind == kind]


def pick_gate(capture: Capture, kind: str, block: int) -> tuple[int, Gate]:
    """(position among the gates of ``kind``, the gate) for a block index; negative counts from the end."""
    gates = gates_of(capture, kind)
    n = len(gates)
    if not n:
        raise UsageError(f"This model has no block with {KIND_WORDS[kind]}.")
    i = checked_index(block, n, "Block", f"blocks with {KIND_WORDS[kind]}")
    return i, gates[i]


def describe_gate(i: int, g: Gate) -> dict:
    """Where a gate sits, JSON-ready."""
    return {"block": i, "name": g.name, "module": g.module, "stage": g.stage, "cells": [g.grid.rows, g.grid.cols],
            "stride": g.grid.patch_size[0]}
