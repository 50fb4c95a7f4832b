"""pytorchexample: A Flower / PyTorch app."""

import torch
import torch.nn as nn
import torch.nn.functional as F
from cifar10_app.data import load_data as load_federated_data
from cifar10_app.data import test_set
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import Compose, Normalize, ToTensor


class Net(nn.Module):
    """Model (simple CNN adapted from 'PyTorch: A 60 Minute Blitz')"""

    def __init__(self):
        super(Net, self).__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x):
        """Logits for a batch of normalised images."""
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


pytorch_transforms = Compose([ToTensor(), Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])


class PartitionDataset(Dataset):
    """A node's images and labels, served as the template's {"img", "label"} samples."""

    def __init__(self, images, labels):
        self.images, self.labels = images, labels

    def __len__(self):
        """Number of samples."""
        return len(self.labels)

    def __getitem__(self, index):
        """One sample, transformed like the template's `apply_transforms` (per sample, PIL-style HWC input)."""
        img = self.images[index].transpose(1, 2, 0)  # uint8 CHW -> HWC, what ToTensor takes
        return {"img": pytorch_transforms(img), "label": int(self.labels[index])}


def load_data(partition_id: int, num_partitions: int, batch_size: int, run_config):
    """Load partition CIFAR10 data."""
    # fedsweep: the departure from Flower's template (with load_centralized_dataset).
    # The template downloads CIFAR-10 from the Hugging Face hub with Flower Datasets
    # (FederatedDataset + IidPartitioner, then an 80/20 train_test_split of the
    # partition), which is impossible offline. Here the node's partition comes from
    # fedsweep's built-in loader, cifar10_app.data.load_data: an @fl_core.shared
    # function, so under fedsweep the driver splits the data once and every worker
    # reads it from Ray's object store; under Flower's engine each process loads it
    # once. Its run-config keys (dataset, partition, val-ratio, ...) are in pyproject.toml.
    data = load_federated_data(run_config, num_partitions)
    train_images, train_labels = data.client_arrays(partition_id, "train")
    val_images, val_labels = data.client_arrays(partition_id, "val")
    # Construct dataloaders
    trainloader = DataLoader(PartitionDataset(train_images, train_labels), batch_size=batch_size, shuffle=True)
    testloader = DataLoader(PartitionDataset(val_images, val_labels), batch_size=batch_size)
    return trainloader, testloader


def load_centralized_dataset(run_config):
    """Load test set and return dataloader."""
    # fedsweep: the run config's test set from the same loader (read once per process).
    images, labels = test_set(run_config)
    return DataLoader(PartitionDataset(images, labels), batch_size=128)


def train(net, trainloader, epochs, lr, device):
    """Train the model on the training set."""
    net.to(device)  # move model to GPU if available
    criterion = torch.nn.CrossEntropyLoss().to(device)
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    net.train()
    running_loss = 0.0
    for _ in range(epochs):
        for batch in trainloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            optimizer.zero_grad()
            loss = criterion(net(images), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
    avg_trainloss = running_loss / (epochs * len(trainloader))
    return avg_trainloss


def test(net, testloader, device):
    """Validate the model on the test set."""
    net.to(device)
    criterion = torch.nn.CrossEntropyLoss()
    correct, loss = 0, 0.0
    with torch.no_grad():
        for batch in testloader:
            images = batch["img"].to(device)
            labels = batch["label"].to(device)
            outputs = net(images)
            loss += criterion(outputs, labels).item()
            correct += (torch.max(outputs.data, 1)[1] == labels).sum().item()
    accuracy = correct / len(testloader.dataset)
    loss = loss / len(testloader)
    return loss, accuracy
