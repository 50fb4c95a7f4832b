"""Sweeps of a Flower app run by fl_core, with Ray Tune; `tune_search.py` is their command line.

Modules, one role each: spec (the app, the sweep's search space and fixed
values, parsed and checked), resources (each trial's settings, run config and
placement-group bundles), storage (experiment location and marker file),
trainable (the Tune function trainable and data sharing), tuner (Tune objects,
starting Ray, fit or restore), report (tables and plots).
"""
