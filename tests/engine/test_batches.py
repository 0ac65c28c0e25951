"""Device splits: compact label maps, no copy at the native shape, int64 labels per batch, native label grids."""

import torch

from data.dataset import load_splits
from engine.batches import DeviceSplit

DATA = {"dataset": "phantom", "phantom": {"n_subjects": 6, "shape": [24, 28], "seed": 0},
        "splits": {"train": [0, 3], "val": [4, 5], "test": None}}


def test_native_split_is_used_without_a_copy_and_labels_stay_int16():
    splits = load_splits(DATA, 2, ("train", "val"))
    train = splits["train"]
    # Consecutive subjects: the splits are views of the tensors read once, not copies.
    assert train.images.untyped_storage().data_ptr() == splits["val"].images.untyped_storage().data_ptr()
    data = DeviceSplit(train, train.shape, "cpu")
    assert data.images.data_ptr() == train.images.data_ptr() and data.labels.data_ptr() == train.labels.data_ptr()
    assert data.labels.dtype == torch.int16
    batch = data.batch(torch.tensor([0, 3]))
    assert batch.moving_labels.dtype == torch.int64 and batch.fixed_labels.dtype == torch.int64
    m, f = train.pairs[3].tolist()
    assert torch.equal(batch.fixed_labels[1], train.labels[f].long())


def test_resized_split_and_native_label_grid():
    train = load_splits(DATA, 2, ("train",))["train"]
    half = DeviceSplit(train, (12, 14), "cpu")
    assert half.images.shape[2:] == (12, 14) and half.labels.shape[2:] == (12, 14)
    assert half.labels.dtype == torch.int16
    native = DeviceSplit(train, (12, 14), "cpu", label_shape=train.shape)
    batch = native.batch(torch.tensor([0]))
    assert batch.moving.shape[2:] == (12, 14) and batch.moving_labels.shape[2:] == (24, 28)
    assert native.labels.data_ptr() == train.labels.data_ptr()


def test_indices_on_the_store_gather_without_a_copy_from_the_host():
    """On a GPU the training loop moves each epoch's order there once; a batch then copies nothing
    from the host (the ``meta`` device stands in for the GPU: the scan sees such copies there)."""
    from utils.cuda_graphs import SyncScan

    train = load_splits(DATA, 2, ("train",))["train"]
    data = DeviceSplit(train, (12, 14), "meta")
    assert data.index_device == torch.device("meta")
    order = torch.tensor([[0, 3], [2, 1]])
    moved = order.to(data.index_device)  # once an epoch
    with SyncScan() as scan:
        batch = data.batch(moved[1])
    assert scan.found == [] and batch.moving.shape == (2, 1, 12, 14) and batch.moving.device.type == "meta"
    with SyncScan() as scan:
        data.batch(order[1])  # host indices still work, through a copy
    assert scan.found


def test_batches_from_host_and_store_indices_agree():
    train = load_splits(DATA, 2, ("train",))["train"]
    data = DeviceSplit(train, (12, 14), "cpu")
    a, b = data.batch(torch.tensor([2, 0])), data.batch(torch.tensor([2, 0]).to(data.index_device))
    assert torch.equal(a.moving, b.moving) and torch.equal(a.fixed_labels, b.fixed_labels)
