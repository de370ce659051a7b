"""Preprocessing: bilinear matrices by hand, resize and the STC pipeline against torch, the LAQ pipeline."""

import gzip

import numpy as np
import pytest

from fedsim.data.preprocess import (PIXEL_STATISTICS, bilinear_matrix, laq_pipeline, pixel_statistics,
                                    resize_bilinear, stc_pipeline)


def _read_gzip_idx_images(path, count=None):
    """A minimal independent reader of a gzip IDX uint8 image file (magic 0x00000803)."""
    raw = gzip.decompress(path.read_bytes())
    assert raw[:4] == b"\x00\x00\x08\x03", raw[:4]
    n, rows, cols = np.frombuffer(raw[4:16], dtype=">u4")
    images = np.frombuffer(raw[16:], dtype=np.uint8).reshape(int(n), int(rows), int(cols))
    return images if count is None else images[:count]


# ----------------------------------------------------------------------------------------------- matrices

@pytest.mark.parametrize("n_in, n_out, expected", [
    # 2 -> 4: src = (i + 0.5) / 2 - 0.5 = -0.25, 0.25, 0.75, 1.25; clamp below at 0, above at the last pixel
    (2, 4, [[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]]),
    # 4 -> 2: src = (i + 0.5) * 2 - 0.5 = 0.5, 2.5: the mean of each pair (no antialiasing)
    (4, 2, [[0.5, 0.5, 0.0, 0.0], [0.0, 0.0, 0.5, 0.5]])])
def test_bilinear_matrix_hand_computed(n_in, n_out, expected):
    np.testing.assert_allclose(bilinear_matrix(n_in, n_out), expected, rtol=0, atol=1e-15)


@pytest.mark.parametrize("n_in, n_out", [(28, 32), (32, 28), (1, 5), (5, 1), (7, 7), (3, 100)])
def test_bilinear_matrix_rows_are_convex_weights(n_in, n_out):
    matrix = bilinear_matrix(n_in, n_out)
    assert matrix.shape == (n_out, n_in)
    assert matrix.min() >= 0
    np.testing.assert_allclose(matrix.sum(axis=1), 1.0, rtol=0, atol=1e-14)
    assert ((matrix > 0).sum(axis=1) <= 2).all()


def test_bilinear_matrix_same_size_is_identity_and_dtype_is_kept():
    np.testing.assert_array_equal(bilinear_matrix(9, 9), np.eye(9))
    assert bilinear_matrix(28, 32, np.float32).dtype == np.float32


# ----------------------------------------------------------------------------------------------- resize

def test_resize_equals_one_image_at_a_time_and_keeps_dtype_and_constant_images():
    rng = np.random.default_rng(0)
    images = rng.random((5, 6, 9))
    resized = resize_bilinear(images, 4, 11)
    rows, cols = bilinear_matrix(6, 4), bilinear_matrix(9, 11)
    expected = np.stack([rows @ image @ cols.T for image in images])
    np.testing.assert_allclose(resized, expected, rtol=1e-13, atol=1e-14)
    assert resized.dtype == np.float64
    assert resize_bilinear(images.astype(np.float32), 4, 11).dtype == np.float32
    # constant images stay constant
    np.testing.assert_allclose(resize_bilinear(np.full((3, 28, 28), 0.37), 32, 17), 0.37, rtol=1e-14)


@pytest.mark.oracle
@pytest.mark.parametrize("dtype, tol", [(np.float32, 1e-5), (np.float64, 1e-12)])
@pytest.mark.parametrize("shape, out", [((28, 28), (32, 32)), ((28, 28), (14, 14)), ((28, 28), (20, 37)),
                                        ((13, 7), (5, 19)), ((32, 32), (28, 28)), ((1, 6), (4, 1))])
def test_resize_matches_torch_interpolate(torch, dtype, tol, shape, out):
    images = np.random.default_rng(1).random((6,) + shape).astype(dtype)
    ours = resize_bilinear(images, *out)
    reference = torch.nn.functional.interpolate(torch.from_numpy(images)[:, None], size=out, mode="bilinear",
                                                align_corners=False)[:, 0].numpy()
    assert ours.shape == reference.shape == (6,) + out
    err = np.abs(ours - reference).max()
    assert err <= tol, f"max |fedsim - torch| = {err}\nfedsim {ours[0]}\ntorch {reference[0]}"


# ----------------------------------------------------------------------------------------------- pipelines

def _pixels(count=7, size=28, seed=2):
    return np.random.default_rng(seed).integers(0, 256, size=(count, size, size), dtype=np.uint8)


def test_stc_pipeline_is_the_documented_formula_across_chunks_with_the_recorded_statistics(monkeypatch):
    import fedsim.data.preprocess as preprocess
    assert PIXEL_STATISTICS["mnist"][:2] == (0.06078, 0.1957)
    for name, stats in PIXEL_STATISTICS.items():
        assert 0 < stats.mean < 1 and 0 < stats.std < 1 and stats.source, name
    images = _pixels(23, seed=5)
    resized = resize_bilinear(images / 255.0, 32, 32)
    monkeypatch.setattr(preprocess, "_CHUNK_IMAGES", 4)  # several chunks, the last one short
    features = stc_pipeline(images, dtype=np.float64)
    assert features.shape == (23, 1024) and features.dtype == np.float64
    np.testing.assert_allclose(features, ((resized - 0.06078) / 0.1957).reshape(23, 1024), rtol=1e-13, atol=1e-13)
    assert stc_pipeline(images).dtype == np.float32
    mean, std = pixel_statistics(images)
    assert abs(mean - resized.mean()) < 1e-14
    assert abs(std - resized.std()) < 1e-13


