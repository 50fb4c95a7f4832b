"""A ServerApp that sends every node one train message and writes where each reply and the server ran."""

import json
import os

from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """One message a node; JSON of the server's CUDA_VISIBLE_DEVICES and each reply's report to run config `out`."""
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), dst_node_id=node, message_type=MessageType.TRAIN)
        for node in grid.get_node_ids()
    ]
    replies = grid.send_and_receive(messages)
    clients = [dict(reply.content["where"]) for reply in replies]
    with open(context.run_config["out"], "w") as f:
        json.dump({"server_visible": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), "clients": clients}, f)
