"""IDXDataModule: splits, determinism, normalisation, loaders, DDP sharding."""

import pytest
import torch

from mlplab.data import TensorBatchLoader
from mlplab.errors import ConfigError
from tests.conftest import make_tiny_idx, tiny_datamodule_class


def test_split_sizes_and_properties(tiny_dm_factory):
    dm = tiny_dm_factory(val_size=40)
    dm.prepare_data()
    dm.setup("fit")
    assert [len(dm.splits[s][0]) for s in ("train", "val", "test")] == [200, 40, 60]
    assert dm.splits["train"][0].shape[1:] == (1, 28, 28) and dm.splits["train"][0].dtype == torch.float32
    assert dm.num_classes == 10 and dm.input_shape == (1, 28, 28) and dm.input_dim == 784 and len(dm.classes) == 10


def _val_labels_order(dm):
    dm.setup("fit")
    return dm.splits["val"][0].flatten(1).sum(1)


def test_split_is_deterministic_in_seed(tiny_dm_factory):
    same = [_val_labels_order(tiny_dm_factory(seed=1)) for _ in range(2)]
    other = _val_labels_order(tiny_dm_factory(seed=2))
    assert torch.equal(same[0], same[1])
    assert not torch.equal(same[0], other)


def test_train_and_val_are_disjoint(tiny_dm_factory):
    dm = tiny_dm_factory()
    dm.setup("fit")
    train = {tuple(x.flatten().tolist()) for x in dm.splits["train"][0][:, 0, 0]}  # row 0 is noise: unique per image
    val = {tuple(x.flatten().tolist()) for x in dm.splits["val"][0][:, 0, 0]}
    assert not train & val


def test_standardize_uses_training_split_statistics(tiny_dm_factory):
    dm = tiny_dm_factory(normalize="standardize")
    dm.setup("fit")
    x = dm.preprocessor(dm.splits["train"][0])
    assert abs(x.mean().item()) < 1e-4 and abs(x.std().item() - 1) < 1e-3
    train = dm.splits["train"][0].flatten(1).double()
    val = dm.splits["val"][0].flatten(1)
    # validation is scaled with the training split's mean and std (seed 001), not with its own or the whole set's
    expected = ((val.double() - train.mean()) / train.std()).float()
    torch.testing.assert_close(dm.preprocessor(val), expected)
    whole = torch.cat([train, val.double()])
    assert not torch.allclose(dm.preprocessor(val), ((val.double() - whole.mean()) / whole.std()).float())


@pytest.mark.parametrize("value", [False, "none"])
def test_normalize_off_is_identity(tiny_dm_factory, value):
    dm = tiny_dm_factory(normalize=value)
    dm.setup("fit")
    x = dm.splits["train"][0]
    assert torch.equal(dm.preprocessor(x), x.flatten(1))
    assert x.min() >= 0 and x.max() <= 1


def test_bad_normalize_names_allowed_values(tiny_dm_factory):
    with pytest.raises(ConfigError, match=r"data.normalize='pca9' is not allowed; choose one of none, standardize"):
        tiny_dm_factory(normalize="pca9")


def test_bad_erase_probability_names_value_and_range(tiny_dm_factory):
    with pytest.raises(ConfigError, match=r"data.augment_erase=1.5 is not allowed; it is a probability in \[0, 1\]"):
        tiny_dm_factory(augment_erase=1.5)


def test_bad_elastic_settings_name_values_and_range(tiny_dm_factory):
    message = r"data.augment_elastic=34.0 and data.augment_elastic_sigma=0.0 are not allowed; .* smoothness > 0"
    with pytest.raises(ConfigError, match=message):
        tiny_dm_factory(augment_elastic=34.0, augment_elastic_sigma=0.0)
    with pytest.raises(ConfigError, match=r"data.augment_elastic=-1.0 .* strength must be >= 0 pixels"):
        tiny_dm_factory(augment_elastic=-1.0)


def test_gzip_and_raw_files_give_same_data(tmp_path):
    raw = tiny_datamodule_class(make_tiny_idx(tmp_path / "a" / "Tiny" / "raw", gz=False))(data_dir=str(tmp_path / "a"), val_size=10)
    gz = tiny_datamodule_class(make_tiny_idx(tmp_path / "b" / "Tiny" / "raw", gz=True))(data_dir=str(tmp_path / "b"), val_size=10)
    for dm in (raw, gz):
        dm.prepare_data()
        dm.setup("fit")
    assert all(torch.equal(a, b) for a, b in zip(raw.splits["train"], gz.splits["train"], strict=True))


def test_train_loader_shuffles_per_epoch_val_does_not(tiny_dm_factory):
    dm = tiny_dm_factory(batch_size=50)
    dm.setup("fit")
    train, val = dm.train_dataloader(), dm.val_dataloader()
    first = torch.cat([y for _, y in train])
    train.sampler.set_epoch(1)
    second = torch.cat([y for _, y in train])
    assert sorted(first.tolist()) == sorted(dm.splits["train"][1].tolist())
    assert not torch.equal(first, second)
    assert torch.equal(torch.cat([y for _, y in val]), dm.splits["val"][1])
    assert torch.equal(torch.cat([y for _, y in dm.test_dataloader()]), dm.splits["test"][1])
    assert len(train) == 4 and [len(y) for _, y in train] == [50, 50, 50, 50]


