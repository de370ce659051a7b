"""``data.storage = "uint8"``: image features kept as 8-bit codes, read 1 byte per feature.

The LAQ pipeline's features are ``pixels / 255``: its codes are the pixels themselves, and a run differs
from the float run only by the rounding of the products' regrouping (``(u W) / 255`` for ``(u / 255) W``).
The STC pipeline interpolates: its codes are the resized pixels rounded to 1/255 steps (as the STC reference
code's PIL resize did), half a grey level at most. Both are checked against the float path and, through the
model's own oracle tests (tests/models/test_softmax.py), against torch autograd.
"""

import numpy as np
import pytest

from fedsim.algorithms.federated import FederatedConfig, FederatedRun
from fedsim.algorithms.lazy import LazyConfig, LazyRun, records_to_arrays
from fedsim.data.dataset import Dataset
from fedsim.data.preprocess import PIXEL_STATISTICS, laq_pipeline, stc_pipeline
from fedsim.experiment_data import DataConfig, pixel_affine, split_among_clients, stored_as_codes, to_codes
from fedsim.models import ModelConfig
from fedsim.models.features import Codes
from tests.conftest import synthetic_images


def _dataset(pipeline: str, n_train=1200, n_test=300) -> tuple[Dataset, np.ndarray]:
    images, labels = synthetic_images(n_train + n_test, seed=21)
    if pipeline == "laq":
        x = laq_pipeline(images)
    else:
        stats = PIXEL_STATISTICS["fashion-mnist"]
        x = stc_pipeline(images, size=32, mean=stats.mean, std=stats.std)
    dataset = Dataset("fashion-mnist", x[:n_train], labels[:n_train], x[n_train:], labels[n_train:], 10)
    return dataset, images


def test_laq_codes_are_the_pixels_and_stc_codes_the_rounded_resized_pixels():
    dataset, images = _dataset("laq")
    stored = stored_as_codes(dataset, "laq")
    assert isinstance(stored.x_train, Codes) and stored.x_train.codes.dtype == np.uint8
    np.testing.assert_array_equal(stored.x_train.codes, images[:1200].reshape(1200, 784))
    np.testing.assert_allclose(stored.x_train.decode(), dataset.x_train, rtol=0, atol=2e-16)
    assert stored.x_train.dtype == np.float64 and "8-bit codes" in stored.description

    dataset, _ = _dataset("stc")
    stored = stored_as_codes(dataset, "stc")
    scale, offset = pixel_affine("fashion-mnist", "stc")
    # Half a grey level of the resized image, in normalized units (plus float32 rounding).
    assert np.abs(stored.x_test.decode() - dataset.x_test).max() <= 0.5 * scale + 1e-5
    assert stored.x_test.dtype == np.float32


def test_features_outside_the_8_bit_range_are_refused():
    with pytest.raises(ValueError, match="8-bit range"):
        to_codes(np.array([[0.0, 1.5]]), 1 / 255, 0.0)
    with pytest.raises(ValueError, match="storage must be one of"):
        DataConfig(storage="int4")
    with pytest.raises(ValueError, match="storage 'uint8' needs an 8-bit image dataset"):
        DataConfig(dataset="synthetic", storage="uint8")


@pytest.mark.parametrize("method", ["laq", "gd"])
def test_a_lazy_run_on_codes_follows_the_float_run_to_rounding(method):
    dataset, _ = _dataset("laq")
    config = LazyConfig(method=method, n_workers=4, iterations=40, eval_every=10)
    floats = LazyRun(config, dataset, model_config=ModelConfig(init="glorot"))
    codes = LazyRun(config, stored_as_codes(dataset, "laq"), model_config=ModelConfig(init="glorot"))
    float_history, code_history = (records_to_arrays(run.run(), config.n_workers) for run in (floats, codes))
    np.testing.assert_allclose(code_history["objective"], float_history["objective"], rtol=1e-12)
    np.testing.assert_allclose(codes.theta, floats.theta, rtol=1e-9, atol=1e-12)
    # The upload decisions compare innovations with a threshold; none sits within rounding of it here.
    np.testing.assert_array_equal(code_history["uploads"], float_history["uploads"])


def test_a_federated_run_on_codes_stays_within_half_a_grey_level_of_the_float_run():
    dataset, _ = _dataset("stc")
    stored = stored_as_codes(dataset, "stc")
    config = FederatedConfig(method="fedavg", rounds=30, n_clients=10, batch_size=20, eval_every=10,
                             eval_train_samples=300)
    data_config = DataConfig(dataset="fashion-mnist", partition="iid")
    runs = [FederatedRun(config, data, split_among_clients(data_config, data, 10, seed=0), seed=0)
            for data in (dataset, stored)]
    histories = [run.run() for run in runs]
    for a, b in zip(*histories):
        assert a["bits_up"] == b["bits_up"] and a["participants"] == b["participants"]
        np.testing.assert_allclose(b["client_losses"], a["client_losses"], rtol=2e-3, atol=1e-4)
    final = [history[-1] for history in histories]
    assert abs(final[0]["test_accuracy"] - final[1]["test_accuracy"]) <= 0.02
    np.testing.assert_allclose(runs[1].server.weights, runs[0].server.weights, rtol=0, atol=5e-3)
