"""Softmax regression: loss and gradient against torch autograd, its walks over the data in blocks and on
threads, 8-bit codes, its one-line errors. What any model must do: tests/models/test_contract.py."""

import numpy as np
import pytest

import fedsim.models.softmax as softmax_module
from fedsim.models import SoftmaxRegression
from fedsim.models.features import Codes
from tests.models.conftest import WALKS, softmax_problem as _problem, torch_loss_and_grad, walk_by


@pytest.mark.oracle
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("l2", [0.0, 0.01])
@pytest.mark.parametrize("batch", [(), (5,)])
def test_loss_and_grad_match_torch_autograd(torch, dtype, tol, l2, batch):
    model, theta, x, y = _problem(dtype, batch, l2=l2)
    loss, grad = model.loss_and_grad(theta, x, y)
    ref_loss, ref_grad = torch_loss_and_grad(torch, model, theta, x, y)
    assert loss.dtype == dtype and grad.dtype == dtype
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.loss(theta, x, y), loss, rtol=tol)


def test_predict_and_accuracy_of_a_hand_made_model():
    model = SoftmaxRegression(2, 2)
    theta = model.spec.flatten({"W": np.array([[1.0, -1.0], [0.0, 0.0]]), "b": np.zeros(2)})
    x = np.array([[2.0, 0.0], [-2.0, 0.0], [3.0, 1.0]])
    np.testing.assert_array_equal(model.predict(theta, x), [0, 1, 0])
    assert model.accuracy(theta, x, np.array([0, 1, 1])) == pytest.approx(2 / 3)


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_features=0, n_classes=3), "n_features"),
    (dict(n_features=3, n_classes=1), "n_classes"),
    (dict(n_features=3, n_classes=3, l2=-1.0), "l2"),
])
def test_bad_settings_name_the_setting(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SoftmaxRegression(**kwargs)


# -- one pass over the data: the blocks -------------------------------------------------------------

@pytest.fixture(params=list(WALKS))
def walk(request, monkeypatch):
    walk_by(request.param, monkeypatch)
    return request.param


@pytest.mark.oracle
@pytest.mark.parametrize("batch", [(), (5,), (2, 3)])
def test_every_walk_over_the_data_matches_torch_autograd(torch, walk, batch):
    model, theta, x, y = _problem(np.float64, batch, n=37, features=9, classes=4, seed=4, l2=0.05)
    blocks = softmax_module._Plan(model, theta, x).blocks
    if walk == "one block" or (walk == "models grouped" and batch == ()):
        assert len(blocks) == 1
    else:
        assert len(blocks) > 1, blocks
    if walk == "models grouped" and batch:
        assert all(s0 == 0 and s1 == 37 for _, _, s0, s1 in blocks) and max(k1 - k0 for k0, k1, _, _ in blocks) > 1
    if walk == "rows of one model":
        assert all(k1 - k0 == 1 and (s1 - s0 == 6 or s1 == 37) for k0, k1, s0, s1 in blocks)
    covered = np.zeros((int(np.prod(batch)), 37), dtype=int)
    for k0, k1, s0, s1 in blocks:
        covered[k0:k1, s0:s1] += 1
    assert np.all(covered == 1), "every sample of every model in exactly one block"
    loss, grad = model.loss_and_grad(theta, x, y)
    ref_loss, ref_grad = torch_loss_and_grad(torch, model, theta, x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-12, atol=1e-13)
    loss_eval, accuracy = model.evaluate(theta, x, y)
    np.testing.assert_allclose(loss_eval, ref_loss, rtol=1e-13)
    np.testing.assert_array_equal(accuracy, np.mean(np.argmax(np.matmul(x, theta[..., :36].reshape(
        batch + (9, 4))) + theta[..., 36:][..., None, :], axis=-1) == y, axis=-1))


@pytest.mark.oracle
@pytest.mark.parametrize("dtype, scale, offset, tol", [(np.float64, 1 / 255, 0.0, 1e-13),
                                                       (np.float64, 1 / (255 * 0.3384), -0.2854 / 0.3384, 1e-12),
                                                       (np.float32, 1 / (255 * 0.3384), -0.2854 / 0.3384, 3e-5)])
def test_codes_fold_their_affine_map_into_the_weights_side(torch, walk, dtype, scale, offset, tol):
    """8-bit features ``x = scale u + offset``: loss, gradient, logits and accuracy equal those of the
    decoded floats (to rounding) and torch autograd's on them."""
    model, theta, _, y = _problem(dtype, (3,), n=31, features=10, classes=4, seed=8, l2=0.01)
    codes = np.random.default_rng(9).integers(0, 256, size=(3, 31, 10), dtype=np.uint8)
    features = Codes(codes, scale, offset, dtype)
    x = features.decode()
    assert x.dtype == dtype
    np.testing.assert_array_equal(x, (codes.astype(dtype) * dtype(scale) + dtype(offset)))
    loss, grad = model.loss_and_grad(theta, features, y)
    assert loss.dtype == dtype and grad.dtype == dtype
    ref_loss, ref_grad = torch_loss_and_grad(torch, model, theta, x, y)
    np.testing.assert_allclose(loss, ref_loss, rtol=tol, atol=tol)
    np.testing.assert_allclose(grad, ref_grad, rtol=tol, atol=tol)
    np.testing.assert_allclose(model.logits(theta, features), model.logits(theta, x), rtol=tol, atol=tol)
    np.testing.assert_allclose(model.evaluate(theta, features, y)[0], model.evaluate(theta, x, y)[0], rtol=tol)
    rows = np.array([[0, 5, 9], [30, 1, 1], [2, 2, 2]])
    gathered = model.loss_and_grad(theta, features[0], y[0][rows], rows=rows)
    np.testing.assert_allclose(gathered[1], model.loss_and_grad(theta, x[0][rows], y[0][rows])[1],
                               rtol=tol, atol=tol)


def test_codes_features_and_labels_refuse_what_they_cannot_stand_for():
    model, theta, x, y = _problem(np.float64)
    y[0] = model.n_classes
    small = SoftmaxRegression(4, 3)
    for call, message in [
        (lambda: Codes(np.zeros((3, 4), np.int16), 1.0), "uint8"),
        (lambda: Codes(np.zeros((3, 4), np.uint8), 1.0, dtype=np.float16), "float32 or float64"),
        (lambda: Codes(np.zeros((3, 4), np.uint8), 0.0), "scale must not be 0"),
        (lambda: Codes(np.zeros((3, 4), np.uint8), 1.0, float("nan")), "offset must be finite"),
        (lambda: small.loss_and_grad(small.init(), np.zeros((5, 4), np.uint8), np.zeros(5, int)),
         "float32 or float64 array or Codes"),
        (lambda: small.loss_and_grad(small.init(), np.zeros((5, 3)), np.zeros(5, int)), "4 features"),
        (lambda: model.loss_and_grad(theta, x, y), "labels must lie in"),
    ]:
        with pytest.raises(ValueError, match=message):
            call()


# -- threads ----------------------------------------------------------------------------------------------

@pytest.fixture
def threads_restored():
    previous = softmax_module.threads()
    yield
    softmax_module.set_threads(previous)


def _calls_of_every_kind():
    """(name, call) for each way the model is called: LAQ's shards, a round's gathered clients with a
    padding mask, 8-bit codes, one model over one set, and the logits of stacked models."""
    rng = np.random.default_rng(11)
    model = SoftmaxRegression(9, 4, l2=0.01)
    theta_one = rng.normal(size=model.size)
    theta_many = rng.normal(size=(5, model.size)).astype(np.float32)
    shards, shard_labels = rng.normal(size=(5, 37, 9)), rng.integers(0, 4, size=(5, 37))
    source, labels = rng.normal(size=(60, 9)).astype(np.float32), rng.integers(0, 4, size=60)
    rows = rng.integers(0, 60, size=(5, 13))
    mask = (np.arange(13) < np.array([[13], [9], [5], [13], [1]])).astype(np.float32)
    codes = Codes(rng.integers(0, 256, size=(5, 37, 9)).astype(np.uint8), 1 / 255, -0.25, np.float64)
    return [
        ("shared model, stacked shards", lambda: model.loss_and_grad(theta_one, shards, shard_labels)),
        ("gathered clients, masked", lambda: model.loss_and_grad(theta_many, source, labels[rows], mask, rows=rows)),
        ("codes", lambda: model.loss_and_grad(theta_one, codes, shard_labels)),
        ("one model, one set", lambda: model.loss_and_grad(theta_one, shards[0], shard_labels[0])),
        ("evaluate, stacked models", lambda: model.evaluate(theta_many, source, labels)),
        ("logits, one model", lambda: (model.logits(theta_one, shards[1]),)),
    ]


def test_results_are_bitwise_the_same_on_any_number_of_threads(walk, threads_restored):
    for name, call in _calls_of_every_kind():
        softmax_module.set_threads(1)
        reference = call()
        for count in (2, 3, 8):
            softmax_module.set_threads(count)
            for got, expected in zip(call(), reference):
                assert got.tobytes() == expected.tobytes(), f"{name}, {walk}, {count} threads"


def test_the_blocks_run_on_the_pool_threads(monkeypatch, threads_restored):
    """With 2 threads the shares of a multi-model call run on two pool threads, each a contiguous run of
    whole models; with 1, everything stays on the calling thread."""
    import threading
    walk_by("rows of one model", monkeypatch)
    from fedsim.kernels import softmax as kernels
    seen = []
    core = kernels.shift_logits.core
    meeting, first = threading.Barrier(2, timeout=30), threading.local()

    class Recording:
        @staticmethod
        def core(z, bias, scale, labels, z_y):
            name = threading.current_thread().name
            if name.startswith("fedsim-blocks") and not getattr(first, "met", False):
                first.met = True
                meeting.wait()          # both shares are under way at once (else: BrokenBarrierError)
            seen.append((name, z.shape))
            return core(z, bias, scale, labels, z_y)

    monkeypatch.setattr(kernels, "shift_logits", Recording)
    model, theta, x, y = _problem(np.float64, (4,), n=37, features=9, classes=4, seed=4)
    for count in (1, 2):
        seen.clear()
        softmax_module.set_threads(count)
        loss, grad = model.loss_and_grad(theta[0], x, y)
        names = {name for name, _ in seen}
        if count == 1:
            assert names == {threading.current_thread().name}
            reference = grad
        else:
            assert len(names) == 2 and all(name.startswith("fedsim-blocks") for name in names), names
            assert grad.tobytes() == reference.tobytes()
    blocks = [(k, k + 1, s0, s0 + 10) for k in range(3) for s0 in (0, 10)]
    runs = [blocks[0:2], blocks[2:4], blocks[4:6]]
    softmax_module.set_threads(2)
    assert softmax_module._split(blocks, runs) == [blocks[0:4], blocks[4:6]]   # whole models, in order
    softmax_module.set_threads(5)
    assert softmax_module._split(blocks, runs) == runs                        # at most one share a run
    softmax_module.set_threads(1)
    assert softmax_module._split(blocks, runs) == [blocks]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_threads_refuses_what_is_not_a_count(bad, threads_restored):
    with pytest.raises(ValueError, match="threads must be an integer >= 1"):
        softmax_module.set_threads(bad)
