"""Sweeps of fl_core simulations with Ray Tune; `tune_search.py` is their command line.

Modules, one role each: spec (the sweep's definition, parsed and checked),
resources (placement-group bundles per trial), storage (experiment location and
marker file), trainable (the Tune function trainable and data sharing), tuner
(Tune objects, starting Ray, fit or restore), report (tables and plots).
"""
