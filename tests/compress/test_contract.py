"""The compressor contract, one suite run over every registered compressor (``fedsim.compress.COMPRESSORS``)
at a few representative settings each, as optax's common test suite runs over every optimizer.

The contract (``fedsim/compress/base.py``): settings validated on construction and rebuilt by name; the
wire message of each row (``to_dense()`` equals the decoded row bitwise, the same encoded and analytic bit
counts, ``decode(encode(m), m.format) == m``), also on hypothesis-drawn updates and on layouts with empty,
single-entry and odd-sized segments; a batch equal to its rows compressed one by one, with and without
error feedback (compressors with coupled rows, PowerSGD, excepted); error feedback's invariant
``x + old residual == sent + new residual`` (to half an ulp); non-finite updates rejected; a Generator
required by every compressor that draws random numbers; a checkpointed state continuing bitwise.
The hypothesis round trip runs per compressor: each drawn example goes through all of its settings.

What is specific to one compressor (hand-computed cases, its own settings, its wire format's corrupt
streams, its torch oracle) is in tests/compress/test_compressor_<name>.py.
"""

import dataclasses
import re
import sys

import numpy as np
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st

from fedsim.algorithms.federated import methods
from fedsim.config import COMPRESSOR_TABLES
from fedsim.compress import base
from fedsim.compress import (
    COMPRESSORS,
    QSGD,
    STC,
    Compressor,
    ErrorFeedback,
    ErrorFeedbackState,
    Identity,
    Layout,
    PowerSGD,
    RandomK,
    Sign,
    TernGrad,
    TopK,
    make_compressor,
)
from fedsim.errors import UpdateOverflowError
from fedsim.constraints import descriptions
from fedsim.kernels.sparsify import NONFINITE_MESSAGE
from tests.conftest import (
    DTYPES,
    SHAPED_SPEC,
    SPEC,
    assert_bitwise,
    check_message,
    compress_one,
    message_of,
    random_updates,
    updates_strategy,
)

# The representative settings of each registered compressor: a new compressor adds its line here.
SETTINGS = {
    "identity": [Identity()],
    "topk": [TopK(0.1), TopK(0.05, scope="global"), TopK(1.0)],
    "stc": [STC(0.1), STC(0.02, scope="global"), STC(1.0), STC(0.1, threshold="sampled"),
            STC(0.01, threshold="sampled", sample_mode="window"),
            STC(0.3, threshold="sampled", sample_fraction=0.5, scope="global")],
    "sign": [Sign(), Sign(scale="mean"), Sign(scope="global")],
    "qsgd": [QSGD(), QSGD(4, 0), QSGD(2, 16), QSGD(1, 7, scope="global"), QSGD(16, 1), QSGD(40000, 32)],
    "terngrad": [TernGrad(), TernGrad(scope="global"), TernGrad(clip=2.5), TernGrad(clip=0.5, scope="global")],
    "randomk": [RandomK(0.1), RandomK(0.1, scaling="none"), RandomK(0.05, scope="global"), RandomK(1.0),
                RandomK(0.5, scaling="none", scope="global"), RandomK(0.001)],
    "powersgd": [PowerSGD(1), PowerSGD(2), PowerSGD(5)],
}
CASES = [compressor for instances in SETTINGS.values() for compressor in instances]


def stateful(compressor) -> bool:
    """A compressor with state across rounds (PowerSGD's factors) overrides ``init`` and ``compress``; its
    rows are coupled (one orthogonalized factor for all senders), so a batch is not row by row."""
    return type(compressor).compress is not Compressor.compress


def module_of(compressor):
    return sys.modules[type(compressor).__module__]


STATELESS = [compressor for compressor in CASES if not stateful(compressor)]
# Compressors drawing their uniforms in chunks of at most base.UNIFORM_BUFFER_BYTES (base.uniform_chunks).
CHUNKED_DRAWS = [compressor for compressor in CASES if hasattr(module_of(compressor), "uniform_chunks")]
HYPOTHESIS = settings(max_examples=40, deadline=None)

