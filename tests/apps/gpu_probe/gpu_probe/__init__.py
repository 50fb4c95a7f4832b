"""Where fedsweep runs an app's server and clients (tests/test_logical_gpus.py)."""
