"""The Flower client: one CIFAR-10 participant's local training and validation."""

from __future__ import annotations

import numpy as np
import torch
from flwr.client import NumPyClient
from torch import nn

from fl_core.data import FederatedData
from fl_core.task import evaluate, get_parameters, set_parameters, to_tensor, train


def client_seed(seed: int, server_round: int, cid: int) -> int:
    """Seed of a client's shuffling and augmentation: a function of (seed, round, client) only."""
    return int(np.random.SeedSequence([seed, server_round, cid]).generate_state(1, dtype=np.uint64)[0] >> 1)


class CifarClient(NumPyClient):
    """A `NumPyClient` over one partition of a shared `FederatedData`.

    The model object is lent by the worker that runs the client (its weights are
    overwritten by every fit/evaluate), so building a client costs nothing.
    Local hyper-parameters arrive in the round's config, as Flower strategies send them.
    """

    def __init__(self, cid: int, data: FederatedData, model: nn.Module, device: torch.device) -> None:
        self.cid = cid
        self.data = data
        self.model = model
        self.device = device

    def _tensors(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        """This client's split, normalised once and moved to the worker's device."""
        images, labels = self.data.client_arrays(self.cid, split)
        return to_tensor(images, self.device), torch.from_numpy(labels).to(self.device)

    def get_parameters(self, config):
        """Current local weights."""
        return get_parameters(self.model)

    def fit(self, parameters, config):
        """Train the received global weights on the local training split."""
        set_parameters(self.model, parameters)
        x, y = self._tensors("train")
        generator = torch.Generator().manual_seed(client_seed(int(config["seed"]), int(config["server_round"]), self.cid))
        loss = train(
            self.model,
            x,
            y,
            epochs=int(config["local_epochs"]),
            batch_size=int(config["batch_size"]),
            lr=float(config["lr"]),
            momentum=float(config["momentum"]),
            weight_decay=float(config["weight_decay"]),
            augment=str(config["augment"]),
            generator=generator,
            proximal_mu=float(config.get("proximal_mu", 0.0)),  # FedProx's configure_fit adds it
        )
        return get_parameters(self.model), len(y), {"train_loss": loss}

    def evaluate(self, parameters, config):
        """Loss and accuracy of the received weights on the local validation split."""
        set_parameters(self.model, parameters)
        x, y = self._tensors("val")
        loss, accuracy = evaluate(self.model, x, y, int(config["batch_size"]))
        return loss, len(y), {"accuracy": accuracy, "cid": self.cid}
