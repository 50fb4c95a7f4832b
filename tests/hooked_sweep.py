"""`python tests/hooked_sweep.py ARGS...`: tune_search.py with its trainable wrapped from the outside, for tests.

The wrapper replaces `ray.tune.report` inside each trial's process, so the
production code runs unchanged and knows nothing of it. Read from this
driver's environment (the values travel to the trials inside the pickled
wrapper, not through the trials' environment):

* FEDSWEEP_TEST_ROUND_LOG=<file>: append "trial_id,round" for every round a
  trial reports;
* FEDSWEEP_TEST_FAIL_ONCE=<file>: the first trial that reaches round 2 raises
  instead of reporting it, once over the whole sweep (the file, created
  atomically, holds that trial's id).
"""

from __future__ import annotations

import os
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import tune_search  # noqa: E402
from fl_sweep import trainable  # noqa: E402


def hooked_trial(round_log: str | None, fail_once: str | None):
    """A trial function that runs fedsweep's own with `tune.report` wrapped by the two hooks."""

    def fedsweep_trial(config: dict, **parameters) -> None:
        """fl_sweep.trainable.fedsweep_trial (imported here: this process never saw the patch) with hooks."""
        from ray import tune

        from fl_sweep.trainable import fedsweep_trial as original

        trial_id = tune.get_context().get_trial_id()
        report = tune.report

        def hooked_report(metrics: dict, *args, **kwargs) -> None:
            """Fail once at round 2 (before Tune sees it), else report and log the round."""
            if fail_once and metrics.get("round") == 2:
                try:
                    fd = os.open(fail_once, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # atomic: one trial only
                except FileExistsError:
                    pass
                else:
                    os.write(fd, trial_id.encode())
                    os.close(fd)
                    raise RuntimeError(f"injected failure in round 2 of trial {trial_id}")
            report(metrics, *args, **kwargs)
            if round_log:
                with open(round_log, "a") as f:
                    f.write(f"{trial_id},{metrics['round']}\n")

        tune.report = hooked_report
        try:
            original(config, **parameters)
        finally:
            tune.report = report

    return fedsweep_trial


if __name__ == "__main__":
    # make_trainable looks the trial function up in its module when it builds the trainable.
    trainable.fedsweep_trial = hooked_trial(
        os.environ.get("FEDSWEEP_TEST_ROUND_LOG"), os.environ.get("FEDSWEEP_TEST_FAIL_ONCE")
    )
    sys.exit(tune_search.main())