# Segment sizes 0, 1, 2, 3, 4, 5, 12, 0, 33 and 1: empty and single-entry segments, every remainder of
# TernGrad's base-3 groups of five, QSGD buckets cut short.
ODD_LAYOUT = Layout((0, 0, 1, 3, 6, 10, 15, 27, 27, 60, 61))


def spec_of(compressor):
    return SHAPED_SPEC if stateful(compressor) else SPEC


def layouts_of(compressor):
    return [SHAPED_SPEC] if stateful(compressor) else [SPEC, ODD_LAYOUT]


def cases(compressors):
    return pytest.mark.parametrize("compressor", compressors, ids=[repr(c) for c in compressors])


def sends_values_exactly(compressor) -> bool:
    """Compressors whose sent entries are the input's values unchanged (no scale, no rounding)."""
    return isinstance(compressor, (Identity, TopK)) or (isinstance(compressor, RandomK)
                                                        and compressor.scaling == "none")


# ----------------------------------------------------------------------------------------------------
# the registry and the settings
# ----------------------------------------------------------------------------------------------------

def test_every_registered_compressor_is_in_the_suite():
    assert set(SETTINGS) == set(COMPRESSORS)
    for name, instances in SETTINGS.items():
        assert instances and all(type(c) is COMPRESSORS[name] for c in instances), name
    assert {c.name for c in CHUNKED_DRAWS} >= {"qsgd", "terngrad"}
    assert {cls.name for cls in WITH_P} >= {"topk", "stc", "randomk"}
    with pytest.raises(ValueError, match="compressor must be one of"):
        make_compressor("no-such-compressor")


@cases(CASES)
def test_registered_rebuilt_by_name_and_its_methods(compressor):
    cls = type(compressor)
    assert COMPRESSORS[cls.name] is cls and compressor.name == cls.name
    assert make_compressor(cls.name, **compressor.settings) == compressor
    assert set(compressor.settings) == {f.name for f in dataclasses.fields(compressor)}
    table = methods()                     # (the class attributes themselves: test_class_attributes_and_defaults)
    for direction in cls.directions:
        method = table[f"{cls.name}_{direction}"]
        assert method.up == cls.name and method.down == (cls.name if direction == "updown" else "identity")
        assert method.aggregation == cls.aggregations[0]
        assert method.accumulate_up == cls.error_feedback
        assert method.accumulate_down == (cls.error_feedback and direction == "updown")


