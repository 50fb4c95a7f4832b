"""fedsweep's built-in job as a Flower app: CIFAR-10 in pool-size clients, Flower's CIFAR CNN, any Flower strategy.

In the shape of Flower's PyTorch template: task.py (model, training and
evaluation on tensors), data.py (loading and partitioning), strategy.py (the
strategy from the run config, and the run config's checks), client_app.py,
server_app.py; the run config is `[tool.flwr.app.config]` in ../pyproject.toml.
"""
