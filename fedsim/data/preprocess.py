"""Image preprocessing of the two seeds: the STC pipeline (resize to 32x32, normalize) and the LAQ pipeline.

STC (Sattler et al., arXiv 1903.02891)::

    x = pixels / 255                      (N, 28, 28)
    x = R_h x R_w^T                       bilinear resize to (N, 32, 32), half-pixel centres
    x = (x - mean) / std                  mean, std: statistics of the resized training pixels
    x = x.reshape(N, 32 * 32)             row-major

LAQ (Sun et al., arXiv 1909.07588)::

    x = (pixels / 255).reshape(N, 784)

The resize is two small matrix products applied to the whole stack at once, never a loop over images.
The STC seed resized through PIL on uint8 images, so its resized pixels were rounded back to 1/255 steps;
fedsim resizes the floating-point pixels (the convention of ``torch.nn.functional.interpolate``), which
differs from the seed by at most half a grey level.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from fedsim.constraints import Integer, Real

# Images are resized and normalized this many at a time, to bound the memory of the temporaries.
_CHUNK_IMAGES = 8192

#: The version of this module's arithmetic, part of the key of every cached pipeline output
#: (:mod:`fedsim.data.cache`): increase it with any change that can change a bit of a pipeline's result.
PREPROCESS_VERSION = 1


class PixelStatistics(NamedTuple):
    """Mean and standard deviation used to normalize a dataset's pixels, and where they come from."""

    mean: float
    std: float
    source: str


# Statistics of the pixels after ``/ 255`` and the bilinear 28 -> 32 resize, by dataset name.
PIXEL_STATISTICS: dict[str, PixelStatistics] = {
    "mnist": PixelStatistics(
        mean=0.06078, std=0.1957,
        source="the constants of the STC reference code (its MNIST transform), kept as published; they are "
               "not the statistics of MNIST's resized pixels (the 10,000 MNIST test images give mean "
               "0.1327 and std 0.2919 by pixel_statistics), but they are what the seed normalized with"),
    "fashion-mnist": PixelStatistics(
        mean=0.2854454, std=0.3384035,
        source="computed by fedsim.data.preprocess.pixel_statistics on the 60,000 Fashion-MNIST train "
               "images: pixels / 255, bilinear resize 28 -> 32 (align_corners=False), then the mean and "
               "the population standard deviation (ddof=0) over all 61,440,000 resized pixels, "
               "accumulated in float64"),
}


def bilinear_matrix(n_in: int, n_out: int, dtype=np.float64) -> np.ndarray:
    """The (n_out, n_in) matrix of 1-D bilinear (linear) interpolation with half-pixel centres.

    Row i holds the weights of output sample i, following the ``align_corners=False`` convention of
    ``torch.nn.functional.interpolate(mode="bilinear")`` (no antialiasing when shrinking)::

        src_i = max((i + 0.5) * n_in / n_out - 0.5, 0)
        lo = floor(src_i),  hi = min(lo + 1, n_in - 1),  lambda = src_i - lo
        out_i = (1 - lambda) * in_lo + lambda * in_hi

    so the first output samples clamp to the first input sample and the last ones to the last input
    sample. Every row sums to 1. The weights are computed in float64, then cast to ``dtype``.
    """
    for name, value in (("n_in", n_in), ("n_out", n_out)):
        Integer(low=1).check(f"bilinear_matrix: {name}", value)
    out_positions = np.arange(n_out, dtype=np.float64)
    source = np.maximum((out_positions + 0.5) * (n_in / n_out) - 0.5, 0.0)
    lower = np.floor(source).astype(np.int64)  # <= n_in - 1, since source < n_in - 0.5
    upper = np.minimum(lower + 1, n_in - 1)
    weight_upper = source - lower
    matrix = np.zeros((n_out, n_in), dtype=np.float64)
    rows = np.arange(n_out)
    # add, not assign: at the last input sample lower == upper and both weights land on one entry.
    np.add.at(matrix, (rows, lower), 1.0 - weight_upper)
    np.add.at(matrix, (rows, upper), weight_upper)
    return matrix.astype(dtype, copy=False)


def resize_bilinear(images: np.ndarray, out_h: int, out_w: int) -> np.ndarray:
    """Bilinear resize of a stack of float images (N, H, W) to (N, out_h, out_w), their dtype kept:
    ``out[n] = R_h @ images[n] @ R_w^T`` for all n at once (:func:`bilinear_matrix`)."""
    images = np.asarray(images)
    if images.ndim != 3:
        raise ValueError(f"resize_bilinear: images must be 3-D (N, H, W), got shape {images.shape}")
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"resize_bilinear: images must be floating point (divide uint8 pixels by 255 "
                         f"first), got dtype {images.dtype}")
    for name, value in (("out_h", out_h), ("out_w", out_w)):
        Integer(low=1).check(f"resize_bilinear: {name}", value)
    n_images, height, width = images.shape
    rows_matrix = bilinear_matrix(height, out_h, images.dtype)   # R_h, (out_h, H)
    cols_matrix = bilinear_matrix(width, out_w, images.dtype)    # R_w, (out_w, W)
    # images @ R_w^T: one (N*H, W) x (W, out_w) product.
    along_width = images.reshape(n_images * height, width) @ cols_matrix.T
    # R_h @ (...): bring H last, one (N*out_w, H) x (H, out_h) product, then put the axes back.
    along_height = np.ascontiguousarray(along_width.reshape(n_images, height, out_w).transpose(0, 2, 1))
    resized = along_height.reshape(n_images * out_w, height) @ rows_matrix.T
    return np.ascontiguousarray(resized.reshape(n_images, out_w, out_h).transpose(0, 2, 1))


