"""Sweeps of a Flower app run by fl_core, with Ray Tune; `tune_search.py` is their command line.

Modules, one role each: cli (flags to a checked sweep; run and report
commands), spec (the sweep's definition: keys, values, search entries,
combinations), sweep_file (the --config file), validate (checks of a whole
sweep before Ray starts), resources (each trial's settings, run config and
placement-group bundles), storage (experiment location and marker file),
trainable (the Tune function trainable, its reporter, data sharing), tuner
(Tune objects, starting Ray, fit or restore), partitions (the label
distribution of each distinct data set), report (tables and plots).
"""
