"""Golomb-Rice coding, sign packing, fixed-width fields, the Rice parameter and the analytic bit counts."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fedsim.compress import bits
from fedsim.kernels import bitstream, golomb
from tests.kernels.conftest import assert_golomb_round_trip

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def sorted_positions(draw):
    values = draw(st.sets(st.integers(0, 5000), max_size=60))
    return np.array(sorted(values), np.int64)


# ----------------------------------------------------------------------------------------------------
# Golomb-Rice
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("positions, b, n_bits, byte", [
    ([0, 1, 5], 1, 7, 0b00001010),     # gaps 1, 1, 4 -> g - 1 = 0, 0, 3; b = 1: "0 0" "0 0" "10 1" -> 0000101
    ([0, 1, 5], 0, 6, 0b00111000),     # b = 0 is the unary code of g - 1: "0" "0" "1110"
    ([20], 3, 6, 0b11010000),          # b = 3, one position 20: g - 1 = 20 = 2 * 8 + 4 -> "11" "0" "100"
], ids=["b=1", "b=0 (unary)", "b=3"])
def test_golomb_rice_hand_example(positions, b, n_bits, byte):
    stream, got_bits = golomb.golomb_rice_encode(np.array(positions, np.int64), b)
    assert got_bits == n_bits
    np.testing.assert_array_equal(stream, [byte])


def test_golomb_rice_empty():
    stream, n_bits = golomb.golomb_rice_encode(np.zeros(0, np.int64), 4)
    assert n_bits == 0 and stream.size == 0
    assert golomb.golomb_rice_decode(stream, 0, 0, 4).size == 0


@SETTINGS
@given(sorted_positions(), st.integers(0, 14), st.integers(0, 13))
def test_golomb_rice_round_trip_and_counts(positions, b, start):
    assert_golomb_round_trip(positions, b, start)


def test_golomb_rice_rejects_bad_input():
    cases = [(bad, 2, "strictly increasing", golomb.golomb_rice_encode) for bad in ([3, 3], [5, 2], [-1, 4])]
    cases += [([1], b, "parameter b", golomb.golomb_rice_bits) for b in (-1, 63)]
    for positions, b, match, kernel in cases:                 # the kernel, then the bit counter's twin
        for function in (kernel, golomb.golomb_rice_bits_numpy):
            with pytest.raises(ValueError, match=match):
                function(np.array(positions, np.int64), b)
    stream, n_bits = golomb.golomb_rice_encode(np.array([3, 40, 41], np.int64), 2)
    for decoder in (golomb.golomb_rice_decode, golomb.golomb_rice_decode_numpy):
        with pytest.raises(ValueError, match="ends before"):
            decoder(stream, n_bits - 1, 3, 2)


def test_golomb_rice_large_gaps_and_parameters():
    assert_golomb_round_trip(np.array([0, 2 ** 40, 2 ** 40 + 1, 2 ** 62], np.int64), 60, 5)


def test_empirical_code_length_matches_expected_bits():
    # Bernoulli(q) positions have geometric gaps, whose mean Rice code length at b* is E(q)
    rng = np.random.default_rng(0)
    size = 2_000_000
    for density in (0.01, 0.002):
        positions = np.flatnonzero(rng.random(size) < density)
        b = golomb.rice_parameter(positions.size, size)
        measured = golomb.golomb_rice_bits(positions, b) / positions.size
        expected = float(bits.expected_position_bits(positions.size / size))
        assert abs(measured - expected) < 0.02 * expected, (measured, expected)


# ----------------------------------------------------------------------------------------------------
# Rice parameter and analytic bits
# ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("p, per_entry", [(1 / 25, 7.085), (1 / 100, 9.108), (1 / 400, 11.114)])
def test_design_check_values(p, per_entry):
    value = float(bits.stc_bits_per_entry(p))
    assert round(value, 3) == per_entry, value


def test_rice_parameter_formula_and_edges():
    phi = (1 + math.sqrt(5)) / 2
    for count, size in [(1, 25), (1, 100), (1, 400), (3, 1000), (10, 10250), (1, 10), (57, 60)]:
        density = count / size
        formula = 1 + math.floor(math.log2(math.log(phi - 1) / math.log(1 - density)))
        expected = max(0, formula)
        assert golomb.rice_parameter(count, size) == expected == golomb.rice_parameter_numpy(count, size)
        assert int(bits.rice_parameter_for_density(density)) == expected
    assert golomb.rice_parameter(1, 25) == 4 and golomb.rice_parameter(1, 100) == 6
    assert golomb.rice_parameter(1, 400) == 8
    # q' = 1 and q' above 1 - (phi - 1)^2 give b = 0; q' = 0 gives 0; the smallest int64 density gives 62
    assert golomb.rice_parameter(7, 7) == 0 == golomb.rice_parameter_numpy(7, 7)
    assert golomb.rice_parameter(0, 7) == 0
    assert golomb.rice_parameter(1, 2 ** 62) == 61 == golomb.rice_parameter_numpy(1, 2 ** 62)
    assert golomb.rice_parameter(1, 2 ** 63 - 1) == 62 == golomb.rice_parameter_numpy(1, 2 ** 63 - 1)
    assert golomb.rice_parameter(1, 2 ** 40) == golomb.rice_parameter_numpy(1, 2 ** 40) == 39
    assert int(bits.rice_parameter_for_density(1.0)) == 0 and float(bits.expected_position_bits(1.0)) == 1.0
    assert float(bits.expected_position_bits(0.0)) == 0.0
    with pytest.raises(ValueError, match="count"):
        golomb.rice_parameter(8, 7)
    with pytest.raises(ValueError, match="density"):
        bits.rice_parameter_for_density(1.5)


def test_rice_parameter_jitted_matches_twins_on_a_grid():
    sizes = np.unique(np.geomspace(1, 1e9, 60).astype(np.int64))
    for size in sizes:
        for count in np.unique(np.linspace(0, size, 25).astype(np.int64)):
            jitted = golomb.rice_parameter(count, size)
            assert jitted == golomb.rice_parameter_numpy(count, size), (count, size)
            assert jitted == int(bits.rice_parameter_for_density(count / size)), (count, size)


def test_analytic_message_bits():
    sizes = [10240, 10]
    counts = np.array([[103, 1], [0, 0]])
    estimate = bits.stc_analytic_bits(counts, sizes)
    expected = 103 * (bits.expected_position_bits(103 / 10240) + 1) + 32 \
        + 1 * (bits.expected_position_bits(0.1) + 1) + 32
    assert estimate[0] == pytest.approx(expected, rel=1e-15) and estimate[1] == 0.0
    top_k = bits.top_k_analytic_bits(counts, sizes)
    assert top_k[0] == pytest.approx(103 * (bits.expected_position_bits(103 / 10240) + 32)
                                     + (bits.expected_position_bits(0.1) + 32), rel=1e-15)
    assert bits.dense_analytic_bits(100) == 3200 and bits.sign_analytic_bits(100, 2) == 164


# ----------------------------------------------------------------------------------------------------
# signs and fixed-width fields
# ----------------------------------------------------------------------------------------------------

@SETTINGS
@given(st.lists(st.sampled_from([-1, 1]), max_size=100), st.integers(0, 7))
def test_sign_packing_round_trip(values, start):
    signs = np.array(values, np.int8)
    stream = np.full((start + signs.size + 7) // 8, 0xFF, np.uint8)
    for pack, unpack in ((bitstream.pack_signs_into, bitstream.unpack_signs_from),
                         (bitstream.pack_signs_into.py_func, bitstream.unpack_signs_from.py_func)):
        assert pack(signs, stream, start) == start + signs.size
        np.testing.assert_array_equal(np.unpackbits(stream)[start:start + signs.size], signs < 0)
        back = np.empty(signs.size, np.int8)
        assert unpack(stream, start, signs.size, back) == start + signs.size
        np.testing.assert_array_equal(back, signs)


@SETTINGS
@given(st.integers(0, 2 ** 32 - 1), st.integers(-2 ** 63, 2 ** 63 - 1), st.integers(0, 7))
def test_fixed_width_fields(unsigned32, signed64, start):
    stream = np.full(14, 0xAA, np.uint8)
    offset = bitstream.write_uint(stream, start, unsigned32, 32)
    offset = bitstream.write_uint(stream, offset, signed64, 64)
    assert offset == start + 96
    assert bitstream.read_uint(stream, start, 32) == unsigned32
    assert bitstream.read_uint(stream, start + 32, 64) == signed64
    patterns = np.array([1.5, -2.25, np.float32(3.1)], np.float32).view(np.uint32)
    end = bitstream.write_uints(stream, 0, patterns, 32)
    back = np.empty(3, np.uint32)
    assert bitstream.read_uints(stream, 0, 32, back) == end == 96
    np.testing.assert_array_equal(back, patterns)
    with pytest.raises(ValueError, match="ends inside"):
        bitstream.read_uint(stream, 100, 32)


def test_sign_packing_rejects_zero_and_short_streams():
    with pytest.raises(ValueError, match="only signs"):
        bitstream.pack_signs_into(np.array([1, 0, -1], np.int8), np.zeros(1, np.uint8), 0)
    with pytest.raises(ValueError, match="ends before"):
        bitstream.unpack_signs_from(np.zeros(1, np.uint8), 0, 9, np.empty(9, np.int8))