# Each compressor's class attributes (aggregations, error feedback by default, directions) and its settings
# when built with none given.
DEFAULTS = {
    "identity": (("mean", "weighted"), False, (), {"scope": "tensor"}),
    "topk": (("mean", "weighted"), True, ("up", "updown"), {"p": 0.01, "scope": "tensor"}),
    "stc": (("mean", "weighted"), True, ("up", "updown"), {"p": 0.01, "threshold": "exact", "sample_fraction": 0.1,
                                                           "sample_mode": "uniform", "scope": "tensor"}),
    "sign": (("majority", "mean", "weighted"), False, (), {"scale": "none", "scope": "tensor"}),
    "qsgd": (("mean", "weighted"), False, ("up", "updown"), {"levels": 16, "bucket_size": 512, "scope": "tensor"}),
    "terngrad": (("mean", "weighted"), False, ("up", "updown"), {"clip": 0.0, "scope": "tensor"}),
    "randomk": (("mean", "weighted"), False, ("up", "updown"), {"p": 0.01, "scaling": "unbiased",
                                                                "scope": "tensor"}),
    "powersgd": (("mean",), True, ("up", "updown"), {"rank": 2, "scope": "tensor"}),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_class_attributes_and_defaults(name):
    """The attributes and defaults above; every setting described; a config table ([<name>]) exactly for
    the compressors with settings besides p and scope."""
    cls = COMPRESSORS[name]
    aggregations, error_feedback, directions, defaults = DEFAULTS[name]
    assert (cls.name, cls.aggregations, cls.error_feedback, cls.directions) == (name, aggregations, error_feedback,
                                                                              directions)
    assert cls().settings == defaults and set(descriptions(cls)) == set(defaults)
    assert COMPRESSOR_TABLES.get(name) is (cls if set(defaults) - {"p", "scope"} else None)


# Each compressor's own settings, p of those with one and every compressor's scope: values they refuse, the
# error's type and the start of its message.
NUMBER_ERRORS = (TypeError, ValueError)      # a value of the wrong kind is a TypeError
WITH_P = [cls for cls in COMPRESSORS.values() if "p" in {f.name for f in dataclasses.fields(cls)}]
REFUSED = [(cls, setting, bad, errors, match) for cls, setting, values, errors, match in [
    (STC, "sample_fraction", [0], ValueError, r"sample_fraction must be a finite number in \(0, 1\]"),
    (STC, "threshold", ["approx"], ValueError, r"threshold must be one of 'exact', 'sampled'"),
    (STC, "sample_mode", ["random"], ValueError, r"sample_mode must be one of 'uniform', 'window'"),
    (Sign, "scale", ["max"], ValueError, r"scale must be one of 'none', 'mean'"),
    (QSGD, "levels", [0, -1, 1.5, True, "4", None, 2 ** 31], NUMBER_ERRORS, "levels must be an integer in"),
    (QSGD, "bucket_size", [-1, 2.0, True, "512", None], NUMBER_ERRORS, "bucket_size must be an integer >= 0"),
    (TernGrad, "clip", [-0.5, float("nan"), float("inf"), "2.5", True, None], NUMBER_ERRORS,
     "clip must be a finite number >= 0"),
    (RandomK, "scaling", ["biased"], ValueError, r"scaling must be one of 'unbiased', 'none', got 'biased'"),
    (PowerSGD, "rank", [0, -1, 2.5, True, "2", None], NUMBER_ERRORS, "rank must be an integer"),
    *((cls, "p", [0, -0.1, 1.5, float("nan"), float("inf"), "0.1", True], NUMBER_ERRORS,
       r"p must be a finite number in \(0, 1\]") for cls in WITH_P),
    *((cls, "scope", ["layer"], ValueError, r"scope must be one of 'tensor'(, 'global')?, got 'layer'")
      for cls in COMPRESSORS.values()),
] for bad in values]


@pytest.mark.parametrize("cls, setting, bad, errors, match", REFUSED,
                         ids=[f"{cls.name}-{setting}-{bad!r}" for cls, setting, bad, _, _ in REFUSED])
def test_own_setting_outside_its_constraint_is_rejected(cls, setting, bad, errors, match):
    with pytest.raises(errors, match=match):
        cls(**{setting: bad})


@cases(STATELESS)
def test_layouts(compressor):
    tensor = compressor.scope == "tensor"
    assert compressor.init(SPEC) == (Layout((0, 120, 124)) if tensor else Layout((0, 124)))
    assert compressor.init(ODD_LAYOUT) == (ODD_LAYOUT if tensor else Layout((0, 61)))
    assert compressor.init(50) == Layout((0, 50)) and compressor.init(0) == Layout((0, 0))
    with pytest.raises(ValueError, match="ParamSpec, a Layout or an int"):
        compressor.init("W")


# ----------------------------------------------------------------------------------------------------
# updates: shapes, dtypes, non-finite values, the Generator
# ----------------------------------------------------------------------------------------------------

@cases(CASES)
def test_bad_updates_are_rejected(compressor):
    spec = spec_of(compressor)
    state = compressor.init(spec)
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="float32 or float64"):
        compressor.compress(np.zeros(spec.size, np.int32), state, rng)
    with pytest.raises(ValueError, match="shape"):
        compressor.compress(np.zeros(spec.size + 1, np.float32), state, rng)


@cases(CASES)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_update_is_rejected(compressor, bad):
    """Wherever the bad entry lies (also where a sparsifier would send nothing), alone, in a batch and
    through error feedback."""
    spec = spec_of(compressor)
    state = compressor.init(spec)
    wrapper = ErrorFeedback(compressor)
    for position in (0, 7, 60, spec.size - 2, spec.size - 1):
        x = np.ones(spec.size, np.float32)
        x[position] = bad
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            compressor.compress(x, state, np.random.default_rng(0))
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            compressor.compress(np.stack([np.ones_like(x), x]), state, np.random.default_rng(0))
        with pytest.raises(ValueError, match=NONFINITE_MESSAGE):
            wrapper.compress(x, wrapper.init(spec), np.random.default_rng(0))