def test_stc_pipeline_with_data_statistics_standardizes():
    images = _pixels(50)
    features = stc_pipeline(images, mean=None, std=None, dtype=np.float64)
    assert abs(features.mean()) < 1e-12
    assert abs(features.std() - 1.0) < 1e-12
    # only one statistic from the data: the other is taken as given
    mean, std = pixel_statistics(images)
    np.testing.assert_allclose(stc_pipeline(images, mean=None, std=0.5, dtype=np.float64),
                               stc_pipeline(images, mean=mean, std=0.5, dtype=np.float64), rtol=1e-14)


def test_laq_pipeline():
    images = _pixels(4)
    features = laq_pipeline(images)
    assert features.shape == (4, 784) and features.dtype == np.float64
    np.testing.assert_array_equal(features, images.reshape(4, 784) / 255.0)
    assert laq_pipeline(images, dtype=np.float32).dtype == np.float32


FLOATS, PIXELS = np.zeros((1, 28, 28)), np.zeros((2, 28, 28), np.uint8)
PIPELINES = (stc_pipeline, laq_pipeline, pixel_statistics)


@pytest.mark.parametrize("call, error, pattern", [
    *((lambda n_in=n_in, n_out=n_out: bilinear_matrix(n_in, n_out), error, "bilinear_matrix: n_(in|out) must be an "
       "integer >= 1") for n_in, n_out, error in [(0, 3, ValueError), (3, 0, ValueError), (2.5, 3, TypeError),
                                                   (-1, 2, ValueError)]),
    (lambda: resize_bilinear(np.zeros((28, 28)), 32, 32), ValueError, "3-D"),
    (lambda: resize_bilinear(PIXELS, 32, 32), ValueError, "floating"),
    (lambda: resize_bilinear(FLOATS, 32, 0), ValueError, "resize_bilinear: out_w must be an integer >= 1"),
    *((lambda pipeline=pipeline: pipeline(FLOATS.astype(np.float32)), ValueError, "uint8") for pipeline in PIPELINES),
    *((lambda pipeline=pipeline: pipeline(PIXELS[0]), ValueError, "3-D") for pipeline in PIPELINES),
    (lambda: stc_pipeline(PIXELS, std=0.0), ValueError, "stc_pipeline: std must be a finite number > 0"),
    (lambda: stc_pipeline(PIXELS, mean=float("nan")), ValueError, "stc_pipeline: mean must be a finite number"),
    (lambda: stc_pipeline(PIXELS, size=0), ValueError, r"size \(the output height and width\) must be an integer"),
    (lambda: stc_pipeline(PIXELS, dtype=np.int32), ValueError, "dtype"),
    (lambda: laq_pipeline(PIXELS, dtype=np.uint8), ValueError, "dtype")])
def test_bad_input_raises(call, error, pattern):
    with pytest.raises(error, match=pattern):
        call()


# ----------------------------------------------------------------------------------------------- real data

def test_fashion_mnist_statistics_are_the_recorded_ones(shared_data):
    images = _read_gzip_idx_images(shared_data / "fashion-mnist" / "train-images-idx3-ubyte.gz")
    assert images.shape == (60000, 28, 28)
    mean, std = pixel_statistics(images)
    recorded = PIXEL_STATISTICS["fashion-mnist"]
    assert abs(mean - recorded.mean) < 1e-7, (mean, recorded.mean)
    assert abs(std - recorded.std) < 1e-7, (std, recorded.std)


@pytest.mark.parametrize("source", [pytest.param("images made here", marks=pytest.mark.oracle), "Fashion-MNIST"])
def test_stc_pipeline_matches_torch(torch, request, source):
    # images made here: every machine runs it; the same check on the real files where they are
    if source == "Fashion-MNIST":
        images = _read_gzip_idx_images(request.getfixturevalue("shared_data") / "fashion-mnist" /
                                       "train-images-idx3-ubyte.gz", 2000)
    else:
        from tests.conftest import synthetic_images
        images = synthetic_images(2000, seed=3)[0]
    mean, std = PIXEL_STATISTICS["fashion-mnist"][:2]
    ours = stc_pipeline(images, mean=mean, std=std)
    scaled = torch.from_numpy(images.astype(np.float32)) / 255.0
    resized = torch.nn.functional.interpolate(scaled[:, None], size=(32, 32), mode="bilinear", align_corners=False)
    reference = ((resized - mean) / std).reshape(len(images), 1024).numpy()
    assert ours.dtype == reference.dtype == np.float32
    err = np.abs(ours - reference).max()
    assert err <= 1e-5, f"max |fedsim - torch| = {err}\nfedsim {ours[0, :8]}\ntorch {reference[0, :8]}"
    # and the statistics agree with torch's on the same pixels (float64)
    resized64 = torch.nn.functional.interpolate(scaled[:, None].double(), size=(32, 32), mode="bilinear",
                                                align_corners=False)
    ours_mean, ours_std = pixel_statistics(images)
    assert abs(ours_mean - resized64.mean().item()) < 1e-7, (ours_mean, resized64.mean().item())
    torch_std = resized64.std(correction=0).item()
    assert abs(ours_std - torch_std) < 1e-7, (ours_std, torch_std)
