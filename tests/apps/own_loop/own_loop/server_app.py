"""FedAvg whose `start` is its own round loop (train and evaluate), or ends in Flower's with loop = "super"."""

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, Result

app = ServerApp()


class OwnLoopFedAvg(FedAvg):
    """FedAvg with a `start` of its own, as apps write to add logging or checkpoints of their own."""

    def __init__(self, loop: str) -> None:
        super().__init__()
        self.loop = loop

    def start(
        self,
        grid,
        initial_arrays,
        num_rounds=3,
        timeout=3600,
        train_config=None,
        evaluate_config=None,
        evaluate_fn=None,
    ) -> Result:
        """Its own loop over the rounds, or Flower's (super().start) with loop = "super"."""
        if self.loop == "super":
            return super().start(grid, initial_arrays, num_rounds, timeout, train_config, evaluate_config, evaluate_fn)
        result, arrays = Result(arrays=initial_arrays), initial_arrays
        for server_round in range(1, num_rounds + 1):
            replies = grid.send_and_receive(self.configure_train(server_round, arrays, ConfigRecord(), grid))
            arrays, result.train_metrics_clientapp[server_round] = self.aggregate_train(server_round, replies)
            replies = grid.send_and_receive(self.configure_evaluate(server_round, arrays, ConfigRecord(), grid))
            result.evaluate_metrics_clientapp[server_round] = self.aggregate_evaluate(server_round, replies)
        result.arrays = arrays
        return result


def central_mean(server_round: int, arrays: ArrayRecord) -> MetricRecord:
    """The arrays' mean, as a central evaluation."""
    return MetricRecord({"mean": float(sum(a.mean() for a in arrays.to_numpy_ndarrays()))})


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Start OwnLoopFedAvg from zeros."""
    strategy = OwnLoopFedAvg(context.run_config["loop"])
    strategy.start(
        grid=grid,
        initial_arrays=ArrayRecord([np.zeros(3)]),
        num_rounds=context.run_config["num-server-rounds"],
        evaluate_fn=central_mean,
    )
