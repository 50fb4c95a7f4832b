"""The pfl-research side of bench_pfl.py: one FedAvg run of Flower's CIFAR CNN with pfl 0.6.0, as pfl runs it.

    torchrun --standalone --nproc_per_node 2 bench/pfl_job.py --data-dir /tmp/cifar --clients 1000 ... (all flags)

Needs pfl[pytorch]==0.6.0 and the checkout's apps/cifar10 on PYTHONPATH (the model: `cifar10_app.task.Net`,
weights `initial_model(seed)`). Each process trains its share of a round's cohort. Rank 0 prints `PFL_ROUND
<round> <seconds since the previous round's end> <accuracy or ->` per round.
"""

from __future__ import annotations

import argparse
import os
import pickle
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F
from cifar10_app.task import Net, initial_model  # from the fedsweep checkout on PYTHONPATH
from pfl.aggregate.simulate import SimulatedBackend
from pfl.aggregate.weighting import WeightByDatapoints
from pfl.algorithm import FederatedAveraging, NNAlgorithmParams
from pfl.callback.base import TrainingProcessCallback
from pfl.callback.central_evaluation import CentralEvaluationCallback
from pfl.data.dataset import Dataset
from pfl.data.federated_dataset import FederatedDataset
from pfl.data.sampling import get_user_sampler
from pfl.hyperparam import NNEvalHyperParams, NNTrainHyperParams
from pfl.metrics import Metrics, Weighted
from pfl.model.pytorch import PyTorchModel

ACCURACY = "Central val | accuracy"
RANK = int(os.environ.get("RANK", 0))  # set by torchrun


class PflNet(Net):
    """Flower's CIFAR CNN with the `loss` and `metrics` methods that pfl's PyTorchModel calls."""

    def loss(self, x, y, eval=False):  # noqa: A002  (pfl's keyword)
        """Mean cross-entropy of a batch, as a local training step minimises it."""
        self.eval() if eval else self.train()
        return F.cross_entropy(self(x), y)

    @torch.no_grad()
    def metrics(self, x, y, eval=True):  # noqa: A002
        """Summed loss and correct predictions of a batch, weighted by its size (pfl adds them over batches)."""
        self.eval() if eval else self.train()
        logits = self(x)
        return {
            "loss": Weighted(F.cross_entropy(logits, y, reduction="sum").item(), len(y)),
            "accuracy": Weighted((logits.argmax(1) == y).sum().item(), len(y)),
        }


def read_cifar(folder: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(train images, train labels, test images, test labels) from the pickled batches; images uint8 NCHW."""

    def read(name):
        with open(os.path.join(folder, name), "rb") as f:
            batch = pickle.load(f, encoding="latin1")
        batch = {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}
        return np.asarray(batch["data"], np.uint8).reshape(-1, 3, 32, 32), np.asarray(batch["labels"], np.int64)

    parts = [read(f"data_batch_{i}") for i in range(1, 6)]
    test = read("test_batch")
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]), test[0], test[1]


def to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 images -> float32 in [-1, 1], as fedsweep's cifar10_app.task.to_tensor."""
    return torch.from_numpy(images).float().div_(127.5).sub_(1.0)


class CentralEvaluation(CentralEvaluationCallback):
    """pfl's central evaluation, due after rounds N, 2N, ... and the last (fedsweep's schedule).

    pfl's own schedule counts from iteration 0 (rounds 1, N+1, ...) and would leave the last round unscored.
    """

    def __init__(self, dataset, eval_params, every: int, rounds: int):
        super().__init__(dataset, model_eval_params=eval_params, frequency=every)
        self.every, self.rounds = every, rounds

    def on_train_begin(self, *, model):
        """No score of the initial model: pfl merges it into round 1's metrics, which would clash with round 1's."""
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        """Evaluate when the round just ended is due."""
        done = central_iteration + 1
        if done % self.every and done != self.rounds:
            return False, Metrics()
        return self._eval(model)


class RoundClock(TrainingProcessCallback):
    """Last callback of a round: prints the seconds since the previous round ended (pfl's own loop) and accuracy."""

    def on_train_begin(self, *, model):
        """Start the clock when training starts."""
        self.last = time.perf_counter()
        return Metrics()

    def after_central_iteration(self, aggregate_metrics, model, *, central_iteration):
        """Print this round's line on rank 0."""
        now = time.perf_counter()
        lap, self.last = now - self.last, now
        if RANK == 0:
            acc = aggregate_metrics[ACCURACY].overall_value if ACCURACY in aggregate_metrics else None
            print(f"PFL_ROUND {central_iteration + 1} {lap:.6f} {'-' if acc is None else f'{acc:.6f}'}", flush=True)
        return False, Metrics()


def main() -> int:
    """Build the federated data, model and FedAvg from the flags and run it."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for flag, kind in (
        ("data-dir", str),
        ("clients", int),
        ("per-client", int),
        ("cohort", int),
        ("epochs", int),
        ("batch-size", int),
        ("lr", float),
        ("rounds", int),
        ("eval-every", int),
        ("eval-batch-size", int),
        ("seed", int),
    ):
        p.add_argument(f"--{flag}", type=kind, required=True)
    args = p.parse_args()
    torch.set_num_threads(1)  # one thread a process, one process a core (FIELD-NOTES: oversubscription)

    # The same seed on every process: pfl's samplers must draw the same cohorts everywhere.
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    train_x, train_y, test_x, test_y = read_cifar(os.path.join(args.data_dir, "cifar-10-batches-py"))
    order = np.random.default_rng(args.seed).permutation(len(train_y))[: args.clients * args.per_client]
    images, labels = to_tensor(train_x[order]), torch.from_numpy(train_y[order])
    users = {
        u: [
            images[u * args.per_client : (u + 1) * args.per_client],
            labels[u * args.per_client : (u + 1) * args.per_client],
        ]
        for u in range(args.clients)
    }
    # minimize_reuse: no client twice in a cohort (pfl's documented choice; fedsweep samples without replacement too).
    train_data = FederatedDataset.from_slices(users, get_user_sampler("minimize_reuse", list(range(args.clients))))
    central = Dataset(raw_data=[to_tensor(test_x), torch.from_numpy(test_y)])

    net = PflNet()
    net.load_state_dict(initial_model(args.seed).state_dict())
    model = PyTorchModel(
        model=net,
        local_optimizer_create=torch.optim.SGD,  # plain SGD: momentum 0, no decay
        central_optimizer=torch.optim.SGD(net.parameters(), lr=1.0),
    )  # FedAvg: apply the mean delta
    # val_data is required but unused: no validation cohorts.
    backend = SimulatedBackend(training_data=train_data, val_data=train_data, postprocessors=[WeightByDatapoints()])
    eval_params = NNEvalHyperParams(local_batch_size=args.eval_batch_size)
    params = NNAlgorithmParams(
        central_num_iterations=args.rounds,
        # pfl scores each trained user before and after training in "evaluation" rounds:
        # only round 1 here (skipped in the medians), as the job has no federated evaluation.
        evaluation_frequency=args.rounds + 1,
        train_cohort_size=args.cohort,
        val_cohort_size=0,
    )
    callbacks = [CentralEvaluation(central, eval_params, args.eval_every, args.rounds), RoundClock()]
    FederatedAveraging().run(
        algorithm_params=params,
        backend=backend,
        model=model,
        model_train_params=NNTrainHyperParams(
            local_learning_rate=args.lr, local_num_epochs=args.epochs, local_batch_size=args.batch_size
        ),
        model_eval_params=eval_params,
        callbacks=callbacks,
        send_metrics_to_platform=False,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