@cases(CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_a_finite_update_near_the_float_maximum_is_sent_finite_or_refused(compressor, dtype):
    """Entries of +-max / 2 (a diverged update, still finite): the decoded rows are finite, or one ValueError says
    what overflowed (STC's or the scaled sign's mean, QSGD's norm, PowerSGD's products), never a silent inf nor
    "NaN or inf"; random-k's N / k scaling alone overflows to inf, as fedsim/kernels/randomk.py documents."""
    spec = spec_of(compressor)
    x = (np.finfo(dtype).max / 2 * np.where(np.arange(spec.size) % 2, 1, -1)).astype(dtype)
    try:
        decoded = compressor.compress(x, compressor.init(spec), np.random.default_rng(0))[0].decoded
    except UpdateOverflowError as error:       # a ValueError a run ends as divergence
        assert re.search(r"overflows? its dtype .*the update has diverged", str(error)), error
    else:
        scaled_up = isinstance(compressor, RandomK) and compressor.scaling == "unbiased" and compressor.p < 1
        assert np.isfinite(decoded).all() != scaled_up


@cases(CASES)
def test_a_generator_is_required_or_ignored(compressor):
    """A compressor that may draw random numbers refuses anything but a numpy.random.Generator (a ValueError
    naming ``rng``); one that accepts ``rng=None`` draws none: any Generator gives the same messages."""
    spec = spec_of(compressor)
    state = compressor.init(spec)
    x = random_updates(np.random.default_rng(0), 3, spec.size)
    try:
        plain, _ = compressor.compress(x, state, None)
    except ValueError as error:
        assert "needs a numpy.random.Generator (rng)" in str(error), error
        for rng in (3, np.random.RandomState(0)):
            with pytest.raises(ValueError, match=r"needs a numpy.random.Generator \(rng\)"):
                compressor.compress(x, state, rng)
        return
    for seed in (1, 2):
        drawn, _ = compressor.compress(x, state, np.random.default_rng(seed))
        assert [drawn.message(row) for row in range(3)] == [plain.message(row) for row in range(3)]


# ----------------------------------------------------------------------------------------------------
# messages: each row's wire message, exact round trip, bit counts
# ----------------------------------------------------------------------------------------------------

@cases(CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_message_contract(compressor, dtype):
    for layout in layouts_of(compressor):
        state = compressor.init(layout)
        updates = random_updates(np.random.default_rng(3), 4, layout.size, dtype)
        updates[1] = 0.0                                            # an all-zero sender
        compressed, new_state = compressor.compress(updates, state, np.random.default_rng(8))
        assert compressed.rows == 4 and compressed.decoded.dtype == dtype
        assert compressed.encoded_bits.dtype == np.int64 and compressed.analytic_bits.dtype == np.float64
        for row in range(4):
            check_message(message_of(compressed, row), dtype, layout.size)
        with pytest.raises(IndexError):
            compressed.message(4)
        if not stateful(compressor):
            assert new_state == state


@pytest.mark.parametrize("name", list(SETTINGS))
@pytest.mark.parametrize("dtype", DTYPES)
def test_round_trip_hypothesis(name, dtype):
    """Zeros, signed zeros, ties, subnormals, tiny and large values, on each layout of the compressor: at
    every setting, the messages still round-trip exactly, and a state carried forward stays finite. (Each
    drawn example goes through all the settings of the compressor: 40 examples per setting.)"""
    stateful_rows = stateful(SETTINGS[name][0])
    rows = 2 if stateful_rows else 1                                 # coupled rows: a batch of two
    layouts = layouts_of(SETTINGS[name][0])
    longest = max(layout.size for layout in layouts)

    @HYPOTHESIS
    @given(st.sampled_from(layouts), updates_strategy((rows, longest), dtype), st.integers(0, 2 ** 32 - 1))
    def run(layout, updates, seed):
        x = np.ascontiguousarray(updates[:, :layout.size])
        for compressor in SETTINGS[name]:
            note(f"compressor {compressor!r}")                      # printed with a failing example
            state = compressor.init(layout)
            compressed, new_state = compressor.compress(x, state, np.random.default_rng(seed))
            for row in range(rows):
                check_message(message_of(compressed, row), dtype, layout.size)
            if not stateful_rows:
                assert new_state == state
            assert all(np.all(np.isfinite(a)) for a in compressor.state_arrays(new_state).values())

    run()


# ----------------------------------------------------------------------------------------------------
# a batch == its rows one by one (the Generator consumed in row order), with and without error feedback
# ----------------------------------------------------------------------------------------------------

@cases(STATELESS)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("with_residuals", [False, True])
def test_batch_equals_row_by_row(compressor, dtype, with_residuals):
    rng = np.random.default_rng(11)
    updates = random_updates(rng, 5, SPEC.size, dtype)
    updates[2] = 0.0                                                # an all-zero sender
    updates[3, ::3] = updates[3, 1]                                 # many ties
    residuals = random_updates(rng, 5, SPEC.size, dtype) * dtype(0.1) if with_residuals else None
    state = compressor.init(SPEC)
    wrapper = ErrorFeedback(compressor)
    batch_rng, row_rng = np.random.default_rng(3), np.random.default_rng(3)
    if with_residuals:
        result, feedback = wrapper.compress(updates, ErrorFeedbackState(state, residuals), batch_rng)
    else:
        result, _ = compressor.compress(updates, state, batch_rng)
    for row in range(updates.shape[0]):
        if with_residuals:
            message, row_state = compress_one(wrapper, updates[row], ErrorFeedbackState(state, residuals[row]),
                                              row_rng)
            assert_bitwise(feedback.residual[row], row_state.residual, f"residual row {row}")
        else:
            message, _ = compress_one(compressor, updates[row], state, row_rng)
        assert_bitwise(result.decoded[row], message.to_dense(), f"decoded row {row}")
        assert result.message(row) == message
        assert result.encoded_bits[row] == message.encoded_bits()
        assert result.analytic_bits[row] == message.analytic_bits()
    assert result.encoded_bits.dtype == np.int64 and result.analytic_bits.dtype == np.float64
    assert batch_rng.bit_generator.state == row_rng.bit_generator.state


@cases(STATELESS)
def test_batch_error_feedback_over_rounds(compressor):
    """Four rounds of three senders: the batch's residual rows equal each sender's own residual."""
    rng = np.random.default_rng(2)
    wrapper = ErrorFeedback(compressor)
    layout = compressor.init(SPEC)
    states = [wrapper.init(SPEC) for _ in range(3)]
    residuals = np.zeros((3, SPEC.size), np.float32)
    batch_rng, row_rng = np.random.default_rng(4), np.random.default_rng(4)
    for _ in range(4):
        updates = rng.standard_normal((3, SPEC.size)).astype(np.float32)
        result, batch_state = wrapper.compress(updates, ErrorFeedbackState(layout, residuals), batch_rng)
        residuals = batch_state.residual
        for row in range(3):
            message, states[row] = compress_one(wrapper, updates[row], states[row], row_rng)
            assert_bitwise(result.decoded[row], message.to_dense(), "sent")
            assert_bitwise(residuals[row], states[row].residual, "residual")


@cases(CHUNKED_DRAWS)
def test_uniforms_drawn_in_chunks_equal_one_draw(compressor, monkeypatch):
    """Seven rows drawn two at a time give the messages of one draw for all seven."""
    x = np.random.default_rng(5).standard_normal((7, SPEC.size)).astype(np.float32)
    whole, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(9))
    monkeypatch.setattr(base, "UNIFORM_BUFFER_BYTES", 8 * SPEC.size * 2)
    chunked, _ = compressor.compress(x, compressor.init(SPEC), np.random.default_rng(9))
    assert_bitwise(chunked.decoded, whole.decoded, "decoded")
    assert [chunked.message(row) for row in range(7)] == [whole.message(row) for row in range(7)]


# ----------------------------------------------------------------------------------------------------
# error feedback: x + old residual == sent + new residual
# ----------------------------------------------------------------------------------------------------

def _half_ulp(values):
    return 0.5 * np.spacing(np.abs(values).astype(values.dtype)).astype(np.float64)


@cases(CASES)
def test_error_feedback_invariant(compressor):
    """Five rounds of three senders: each residual is r = fl(a - sent) with a = x + old residual, so
    sent + r == a exactly where a compressor sends values as they are, else within half an ulp of r."""
    rng = np.random.default_rng(9)
    spec = spec_of(compressor)
    wrapper = ErrorFeedback(compressor)
    state = dataclasses.replace(wrapper.init(spec), residual=np.zeros((3, spec.size), np.float32))
    for _ in range(5):
        x = random_updates(rng, 3, spec.size)
        accumulated = x + state.residual
        compressed, state = wrapper.compress(x, state, rng)
        for row in range(3):
            message_of(compressed, row)
        sent, residual = compressed.decoded, state.residual
        assert_bitwise(residual, accumulated - sent, "r = a - sent")
        rebuilt = sent + residual                                   # in float32
        untouched = sent == 0
        assert_bitwise(residual[untouched], accumulated[untouched], "residual where nothing was sent")
        if sends_values_exactly(compressor):
            assert_bitwise(rebuilt, accumulated, "x + old residual == sent + new residual")
            assert np.all(residual[~untouched] == 0)
        else:
            # residual = fl(a - sent): exact where sent/2 <= a <= 2 sent (Sterbenz), else within half an ulp
            error = np.abs(sent.astype(np.float64) + residual.astype(np.float64) - accumulated)
            assert np.all(error <= _half_ulp(residual)), error.max()
            same_sign = (np.sign(sent) == np.sign(accumulated)) & ~untouched
            ratio = accumulated[same_sign] / sent[same_sign]
            sterbenz = (ratio >= 0.5) & (ratio <= 2)
            assert_bitwise(rebuilt[same_sign][sterbenz], accumulated[same_sign][sterbenz], "Sterbenz range")


# ----------------------------------------------------------------------------------------------------
# state across rounds: init, compress, state_arrays, load_state_arrays
# ----------------------------------------------------------------------------------------------------

@cases(CASES)
@pytest.mark.parametrize("dtype", DTYPES)
def test_checkpoint_continues_bitwise(compressor, dtype):
    """Six rounds of three error-fed senders straight, and the same stopped after three, checkpointed
    (``state_arrays``, copied as an npz file would) and loaded into a fresh state: the same rows."""
    spec = spec_of(compressor)
    link = ErrorFeedback(compressor)
    data = np.random.default_rng(1).standard_normal((6, 3, spec.size)).astype(dtype)
    start = dataclasses.replace(link.init(spec, dtype), residual=np.zeros((3, spec.size), dtype))

    def run(state, rng, rounds):
        decoded = []
        for x in rounds:
            compressed, state = link.compress(x, state, rng)
            decoded.append(compressed.decoded)
        return decoded, state

    straight, final = run(start, np.random.default_rng(2), data)
    rng = np.random.default_rng(2)
    first, middle = run(start, rng, data[:3])
    arrays = {key: np.array(value) for key, value in link.state_arrays(middle).items()}
    assert set(arrays) == {"residual"} | set(compressor.state_arrays(middle.inner))
    with pytest.raises(ValueError, match="checkpoint lacks the error-feedback array 'residual'"):
        link.load_state_arrays(link.init(spec, dtype), {k: v for k, v in arrays.items() if k != "residual"})
    second, resumed = run(link.load_state_arrays(link.init(spec, dtype), arrays), rng, data[3:])
    for got, want in zip(first + second, straight):
        assert_bitwise(got, want, "resumed round")
    assert resumed.inner == final.inner
    fresh = compressor.init(spec)
    assert compressor.state_arrays(fresh) == {} and compressor.load_state_arrays(fresh, {}) == fresh
