"""A ClientApp that answers with where it runs: process id, CUDA_VISIBLE_DEVICES, Ray's GPU ids."""

import os
import time

import ray
from flwr.app import ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


@app.train()
def where(msg: Message, context: Context) -> Message:
    """Reply with this process's id, CUDA_VISIBLE_DEVICES ("unset" if unset) and Ray's GPU ids."""
    time.sleep(0.2)  # long enough that every worker gets its group
    found = {
        "pid": str(os.getpid()),
        "visible": os.environ.get("CUDA_VISIBLE_DEVICES", "unset"),
        "gpu_ids": ",".join(str(i) for i in ray.get_gpu_ids()),
    }
    return Message(RecordDict({"where": ConfigRecord(found)}), reply_to=msg)