def float_dtype(dtype, prefix: str = "") -> np.dtype:
    """``dtype`` as a NumPy dtype; ValueError (the message after ``prefix``) unless it is floating point."""
    dtype = np.dtype(dtype)
    if not np.issubdtype(dtype, np.floating):
        raise ValueError(f"{prefix}dtype must be a floating-point dtype, got {dtype}")
    return dtype


def _check_pixels(images, caller: str) -> np.ndarray:
    images = np.asarray(images)
    if images.dtype != np.uint8:
        raise ValueError(f"{caller}: images must be uint8 pixels in [0, 255], got dtype {images.dtype}")
    if images.ndim != 3:
        raise ValueError(f"{caller}: images must be 3-D (N, height, width), got shape {images.shape}")
    return images


def _scaled_resized_chunks(images: np.ndarray, size: int, dtype):
    """Yield (start, chunk) with chunk = resize(images[start:start + C] / 255) of shape (C, size, size)."""
    for start in range(0, len(images), _CHUNK_IMAGES):
        scaled = images[start:start + _CHUNK_IMAGES].astype(dtype) / dtype(255)
        yield start, resize_bilinear(scaled, size, size)


def pixel_statistics(images: np.ndarray, size: int = 32) -> tuple[float, float]:
    """Mean and population standard deviation (ddof=0) of all pixels after ``/ 255`` and the resize.

    Sums are accumulated in float64 over chunks of images, so the result does not depend on the chunking
    beyond float64 rounding. ``std = sqrt(E[x^2] - E[x]^2)`` with both moments taken about a shift
    (the first chunk's mean) to avoid cancellation. ``images`` are raw uint8 pixels (N, H, W): the training
    split, to normalize without looking at the test set.
    """
    images = _check_pixels(images, "pixel_statistics")
    Integer(low=1).check("size (the output height and width)", size)
    if len(images) == 0:
        raise ValueError("pixel_statistics: images must hold at least one image, got 0")
    count = 0
    shift = None
    shifted_sum = 0.0
    shifted_square_sum = 0.0
    for _, chunk in _scaled_resized_chunks(images, size, np.float64):
        if shift is None:
            shift = float(chunk.mean())
        deviations = chunk - shift
        shifted_sum += float(deviations.sum())
        shifted_square_sum += float(np.square(deviations).sum())
        count += deviations.size
    mean_deviation = shifted_sum / count
    variance = max(shifted_square_sum / count - mean_deviation ** 2, 0.0)
    return shift + mean_deviation, float(np.sqrt(variance))


def stc_pipeline(images: np.ndarray, size: int = 32, mean: float | None = 0.06078,
                 std: float | None = 0.1957, dtype=np.float32) -> np.ndarray:
    """STC preprocessing of uint8 pixels (N, H, W): ``((resize(pixels / 255) - mean) / std).reshape(N, size ** 2)``.

    ``size`` 32 is the STC seed's (1,024 features, 10,250 softmax parameters). The default ``mean`` and
    ``std`` are the STC reference's MNIST values (``PIXEL_STATISTICS["mnist"]``); ``None`` computes that
    statistic from ``images`` (:func:`pixel_statistics`). ``dtype`` is that of the computation and the result.
    """
    images = _check_pixels(images, "stc_pipeline")
    Integer(low=1).check("size (the output height and width)", size)
    dtype = float_dtype(dtype, "stc_pipeline: ")
    if mean is None or std is None:
        data_mean, data_std = pixel_statistics(images, size)
        mean = data_mean if mean is None else mean
        std = data_std if std is None else std
    Real().check("stc_pipeline: mean", mean)
    Real(low=0, low_open=True).check("stc_pipeline: std", std)
    features = np.empty((len(images), size * size), dtype=dtype)
    mean_d, std_d = dtype.type(mean), dtype.type(std)
    for start, chunk in _scaled_resized_chunks(images, size, dtype.type):
        # (x - mean) / std, written into the flat rows of the output.
        features[start:start + len(chunk)] = ((chunk - mean_d) / std_d).reshape(len(chunk), size * size)
    return features


def laq_pipeline(images: np.ndarray, dtype=np.float64) -> np.ndarray:
    """LAQ preprocessing of uint8 pixels (N, H, W): ``(pixels / 255).reshape(N, H * W)`` (784 features for
    28x28 images), in ``dtype`` (float64, as the LAQ reference ran)."""
    images = _check_pixels(images, "laq_pipeline")
    dtype = float_dtype(dtype, "laq_pipeline: ")
    n_images, height, width = images.shape
    return images.reshape(n_images, height * width).astype(dtype) / dtype.type(255)
