"""Pre-processing fitted on the training split: every kind, and its trip through a checkpoint."""

import pytest
import torch

from mlplab import LitMLP
from mlplab.data.preprocessing import fit_preprocessor, pca_spectrum
from mlplab.errors import ConfigError
from tests.conftest import quiet_trainer


@pytest.fixture(scope="module")
def correlated() -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    mixing = torch.randn(12, 12, generator=generator)
    return torch.randn(4000, 12, generator=generator) @ mixing + 3.0


def _covariance(z: torch.Tensor) -> torch.Tensor:
    z = z.double() - z.double().mean(0)
    return z.T @ z / (len(z) - 1)


def test_scale_maps_training_range_onto_minus_one_one():
    x = torch.rand(500, 1, 28, 28) * 0.8 + 0.1
    z = fit_preprocessor("scale", x)(x)
    assert z.min().item() == pytest.approx(-1.0, abs=1e-5) and z.max().item() == pytest.approx(1.0, abs=1e-5)


def test_pca_output_dimension_and_explained_variance(correlated):
    pca = fit_preprocessor("pca", correlated, components=5)
    z = pca(correlated)
    assert z.shape == (4000, 5) and pca.output_dim(12) == 5
    _, eigenvalues, _ = pca_spectrum(correlated)
    explained = z.double().var(0).sum() / correlated.double().var(0).sum()
    assert explained.item() == pytest.approx((eigenvalues[:5].sum() / eigenvalues.sum()).item(), rel=1e-4)
    cov = _covariance(z)
    assert torch.allclose(cov - torch.diag(torch.diag(cov)), torch.zeros_like(cov), atol=1e-3)  # decorrelated
    assert (torch.diag(cov)[:-1] >= torch.diag(cov)[1:]).all()  # ordered by variance


@pytest.mark.parametrize(("kind", "components"), [("pca_whiten", 6), ("zca_whiten", None)])
def test_whitened_training_features_have_identity_covariance(correlated, kind, components):
    z = fit_preprocessor(kind, correlated, components=components, eps=0.0)(correlated)
    assert z.shape[1] == (components or 12)
    assert torch.allclose(_covariance(z), torch.eye(z.shape[1], dtype=torch.float64), atol=2e-3)


def test_zca_stays_closest_to_the_input(correlated):
    zca = fit_preprocessor("zca_whiten", correlated, eps=0.0)(correlated)
    pca = fit_preprocessor("pca_whiten", correlated, components=12, eps=0.0)(correlated)
    centred = correlated - correlated.mean(0)
    scale = centred.norm() / zca.norm()
    assert (zca * scale - centred).norm() < (pca * scale - centred).norm()


def test_datamodule_pca_changes_input_dim_and_validates(tiny_dm_factory):
    dm = tiny_dm_factory(normalize="pca", pca_components=20)
    assert dm.input_dim == 20 and dm.raw_input_dim == 784
    with pytest.raises(ConfigError, match=r"data.pca_components=785 is not allowed; it must be in 1..784, the input size"):
        tiny_dm_factory(normalize="pca", pca_components=785)
    with pytest.raises(ConfigError, match=r"data.normalize='pca' needs data.pca_components"):
        tiny_dm_factory(normalize="pca")


@pytest.mark.parametrize("kind", ["pca_whiten", "zca_whiten", "scale"])
def test_fitted_transform_is_restored_from_checkpoint(tiny_dm_factory, tmp_path, kind):
    dm = tiny_dm_factory(normalize=kind, pca_components=16 if kind == "pca_whiten" else None)
    model = LitMLP(input_dim=dm.input_dim, hidden_dims=[8])
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = LitMLP.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    x = dm.splits["test"][0][:10]
    assert torch.allclose(restored.preprocessor(x), dm.preprocessor(x), atol=1e-5)
    assert torch.allclose(restored(x), model.eval()(x), atol=1e-5)
