"""fedsweep-tune: hyperparameter sweeps of Flower apps run by fl_core, with Ray Tune.

Run a sweep (default: a grid over fraction-train x local-epochs)::

    python tune_search.py --set dataset=synthetic --set num-server-rounds=5
    python tune_search.py --app examples/quickstart-pytorch --grid learning-rate=0.01,0.1
    python tune_search.py --config sweep.yaml --loguniform lr=1e-3,1e-1 --search random --num-samples 8
    python tune_search.py --name fedsweep --resume          # continue an interrupted sweep
    python tune_search.py report ./ray_results/fedsweep     # tables and plots, at any time

Design, in short:

* Every trial is one `fl_core.run_app` of the app (default: the built-in
  CIFAR-10 app). Keys are the engine's settings (pool_size, seed, resources) or
  the app's run-config keys. When fedsweep runs the app's rounds (its
  `strategy.start` or `fl_core.start`), each round reports its metrics, with a
  checkpoint (`fl_checkpoint.npz`) every round or every `--checkpoint-every N`,
  so a crashed trial and a resumed sweep continue after the last checkpointed
  round; a strategy whose `start` is its own loop reports per round without
  checkpoints and restarts from round 1.
* A trial's placement group is [server bundle] + K client bundles, with
  K = min(clients per round, max parallel clients); fl_core puts one client
  worker actor on each client bundle.
* The app's @shared data is built once by the driver per distinct data set and
  shared through the object store (see fl_sweep.trainable.share_data).
* The sweep's settings are written to `fedsweep_sweep.json` in the experiment
  directory; `--resume` and `report` refuse a directory without it.
* Trials run in the driver's working directory (RAY_CHDIR_TO_TRIAL_DIR=0), so
  an app's relative paths mean what they mean for `python -m fl_core`.
* Exit status: 0 all trials finished, 1 some trial failed, 2 bad input (refused
  before Ray starts or anything is written).
"""

import sys

from fl_sweep.cli import main

if __name__ == "__main__":
    sys.exit(main())
