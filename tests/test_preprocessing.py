"""Pre-processing fitted on the training split: every kind, and its trip through a checkpoint."""

import pytest
import torch

from mlplab import LitMLP
from mlplab.data.preprocessing import Preprocessor, deskew_images, fit_preprocessor, pca_spectrum
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
    with pytest.raises(ConfigError, match=r"data.pca_components=20 has no effect with data.normalize='standardize'"):
        tiny_dm_factory(normalize="standardize", pca_components=20)
    assert tiny_dm_factory(normalize="zca_whiten", pca_components=20).input_dim == 784


def _ink_moments(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Centre of mass (row, col) and row/col covariance of each (N, H, W) image."""
    rows = torch.arange(images.shape[1], dtype=torch.float64).view(1, -1, 1)
    cols = torch.arange(images.shape[2], dtype=torch.float64).view(1, 1, -1)
    ink = images.double()
    mass = ink.sum((1, 2))
    row_mean, col_mean = (ink * rows).sum((1, 2)) / mass, (ink * cols).sum((1, 2)) / mass
    covariance = (ink * (rows - row_mean.view(-1, 1, 1)) * (cols - col_mean.view(-1, 1, 1))).sum((1, 2)) / mass
    return row_mean, col_mean, covariance


def test_deskew_straightens_slanted_strokes_and_centres_them():
    images = torch.zeros(3, 1, 28, 28)
    for row in range(4, 24):  # strokes leaning right, leaning left (off-centre), and upright
        images[0, 0, row, 18 - (row - 4) // 2 : 21 - (row - 4) // 2] = 1
        images[1, 0, row, 3 + (row - 4) // 3 : 6 + (row - 4) // 3] = 1
        images[2, 0, row, 12:16] = 1
    _row_before, col_before, covariance_before = _ink_moments(images[:, 0])
    assert covariance_before[0] < -5 and covariance_before[1] > 5 and col_before[1] < 9
    row_after, col_after, covariance_after = _ink_moments(deskew_images(images)[:, 0])
    torch.testing.assert_close(covariance_after, torch.zeros(3, dtype=torch.float64), atol=0.3, rtol=0)
    torch.testing.assert_close(row_after, torch.full((3,), 13.5, dtype=torch.float64), atol=0.1, rtol=0)
    torch.testing.assert_close(col_after, torch.full((3,), 13.5, dtype=torch.float64), atol=0.1, rtol=0)
    # an upright stroke centred on the image is resampled at the pixel centres: unchanged
    torch.testing.assert_close(deskew_images(images[2:]), images[2:], atol=1e-5, rtol=0)
    assert deskew_images(torch.zeros(2, 28, 28)).abs().max() == 0  # blank stays blank, (N, H, W) accepted


def test_deskewing_preprocessor_fits_on_deskewed_images_and_accepts_flat_inputs():
    x = torch.rand(200, 1, 28, 28) ** 4
    preprocessor = fit_preprocessor("standardize", x, deskew=True)
    deskewed = deskew_images(x).flatten(1)
    expected = (deskewed - deskewed.double().mean().float()) / deskewed.double().std().float()
    torch.testing.assert_close(preprocessor(x), expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(preprocessor(x.flatten(1)), expected, atol=1e-4, rtol=1e-4)
    with pytest.raises(ConfigError, match=r"deskew=True needs single-channel images \(N, 1, H, W\); these inputs have shape \(200, 784\)"):
        fit_preprocessor("standardize", x.flatten(1), deskew=True)


def test_state_dict_saved_before_deskewing_existed_loads_without_deskewing():
    old = fit_preprocessor("standardize", torch.rand(50, 1, 28, 28)).state_dict()
    del old["deskew_shape"]
    restored = Preprocessor()
    restored.load_state_dict(old)  # strict: the missing buffer means "no deskewing"
    assert restored.image_size is None and restored.is_fitted


@pytest.mark.parametrize(("kind", "deskew"), [("pca_whiten", False), ("zca_whiten", False), ("scale", False), ("standardize", True)])
def test_fitted_transform_is_restored_from_checkpoint(tiny_dm_factory, tmp_path, kind, deskew):
    dm = tiny_dm_factory(normalize=kind, pca_components=16 if kind == "pca_whiten" else None, deskew=deskew)
    model = LitMLP(input_dim=dm.input_dim, hidden_dims=[8])
    trainer = quiet_trainer(tmp_path, max_epochs=1)
    trainer.fit(model, datamodule=dm)
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    restored = LitMLP.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True).eval()
    x = dm.splits["test"][0][:10]
    assert torch.allclose(restored.preprocessor(x), dm.preprocessor(x), atol=1e-5)
    assert restored.preprocessor.image_size == ((28, 28) if deskew else None)
    assert torch.allclose(restored(x), model.eval()(x), atol=1e-5)


def test_a_cached_spectrum_is_bit_for_bit_the_computed_one_and_serves_every_pca_size(tmp_path, correlated, monkeypatch):
    from mlplab.data import spectrum_cache

    computed = pca_spectrum(correlated)
    monkeypatch.setattr(spectrum_cache, "_folder", None)
    spectrum_cache.use_folder(tmp_path)
    first = pca_spectrum(correlated)  # computed and stored
    (entry,) = tmp_path.glob("spectrum-*.pt")
    calls = []
    monkeypatch.setattr("mlplab.data.preprocessing._compute_spectrum", lambda x: calls.append(x) or computed)
    loaded = [fit_preprocessor("pca", correlated, k) for k in (3, 7)]  # both served by the stored entry
    assert calls == [] and all(torch.equal(a, b) for a, b in zip(first, computed, strict=True))
    plain = [Preprocessor().set_(computed[0], torch.ones(1), computed[2][:, :k]) for k in (3, 7)]
    assert all(torch.equal(a(correlated), b(correlated)) for a, b in zip(loaded, plain, strict=True))
    pca_spectrum(correlated + 1e-3)  # other data: another entry, computed
    assert len(calls) == 1 and len(list(tmp_path.glob("spectrum-*.pt"))) == 2 and entry.is_file()
    key = spectrum_cache.key_of(correlated)
    monkeypatch.setattr(torch, "get_num_threads", lambda: 97)  # another thread count would compute other last bits
    assert spectrum_cache.key_of(correlated) != key
