"""OOD score: flags shifted / scaled / off-subspace films and few held-out in-distribution ones, the
threshold is the validation quantile, files round-trip without pickle, bad input is refused, and
the pooled features of a tiny SCXNN have the right shape. Synthetic data; fast on one CPU thread."""

from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from scxnn import ood
from scxnn.models import SCXNN

D, RANK, NOISE = 64, 8, 0.1


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


class World:
    """In-distribution films: x = mu + W z + noise, W a random D x RANK basis (low rank + noise)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        q, _ = np.linalg.qr(self.rng.normal(size=(D, D)))
        self.basis, self.complement = q[:, :RANK], q[:, RANK:]  # orthonormal: span(W) and its complement
        self.loadings = self.basis * np.linspace(3.0, 1.0, RANK)  # distinct variances per direction
        self.mu = self.rng.normal(size=D)

    def films(self, n: int, z_scale: float = 1.0) -> np.ndarray:
        z = self.rng.normal(size=(n, RANK)) * z_scale
        return self.mu + z @ self.loadings.T + NOISE * self.rng.normal(size=(n, D))


@pytest.fixture(scope="module")
def world():
    w = World()
    train, val, test = w.films(300), w.films(100), w.films(100)
    return w, train, val, test


@pytest.fixture(scope="module")
def fitted(world):
    _, train, val, _ = world
    return ood.fit(train, val, n_components=32, quantile=0.99)


def test_flags_ood_sets_and_few_in_distribution(world, fitted):
    w, _, _, test = world
    assert ood.flags(fitted, test).mean() <= 0.05  # ~1 - quantile of held-out in-distribution films
    direction = w.rng.normal(size=D)
    direction /= np.linalg.norm(direction)
    other = World(seed=1)  # a different low-rank structure (another "kind of image")
    ood_sets = {
        "shifted": w.films(100) + 3.0 * direction,
        "scaled": w.mu + 3.0 * (w.films(100) - w.mu),
        "other_structure": w.mu + (other.films(100) - other.mu),
    }
    for name, x in ood_sets.items():
        assert ood.flags(fitted, x).mean() > 0.9, name
    assert np.median(fitted.score(test)) < fitted.threshold < min(np.median(fitted.score(x)) for x in ood_sets.values())


def test_both_terms_matter(world):
    """Off the PCA subspace only (same projections) -> only the residual term sees it; inside the
    subspace but too far out (same residuals) -> only the Mahalanobis term sees it. The sum flags both."""
    w, train, val, _ = world
    model = ood.fit(train, val, n_components=RANK, quantile=0.99)  # the PCA subspace ~ span(W)

    # Built on the fitted PCA (mean mu, components V) so each set differs from held-out films in one
    # respect only. Off-subspace: add 2.0 of length orthogonal to the subspace (projections unchanged).
    films = w.films(100)
    off = w.rng.normal(size=(100, D))
    off -= (off @ model.components.T) @ model.components
    off_subspace = films + 2.0 * off / np.linalg.norm(off, axis=1, keepdims=True)
    # In-subspace: 5x the projections, the residuals kept (an atypical position, a typical distance).
    s = (films - model.mean) @ model.components.T
    in_subspace = films + 4.0 * s @ model.components
    np.testing.assert_allclose(model.terms(in_subspace)[:, 1], model.terms(films)[:, 1], atol=1e-9)
    np.testing.assert_allclose(model.terms(off_subspace)[:, 0], model.terms(films)[:, 0], atol=1e-9)

    terms_off, terms_in = model.terms(off_subspace), model.terms(in_subspace)
    z99 = 2.33  # robust z-scores: a term alone beyond this is rare for in-distribution films
    assert (terms_off[:, 0] > z99).mean() < 0.1 and (terms_off[:, 1] > z99).mean() > 0.9
    assert (terms_in[:, 1] > z99).mean() < 0.1 and (terms_in[:, 0] > z99).mean() > 0.9
    assert ood.flags(model, off_subspace).mean() > 0.9
    assert ood.flags(model, in_subspace).mean() > 0.9
    np.testing.assert_allclose(model.score(off_subspace), terms_off.sum(axis=1))


def test_threshold_is_the_validation_quantile(world, fitted):
    _, train, val, _ = world
    assert fitted.threshold == np.quantile(fitted.score(val), 0.99)
    assert (fitted.n_fit, fitted.n_val, fitted.quantile) == (300, 100, 0.99)
    other_q = ood.fit(train, val, quantile=0.9)
    assert other_q.threshold == np.quantile(other_q.score(val), 0.9)
    assert other_q.threshold < fitted.threshold
    # Only training and validation films go in: there is no way to pass test films.
    assert list(inspect.signature(ood.fit).parameters)[:2] == ["train_features", "val_features"]
    assert not any("test" in p for p in inspect.signature(ood.fit).parameters)
    # Deterministic: the same data gives the same model.
    again = ood.fit(train, val, n_components=32, quantile=0.99)
    assert again.threshold == fitted.threshold
    np.testing.assert_array_equal(again.precision, fitted.precision)


def test_components_capped_and_model_read_only(world):
    _, train, val, _ = world
    small = ood.fit(train[:12], val, n_components=32)
    assert small.components.shape == (11, D) and small.n_fit == 12  # k <= N - 1
    wide = ood.fit(train, val, n_components=500)
    assert wide.components.shape == (D, D)  # k <= D: the residual term is then ~0 and inert
    assert np.all(np.isfinite(wide.score(val)))
    with pytest.raises(ValueError):
        small.mean[0] = 1.0  # read-only arrays: a fitted model cannot be changed in place


def test_non_finite_films_are_always_flagged(world, fitted):
    _, _, _, test = world
    x = test[:4].copy()
    x[1, 3], x[2, 0] = np.nan, np.inf
    s = fitted.score(x)
    assert np.isinf(s[1]) and np.isinf(s[2]) and np.all(np.isfinite(s[[0, 3]]))
    assert ood.flags(fitted, x)[[1, 2]].all()


def test_save_load_round_trip(tmp_path, world, fitted):
    _, _, _, test = world
    path = tmp_path / "sub" / "ood.npz"
    ood.save(fitted, path)
    assert path.is_file() and not [p for p in path.parent.iterdir() if p.name != "ood.npz"]  # no temp left
    loaded = ood.load(path)
    np.testing.assert_array_equal(loaded.score(test), fitted.score(test))
    for name in ("mean", "components", "location", "precision", "center", "scale"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(fitted, name))
    assert (loaded.threshold, loaded.quantile, loaded.n_fit, loaded.n_val) == (fitted.threshold, fitted.quantile, fitted.n_fit, fitted.n_val)
    with np.load(path, allow_pickle=False) as z:  # plain arrays only; scalars are 0-d
        assert all(z[k].dtype != object for k in z.files)
        assert z["threshold"].shape == () and z["n_fit"].shape == ()


def test_tampered_files_are_refused(tmp_path, fitted):
    good = tmp_path / "good.npz"
    ood.save(fitted, good)
    with np.load(good, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}

    hostile = tmp_path / "hostile.npz"
    np.savez(hostile, **{**arrays, "threshold": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(ValueError, match="refused"):
        ood.load(hostile)
    with pytest.raises(ValueError):  # numpy itself refuses the object array without allow_pickle
        with np.load(hostile, allow_pickle=False) as z:
            z["threshold"]

    missing = tmp_path / "missing.npz"
    np.savez(missing, **{k: v for k, v in arrays.items() if k != "precision"})
    with pytest.raises(ValueError, match="not an OOD model file"):
        ood.load(missing)
    bad_shape = tmp_path / "bad_shape.npz"
    np.savez(bad_shape, **{**arrays, "precision": arrays["precision"][:-1]})
    with pytest.raises(ValueError, match="precision"):
        ood.load(bad_shape)


def test_bad_input_is_refused(world):
    _, train, val, test = world
    with pytest.raises(ValueError, match="too few training films"):
        ood.fit(train[:9], val)
    with pytest.raises(ValueError, match="too few validation films"):
        ood.fit(train, val[:1])
    for which in ("train", "val"):
        x = (train if which == "train" else val).copy()
        x[5, 7] = np.nan
        args = (x, val) if which == "train" else (train, x)
        with pytest.raises(ValueError, match="NaN/inf"):
            ood.fit(*args)
    with pytest.raises(ValueError, match="features per film"):
        ood.fit(train, val[:, :10])
    with pytest.raises(ValueError, match="quantile"):
        ood.fit(train, val, quantile=1.0)
    model = ood.fit(train, val)
    with pytest.raises(ValueError, match="features per film"):
        model.score(test[:, :10])


@pytest.mark.parametrize("channels_last", [False, True])
def test_pooled_features_of_a_tiny_scxnn(channels_last):
    torch.manual_seed(0)
    model = SCXNN(backbone="densenet121", num_classes=3, decoder="reconstruction").eval()
    x = torch.rand(2, 1, 64, 64)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    f = ood.pooled_features(model, x)
    assert f.shape == (2, 1024) and f.dtype == torch.float32 and torch.isfinite(f).all()
    with torch.inference_mode():
        expected = model.forward_features(x)[-1].mean(dim=(2, 3))
    torch.testing.assert_close(f, expected)
    both = ood.ensemble_features([model, model], x)
    assert both.shape == (2, 2048) and both.dtype == np.float64
    np.testing.assert_allclose(both[:, :1024], f.numpy(), rtol=1e-6)
    with pytest.raises(ValueError, match="eval"):
        ood.pooled_features(model.train(), x)


# --------------------------------------------------------------------------- the batch-level check


@pytest.mark.parametrize("films, flagged, shifted", [
    (1, 1, False),  # one film is judged by its own flag alone
    (2, 2, True),
    (20, 5, False),
    (20, 7, True),
    (500, 15, False),  # 3% flagged: an in-distribution batch with a few odd films
    (309, 117, True),  # the synthetic demo's abnormal films through the Kermany run: 38% flagged
    (800, 413, True),  # adult tuberculosis films through the pediatric run: 52% flagged
])
def test_batch_shift_calls_a_batch_shifted_only_on_evidence(films, flagged, shifted):
    b = ood.batch_shift(np.r_[np.ones(flagged, bool), np.zeros(films - flagged, bool)], 0.01, 90, 0.10, 0.01)
    assert b.shifted == shifted and b.films == films and b.flagged == flagged
    assert ("out of distribution" in b.describe()) == shifted and f"{flagged / films:.0%} of {films} films" in b.describe()


def test_batch_tolerance_follows_a_reference_that_is_itself_often_flagged():
    # A site certified on a sample with 30% flagged films: 35% in a batch is that site, not a shift.
    b = ood.batch_shift(np.r_[np.ones(35, bool), np.zeros(65, bool)], 0.30, 400, 0.10, 0.01)
    assert b.tolerance > 0.30 and not b.shifted
    assert ood.batch_shift(np.zeros(0, bool), 0.01, 90, 0.1, 0.01).shifted is False  # no scored film, no verdict
