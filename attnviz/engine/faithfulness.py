"""The faithfulness numbers a batch row carries (``--faithfulness``), all from the image's one capture.

* deletion / insertion AUCs of the map's order and of a random order (Petsiuk et al. 2018, RISE;
  :func:`attnviz.metrics.deletion_insertion`, its defaults: 20 steps, one random order);
* ROAD (Rong et al. 2022; :func:`attnviz.metrics.road`, its defaults: noisy linear imputation at 10 %, …,
  90 % of the pixels, seed 0): the mean quantity with the most relevant pixels removed first (MoRF: lower is
  more faithful) and with the least relevant removed first (LeRF: higher is more faithful).

Each metric is the library function called on the capture and the map, nothing recomputed here, so a
batch row and a direct call agree exactly (tests/test_batch_compare.py).
"""
from __future__ import annotations

from typing import Any

#: column -> True when a higher value means a more faithful map
COLUMNS = {"deletion_auc": False, "random_deletion_auc": False, "insertion_auc": True,
           "random_insertion_auc": True, "road_morf": False, "road_lerf": True}
#: the columns that compare methods (the random orders are each map's own yardstick)
COMPARED = ("deletion_auc", "insertion_auc", "road_morf", "road_lerf")


def measure(adapter, capture, exp, target: int) -> dict[str, Any]:
    """The :data:`COLUMNS` of one map of ``capture`` for ``target``."""
    from ..metrics import deletion_insertion, deletion_summary, road
    f = deletion_summary(deletion_insertion(adapter, capture, exp, target=target))
    r = road(adapter, capture, exp, target=target)
    return {**{k: f[k] for k in ("deletion_auc", "random_deletion_auc", "insertion_auc", "random_insertion_auc")},
            "road_morf": r["morf_mean"], "road_lerf": r["lerf_mean"]}
