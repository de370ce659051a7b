"""load_dataset: names to ready arrays, with each pipeline."""

import numpy as np

from fedsim.data.load import load_dataset


def test_fashion_mnist_with_the_stc_pipeline(shared_data):
    data = load_dataset("fashion-mnist", "stc", data_dir=shared_data, download=False)
    assert data.x_train.shape == (60_000, 1024) and data.x_train.dtype == np.float32
    assert data.x_test.shape == (10_000, 1024)
    assert np.bincount(data.y_train).tolist() == [6000] * 10
    # normalized with the recorded Fashion-MNIST statistics: the training pixels have mean ~0, std ~1
    assert abs(float(data.x_train.mean())) < 1e-3 and abs(float(data.x_train.std()) - 1) < 1e-3


def test_mnist_test_split_as_training_data_with_the_laq_pipeline(shared_data):
    data = load_dataset("mnist", "laq", data_dir=shared_data, download=False, train_split="test")
    assert data.x_train.shape == (10_000, 784) and data.x_train.dtype == np.float64
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    np.testing.assert_array_equal(data.y_train, data.y_test)
    assert "test split as training data" in data.description


def test_synthetic_needs_no_files():
    data = load_dataset("synthetic", synthetic_devices=5, seed=1)
    assert data.n_features == 60 and len(data.client_indices) == 5
    again = load_dataset("synthetic", synthetic_devices=5, seed=1)
    np.testing.assert_array_equal(data.x_train, again.x_train)
