"""Faithfulness and sanity metrics for explanation maps, one module each.

* :mod:`.pointing`: the pointing game (does the map's maximum lie on the object?);
* :mod:`.deletion`: deletion and insertion curves (RISE), beside random orders;
* :mod:`.randomisation`: the cascading weight-randomisation sanity check (Adebayo et al.);
* :mod:`.rank`: Spearman rank correlation, for comparing two maps;
* :mod:`.road`: ROAD (Rong et al. 2022: noisy linear imputation, MoRF and LeRF) and the confidence kept by a
  map's top pixels.
"""
from .deletion import Curve, deletion_insertion
from .deletion import summary as deletion_summary
from .pointing import POINTING_MODES, pointing_game_hit
from .randomisation import RandomisationStep, cascading_randomisation
from .rank import spearman
from .road import confidence_kept, road

__all__ = ["Curve", "deletion_insertion", "deletion_summary", "POINTING_MODES", "pointing_game_hit",
           "RandomisationStep", "cascading_randomisation", "spearman", "road", "confidence_kept"]
