"""The plain MLP: shapes, layer structure, options and their validation."""

import pytest
import torch
from torch import nn

from mlplab.errors import ConfigError
from mlplab.models import MLP


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
    block = MLP(10, [8], 2, batch_norm=True, dropout=0.5).hidden[0]
    assert [type(m) for m in block] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Dropout]
    assert block[0].bias is None  # redundant before batch norm


def test_normal_init_std():
    net = MLP(784, [256], 10, init="normal", init_std=0.01)
    assert abs(net.hidden[0][0].weight.std().item() - 0.01) < 5e-4


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"activation": "swish"}, r"model.activation='swish' is not a known activation; allowed: relu"),
        ({"dropout": 1.0}, r"model.dropout=1.0 is not allowed; it must be in \[0, 1\)"),
        ({"hidden_dims": [64, 0]}, r"layer widths must be positive integers"),
        ({"init": "orthogonal"}, r"model.init='orthogonal' is not a known initialisation"),
    ],
)
def test_bad_options_name_value_and_allowed(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        MLP(**{"input_dim": 784, "hidden_dims": [64], "output_dim": 10, **kwargs})