def test_num_workers_uses_torch_dataloader(tiny_dm_factory):
    dm = tiny_dm_factory(num_workers=1, batch_size=64)
    dm.setup("fit")
    loader = dm.val_dataloader()
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert torch.equal(torch.cat([y for _, y in loader]), dm.splits["val"][1])


@pytest.mark.parametrize("shuffle", [True, False])
def test_ranks_see_distinct_shards(shuffle):
    x = torch.arange(101)
    shards = [torch.cat([b for (b,) in TensorBatchLoader((x,), 8, shuffle=shuffle, seed=3, rank=r, world_size=2)]) for r in range(2)]
    if shuffle:  # equal lengths (DDP steps in lockstep); padding repeats at most one sample
        assert len(shards[0]) == len(shards[1]) == 51
        assert set(shards[0].tolist()) | set(shards[1].tolist()) == set(range(101))
        assert len(set(shards[0].tolist()) & set(shards[1].tolist())) <= 1
    else:  # evaluation: every sample exactly once
        assert sorted(torch.cat(shards).tolist()) == list(range(101))


def test_setup_rejects_val_size_not_smaller_than_training_set(tiny_dm_factory):
    dm = tiny_dm_factory(val_size=240)
    with pytest.raises(ConfigError, match=r"data.val_size=240 must be smaller than the 240 training samples"):
        dm.setup("fit")


def test_batches_reach_the_device_without_copies(tiny_dm_factory):
    dm = tiny_dm_factory(batch_size=30)
    dm.setup()
    dm.group_train_batches(3)
    group = next(iter(dm.train_dataloader()))
    moved = dm.transfer_batch_to_device(group, torch.device("cpu"), 0)
    assert len(moved) == 3 and all(
        torch.equal(a, b) for batch, same in zip(group, moved, strict=True) for a, b in zip(batch, same, strict=True)
    )
    x, y = group[0]
    assert dm.transfer_batch_to_device((x, y), torch.device("cpu"), 0)[0] is x  # already there: no copy
    # anything else is Lightning's business (here: a dict of tensors)
    assert dm.transfer_batch_to_device({"x": x}, torch.device("cpu"), 0)["x"] is x


def test_evaluation_batches_default_to_the_training_batch_size_and_pin_memory_reaches_the_dataloader(tiny_dm_factory):
    dm = tiny_dm_factory(batch_size=16)
    dm.setup("fit")
    assert dm.val_dataloader().batch_size == 16 and len(dm.val_dataloader()) == 3  # 40 validation samples
    dm = tiny_dm_factory(batch_size=16, eval_batch_size=40)
    dm.setup("fit")
    assert len(dm.val_dataloader()) == 1
    dm = tiny_dm_factory(num_workers=1, pin_memory=True)
    dm.setup("fit")
    assert dm.val_dataloader().pin_memory and not tiny_dm_factory(num_workers=1).hparams.pin_memory


@pytest.mark.parametrize(
    ("stage", "limit", "kwargs", "expected"),
    [
        (
            "val",
            0.1,
            {"eval_batch_size": 64},
            "trainer.limit_val_batches=0.1 of the 1 val batches (data.eval_batch_size=64) is less than one batch; set data.eval_batch_size to at most 4, or",
        ),
        (
            "val",
            0.5,
            {"batch_size": 8, "eval_batch_size": 40},
            "set data.eval_batch_size to at most 20 (or leave it unset: the training batch size), or",
        ),
        (
            "train",
            0.1,
            {},
            "trainer.limit_train_batches=0.1 of the 7 train batches (data.batch_size=32) is less than one batch; set data.batch_size to at most 20, or",
        ),
        (
            "test",
            0.25,
            {"eval_batch_size": 60},
            "trainer.limit_test_batches=0.25 of the 1 test batches (data.eval_batch_size=60) is less than one batch; set data.eval_batch_size to at most 15",
        ),
    ],
)
def test_a_fraction_of_the_batches_below_one_batch_names_the_batch_size_that_makes_it_one(tiny_dm_factory, stage, limit, kwargs, expected):
    from tests.conftest import quiet_trainer

    dm = tiny_dm_factory(**kwargs)
    dm.trainer = quiet_trainer(".", **{f"limit_{stage}_batches": limit})
    dm.setup("fit")
    with pytest.raises(ConfigError) as refused:
        getattr(dm, f"{stage}_dataloader")()
    assert expected in str(refused.value)
    # the suggested size gives at least one batch of that fraction
    suggested = int(str(refused.value).split("at most ")[1].split()[0].rstrip(","))
    samples = {"train": 200, "val": 40, "test": 60}[stage]
    assert int(limit * -(-samples // suggested)) >= 1
    dm.trainer = quiet_trainer(".", **{f"limit_{stage}_batches": 1.0})
    getattr(dm, f"{stage}_dataloader")()  # (the whole split is one batch or more)
