"""Torch oracle: STC, top-k and sign recomputed with torch.topk / torch.sign on the same tensors.

Inputs are continuous random values (no ties, no zeros), so the k largest magnitudes are unambiguous.
Positions, signs, kept values and the dense outputs must match exactly; STC's mu is compared to torch's
float64 mean rounded to float32 (fedsim sums in index order, torch in its own order: the two float64
sums may differ in their last bits, which can move the float32 rounding by at most one ulp).
"""

import math

import numpy as np
import pytest

from fedsim.compress import STC, ErrorFeedback, Sign, TopK
from tests.conftest import ORACLE_SPEC as SPEC

pytestmark = pytest.mark.oracle


def torch_segments(torch, x, scope):
    """(start, stop) segments and a torch view of each."""
    bounds = [(0, 10240), (10240, 10250)] if scope == "tensor" else [(0, 10250)]
    tensor = torch.from_numpy(x)
    return [(start, stop, tensor[start:stop]) for start, stop in bounds]


def torch_sparsify(torch, x, p, scope, ternary=False):
    """Top-k by torch.topk: (the dense row, each segment's mu); STC (``ternary``) sends the signs times mu,
    the float64 mean of the kept magnitudes rounded to float32."""
    dense = torch.zeros(x.size, dtype=torch.float32)
    mus = []
    for start, stop, segment in torch_segments(torch, x, scope):
        k = math.ceil(p * (stop - start))
        magnitudes, indices = torch.topk(segment.abs(), k)
        mu = magnitudes.double().mean().float()
        dense[start + indices] = torch.sign(segment[indices]) * mu if ternary else segment[indices]
        mus.append(mu.item())
    return dense.numpy(), np.array(mus, np.float32)


def report(name, ours, theirs):
    bad = np.flatnonzero(ours != theirs)
    return f"{name}: {bad.size} entries differ, first {bad[:5]}: fedsim {ours[bad[:5]]} torch {theirs[bad[:5]]}"


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("p", [0.001, 0.01, 0.04])
def test_stc_matches_torch(torch, scope, p):
    rng = np.random.default_rng(0)
    compressor = STC(p, scope=scope)
    state = compressor.init(SPEC)
    for _ in range(3):
        x = rng.standard_normal(SPEC.size).astype(np.float32)
        compressed, _ = compressor.compress(x, state)
        message, ours = compressed.message(0), compressed.decoded[0]
        theirs, torch_mu = torch_sparsify(torch, x, p, scope, ternary=True)
        print("mu fedsim", message.mu, "torch", torch_mu)
        assert np.all(np.abs(message.mu.astype(np.float64) - torch_mu) <= np.spacing(torch_mu)), \
            (message.mu, torch_mu)
        # same support and signs exactly; values are +-mu, so compare them after mapping mu
        np.testing.assert_array_equal(np.flatnonzero(ours), np.flatnonzero(theirs), report("support", ours,
                                                                                           theirs))
        np.testing.assert_array_equal(np.sign(ours), np.sign(theirs))
        if np.array_equal(message.mu, torch_mu):
            np.testing.assert_array_equal(ours, theirs, report("dense", ours, theirs))


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("p", [0.001, 0.05, 1.0])
def test_top_k_matches_torch(torch, scope, p):
    rng = np.random.default_rng(1)
    compressor = TopK(p, scope=scope)
    state = compressor.init(SPEC)
    x = rng.standard_normal(SPEC.size).astype(np.float32)
    ours = compressor.compress(x, state)[0].decoded[0]
    theirs, _ = torch_sparsify(torch, x, p, scope)
    np.testing.assert_array_equal(ours, theirs, report("top-k", ours, theirs))


@pytest.mark.parametrize("scope", ["tensor", "global"])
@pytest.mark.parametrize("scale", ["none", "mean"])
def test_sign_matches_torch(torch, scope, scale):
    rng = np.random.default_rng(2)
    compressor = Sign(scale=scale, scope=scope)
    state = compressor.init(SPEC)
    x = rng.standard_normal(SPEC.size).astype(np.float32)
    x[::97] = 0.0                                   # torch.sign(0) = 0 as well
    ours = compressor.compress(x, state)[0].decoded[0]
    theirs = torch.sign(torch.from_numpy(x))
    if scale == "mean":
        for start, stop, segment in torch_segments(torch, x, scope):
            theirs[start:stop] *= segment.abs().double().mean().float()
    theirs = theirs.numpy()
    np.testing.assert_allclose(ours, theirs, rtol=np.spacing(np.float32(1)), atol=0,
                               err_msg=report("sign", ours, theirs))
    if scale == "none":
        np.testing.assert_array_equal(ours, theirs, report("sign", ours, theirs))


def test_error_feedback_top_k_matches_torch_over_rounds(torch):
    """Five rounds of error-fed top-k (values sent exactly, so the two runs agree bitwise)."""
    rng = np.random.default_rng(3)
    wrapper = ErrorFeedback(TopK(0.01))
    state = wrapper.init(SPEC)
    torch_residual = torch.zeros(SPEC.size, dtype=torch.float32)
    for round_index in range(5):
        x = rng.standard_normal(SPEC.size).astype(np.float32)
        compressed, state = wrapper.compress(x, state)
        accumulated = torch.from_numpy(x) + torch_residual
        sent = torch.from_numpy(torch_sparsify(torch, accumulated.numpy(), 0.01, "tensor")[0])
        torch_residual = accumulated - sent
        ours = compressed.decoded[0]
        np.testing.assert_array_equal(ours, sent.numpy(), report(f"round {round_index}", ours, sent.numpy()))
        np.testing.assert_array_equal(state.residual, torch_residual.numpy())
