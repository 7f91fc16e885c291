"""Offline demo: the training and evaluation scripts of the small demo models shipped under ``models/``.

The synthetic scenes they learn from (known masks and captions) are :mod:`attnviz.scenes`, a data module
below every layer that uses them (the lesson, the excitation profiles, the load test and these scripts).
"""
