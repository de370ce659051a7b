"""The fast paths added for performance (issue #5), each against its NumPy twin, bitwise.

* top-k selection guesses its candidates' bound from a strided sample of every SAMPLE_STRIDE-th entry (at
  most PIVOT_SAMPLE) on every segment longer than SHORT_SEGMENT: the result must not depend on the guess,
  including when the sampled entries are the largest ones (the guess is too high and the pass repeats);
* the LAQ kernel sums its errors in column order inside its quantization loop: ``error`` and ``innovation``
  must equal the twin's ``column_order_sum`` bitwise at every row boundary, and stay within a few ulp of
  the exactly rounded sum;
* fixed-width bit fields are written and read byte by byte, and a Golomb-Rice code word is written as one
  field: the bits around a field must survive, and the stream must equal the twin's.
"""

import math

import numpy as np
import pytest

from fedsim.kernels import bitstream, laq, selection, ternary
from tests.kernels.conftest import agree, assert_golomb_round_trip, implementations, run_laq, select, ternarized

# (150,000 > SMALL_SEGMENT and CANDIDATE_ROOM + 10: a full candidate buffer compacts for a small k)
SAMPLED_SIZES = [selection.SHORT_SEGMENT + 1, 10_240, selection.SMALL_SEGMENT, 100_000, 150_000, 200_003]


def _stride(size):
    return size // min(selection.PIVOT_SAMPLE, size // selection.SAMPLE_STRIDE)


def _sampled_inputs(size, rng):
    stride = _stride(size)
    spiky = rng.uniform(0, 1, size).astype(np.float32)
    spiky[stride // 2::stride] = 10 + rng.uniform(0, 1, spiky[stride // 2::stride].size)   # guess too high
    sparse = np.zeros(size)
    sparse[rng.choice(size, 7, replace=False)] = rng.standard_normal(7)
    return {"normal": rng.standard_normal(size).astype(np.float32), "normal64": rng.standard_normal(size),
            "spiky": spiky, "ones": np.ones(size),
            "integers": rng.integers(-3, 4, size).astype(np.float32), "sparse": sparse,
            "ramp": np.arange(size, dtype=np.float64)}


@pytest.mark.parametrize("size", SAMPLED_SIZES)
def test_sampled_segments_match_twin(size):
    rng = np.random.default_rng(size)
    for name, x in _sampled_inputs(size, rng).items():
        for k in (1, 2, 10, 11, 100, 300, 3_000, 7_000, size // 3, size - 1, size):
            agree((selection._top_k_select, selection._top_k_select_numpy), lambda kernel: select(kernel, x, k),
                  f"{name}, k={k}")
            agree((ternary._ternarize, ternary._ternarize_numpy), lambda kernel: ternarized(kernel, x, k),
                  f"{name}, k={k}: count, mu, positions, signs")


@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_sampled_segment_rejects_nonfinite_at_a_sample_position(bad):
    size = 10_240
    x = np.ones(size, np.float32)
    stride = _stride(size)
    x[stride // 2] = bad                     # the first strided sample position
    with pytest.raises(ValueError, match="NaN or inf"):
        selection._top_k_select(x, 5, np.empty(5, np.int64))


LAQ_SIZES = [0, 1, 7, 8, 9, 127, 128, 129, 136, 255, 256, 300, 1_000, laq.SUM_COLUMNS - 1, laq.SUM_COLUMNS,
             laq.SUM_COLUMNS + 1, 2 * laq.SUM_COLUMNS + 8, 7_850, 100_003]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("bits", [1, 2, 3, 4, 8, 9, 12, 16])
def test_laq_sums_are_bitwise_column_order_sums(dtype, bits):
    rng = np.random.default_rng(bits)
    for size in LAQ_SIZES:
        gradients = rng.standard_normal((3, size)).astype(dtype)
        previous = (gradients + rng.normal(scale=0.3, size=gradients.shape)).astype(dtype)
        if size:
            previous[1] = gradients[1]                       # R = 0 for worker 1
        jitted = agree(implementations(laq.laq_quantize, laq.laq_quantize_numpy),
                       lambda kernel: run_laq(kernel, gradients, previous, bits),
                       f"codes, quantized, radius, error, innovation; size {size}")
        assert jitted[1].dtype == dtype
        stored = jitted[1].astype(np.float64)
        error_terms = (stored - gradients.astype(np.float64)) ** 2
        innovation_terms = (stored - previous.astype(np.float64)) ** 2
        np.testing.assert_array_equal(jitted[3], laq.column_order_sum(error_terms))
        np.testing.assert_array_equal(jitted[4], laq.column_order_sum(innovation_terms))
        # and the column order is an accurate sum: within a few ulp of the exactly rounded one
        for got, terms in ((jitted[3], error_terms), (jitted[4], innovation_terms)):
            exact = [math.fsum(row) for row in terms]
            np.testing.assert_allclose(got, exact, rtol=1e-13, atol=0, err_msg=f"size {size}")


def test_column_order_sum_is_the_documented_order():
    """Rows of SUM_COLUMNS added down the columns one after another, then np.sum of the columns:
    recomputed here with plain Python floats for the column sums."""
    rng = np.random.default_rng(5)
    width = laq.SUM_COLUMNS
    for size in (1, width - 3, width, 3 * width + 17):
        terms = rng.random((2, size))
        for m in range(2):
            columns = [0.0] * width
            for i, value in enumerate(terms[m].tolist()):
                columns[i % width] += value
            assert laq.column_order_sum(terms)[m] == np.sum(np.array(columns))


def test_laq_long_vector_bitwise():
    rng = np.random.default_rng(0)
    gradients = rng.standard_normal((1, 1_000_003))
    previous = rng.standard_normal((1, 1_000_003))
    agree((laq.laq_quantize, laq.laq_quantize_numpy), lambda kernel: run_laq(kernel, gradients, previous, 4),
          "codes, quantized, radius, error, innovation")


@pytest.mark.parametrize("width", [1, 3, 8, 13, 32, 57, 63, 64])
def test_bit_fields_at_every_offset_keep_their_neighbours(width):
    rng = np.random.default_rng(width)
    for start in range(17):
        background = rng.integers(0, 256, 12, dtype=np.uint8)
        stream = background.copy()
        value = int(rng.integers(0, 2 ** min(width, 63)))
        if width == 64:
            value = -value - 1                       # a negative int64 bit pattern
        assert bitstream.write_uint(stream, start, value, width) == start + width
        assert bitstream.read_uint(stream, start, width) == value
        bits, before = np.unpackbits(stream), np.unpackbits(background)
        outside = np.r_[0:start, start + width:bits.size]
        np.testing.assert_array_equal(bits[outside], before[outside])


@pytest.mark.parametrize("b", [0, 1, 2, 5, 61, 62])
def test_golomb_code_words_long_and_short_match_twin(b):
    # gaps whose code word is longer than one field (q + 1 + b > 62) take the run-of-ones path
    assert_golomb_round_trip(np.array([0, 1, 9, 200, 201, 5_000, 70_000, 70_001], np.int64), b, 3)
