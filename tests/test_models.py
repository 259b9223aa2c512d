"""The plain MLP: shapes, layer structure, options and their validation."""

import math

import pytest
import torch
from torch import nn

from mlplab.errors import ConfigError
from mlplab.models import MLP, HiddenBlock, Maxout


def test_output_shape_and_flattening():
    net = MLP(784, [64, 32], 10)
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)
    assert [m.out_features for m in net.modules() if isinstance(m, nn.Linear)] == [64, 32, 10]


def test_no_hidden_layer_is_softmax_regression():
    net = MLP(784, [], 10)
    assert [type(m) for m in net.modules() if not isinstance(m, nn.Sequential | MLP)] == [nn.Linear]


def test_identity_activation_makes_the_network_linear():
    net = MLP(20, [30, 40], 5, activation="identity")
    x, y = torch.randn(8, 20), torch.randn(8, 20)
    zero = net(torch.zeros(1, 20))
    assert torch.allclose(net(x + y) - zero, (net(x) - zero) + (net(y) - zero), atol=1e-5)


def test_batch_norm_sits_between_linear_and_activation_and_dropout_after():
    branch = MLP(10, [8], 2, batch_norm=True, dropout=0.5).hidden[0].branch
    assert [type(m) for m in branch] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert branch[0].bias is None  # redundant before batch norm


def test_normal_init_std():
    net = MLP(784, [256], 10, init="normal", init_std=0.01)
    assert abs(net.hidden[0].branch[0].weight.std().item() - 0.01) < 5e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish"}, r"model.activation='swish' is not a known activation; allowed: relu"),
        ({"dropout": 1.0}, r"model.dropout=1.0 is not allowed; it must be in \[0, 1\)"),
        ({"hidden_dims": [64, 0]}, r"every layer width must be a positive integer"),
        ({"init": "orthogonal"}, r"model.init='orthogonal' is not a known initialisation"),
    ],
)
def test_bad_options_name_value_and_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MLP(**{"input_dim": 784, "hidden_dims": [64], "output_dim": 10, **kwargs})


def test_maxout_parameter_count_and_output_is_max_over_pieces():
    layer = Maxout(6, 4, pieces=3)
    assert sum(p.numel() for p in layer.parameters()) == 3 * (6 + 1) * 4
    x = torch.randn(5, 6)
    pieces = layer[0](x).view(5, 4, 3)  # unit j owns outputs 3j..3j+2
    assert torch.equal(layer(x), pieces.max(dim=2).values)
    net = MLP(6, [4], 2, activation="maxout", maxout_pieces=3)
    assert isinstance(net.hidden[0].branch[0], Maxout) and net(x).shape == (5, 2)


def test_maxout_needs_two_pieces():
    with pytest.raises(ConfigError, match=r"model.maxout_pieces=1 is not allowed"):
        MLP(6, [4], 2, activation="maxout", maxout_pieces=1)


def test_residual_block_is_identity_when_its_branch_is_zero():
    block = HiddenBlock(16, 16, residual=True)
    nn.init.zeros_(block.branch[0].weight), nn.init.zeros_(block.branch[0].bias)
    x = torch.randn(4, 16)
    assert isinstance(block.shortcut, nn.Identity) and torch.equal(block(x), x)


def test_residual_block_projects_when_widths_differ():
    block = HiddenBlock(16, 8, residual=True)
    assert isinstance(block.shortcut, nn.Linear) and block.shortcut.bias is None
    x = torch.randn(4, 16)
    assert torch.allclose(block(x), x @ block.shortcut.weight.T + block.branch(x))


@pytest.mark.parametrize(
    ("scheme", "expected_std"),
    [
        ("normal", 0.05),
        ("uniform", 0.05),
        ("xavier_normal", math.sqrt(2 / (400 + 300))),
        ("xavier_uniform", math.sqrt(2 / (400 + 300))),
        ("kaiming_normal", math.sqrt(2 / 400)),
        ("kaiming_uniform", math.sqrt(2 / 400)),
        ("default", math.sqrt(1 / (3 * 400))),  # PyTorch: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    ],
)
def test_init_schemes_give_the_intended_weight_statistics(scheme, expected_std):
    weight = MLP(400, [300], 2, init=scheme, init_std=0.05).hidden[0].branch[0].weight
    assert abs(weight.mean().item()) < 0.02 * expected_std + 1e-4
    assert weight.std().item() == pytest.approx(expected_std, rel=0.03)
    if scheme in ("uniform", "xavier_uniform", "kaiming_uniform"):
        assert weight.abs().max().item() <= math.sqrt(3) * expected_std * 1.001


def test_sparse_init_zeros_ninety_percent_of_each_column():
    weight = MLP(400, [300], 2, init="sparse", init_std=0.05).hidden[0].branch[0].weight
    assert ((weight == 0).sum(dim=0) == 270).all()
    assert weight[weight != 0].std().item() == pytest.approx(0.05, rel=0.05)


def test_bias_init_constant():
    net = MLP(10, [8], 3, bias_init=0.1)
    assert torch.all(net.hidden[0].branch[0].bias == 0.1) and torch.all(net.output.bias == 0.1)


def test_zero_init_warns_and_hidden_units_stay_identical_after_training():
    with pytest.warns(UserWarning, match="every hidden unit starts identical"):
        net = MLP(20, [8], 3, activation="tanh", init="zeros", bias_init=0.1)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.5)
    x, y = torch.randn(64, 20), torch.randint(0, 3, (64,))
    for _ in range(20):
        optimizer.zero_grad()
        nn.functional.cross_entropy(net(x), y).backward()
        optimizer.step()
    hidden = net.hidden[0].branch[0].weight
    assert hidden.abs().sum() > 0  # it did learn something ...
    assert torch.allclose(hidden, hidden[:1].expand_as(hidden))  # ... but every unit the same thing
