"""Each node adds its partition id + 1 to the received arrays; evaluation reports the arrays' mean."""

from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """The received arrays plus (partition id + 1), weighted by one example."""
    step = context.node_config["partition-id"] + 1
    arrays = [a + step for a in msg.content["arrays"].to_numpy_ndarrays()]
    metrics = MetricRecord({"step": float(step), "num-examples": 1})
    return Message(RecordDict({"arrays": ArrayRecord(arrays), "metrics": metrics}), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """The mean of the received arrays."""
    mean = float(sum(a.mean() for a in msg.content["arrays"].to_numpy_ndarrays()))
    return Message(RecordDict({"metrics": MetricRecord({"mean": mean, "num-examples": 1})}), reply_to=msg)
