"""The torch (CPU) baselines: compressor kernels, a round of the STC seed experiment, an iteration of the
LAQ seed experiment, and both on fedsim's MLP.

These are written to be fast in torch, not to mirror fedsim's code: data is preloaded as tensors, every
client (worker) of a round is handled in one batched call (``bmm`` over clients, never a Python loop over
them), selection uses ``torch.topk``, and elementwise work runs in place where that saves a pass. Each
matrix product can be written several equivalent ways whose speed differs a lot on skinny matrices
(MKL picks different kernels for ``X @ W`` and ``(W^T X^T)^T``), so :func:`fastest` times the candidate
formulations once on the real shapes, checks that they agree, and the round uses the fastest; the choice
is reported with the results. :class:`TorchSTCClientLoop` is the exception on purpose: the STC round
written the way federated simulations usually are (one client at a time, each with its own
``torch.nn.Linear`` and ``torch.optim.SGD``, autograd for the gradient), the baseline a user would
actually pick.

Semantics follow fedsim's definitions (:mod:`fedsim.compress`, :mod:`fedsim.algorithms.lazy`), so the benchmarks
can check that both compute the same thing before timing them:

* top-k / STC keep ``min(k, nonzeros)`` entries; ties at the threshold go to the lowest indices (the
  rounds' :func:`stc_rows` implements that rule exactly, since aggregates of ternary messages do tie;
  the single-vector kernels use plain ``torch.topk``, and the benchmarks validate them on inputs
  without ties at the threshold);
* mu = mean kept magnitude, summed in float64, rounded to the data's dtype;
* the LAQ quantizer uses the same multiplication form as fedsim, so codes and Q agree bitwise.
"""

from __future__ import annotations

import time
from typing import Callable

import numpy as np
import torch

from fedsim.compress.base import ceil_product
from fedsim.kernels.golomb import LOG_GOLDEN_CONJUGATE, MAX_RICE_PARAMETER

COUNT_BITS = 32          # the count field that starts every sparse segment (fedsim's wire format)
MU_BITS = 32             # mu of a float32 STC message (the STC seed runs in float32)


# ---------------------------------------------------------------------------------------------------------
# choosing among equivalent formulations


def fastest(candidates: dict[str, Callable[[], torch.Tensor]], repeats: int = 3,
            rtol: float = 1e-4) -> tuple[str, dict[str, float]]:
    """The name of the fastest of ``candidates`` (zero-argument callables computing the same tensor)
    and each one's median seconds. Raises AssertionError if they disagree beyond ``rtol``."""
    results = {name: candidate() for name, candidate in candidates.items()}
    reference = next(iter(results.values()))
    scale = float(reference.abs().max()) or 1.0
    for name, result in results.items():
        if result.shape != reference.shape or not torch.allclose(result, reference, rtol=rtol,
                                                                 atol=rtol * scale):
            raise AssertionError(f"torch formulation {name!r} disagrees with {next(iter(results))!r}")
    seconds = {}
    for name, candidate in candidates.items():
        samples = []
        for _ in range(repeats):
            started = time.perf_counter()
            candidate()
            samples.append(time.perf_counter() - started)
        seconds[name] = float(np.median(samples))
    return min(seconds, key=seconds.get), seconds


# ---------------------------------------------------------------------------------------------------------
# kernels on one vector (the kernel benchmarks)


def top_k_threshold(x: torch.Tensor, k: int):
    """(threshold v, mu, count) as :func:`fedsim.kernels.selection._top_k_threshold` (torch.topk)."""
    values = torch.topk(x.abs(), k, sorted=False).values
    threshold = values.min()
    if threshold > 0:
        return threshold, (values.double().sum() / k).to(x.dtype), k
    kept = values[values > 0]                       # fewer than k nonzeros: keep them all, v = 0
    count = kept.numel()
    mu = (kept.double().sum() / count).to(x.dtype) if count else torch.zeros((), dtype=x.dtype)
    return torch.zeros((), dtype=x.dtype), mu, count


def _top_k_positions(x: torch.Tensor, k: int):
    """Kept positions (increasing) and their magnitudes, by torch.topk."""
    magnitudes, indices = torch.topk(x.abs(), k, sorted=False)
    if magnitudes.min() == 0:
        nonzero = magnitudes > 0
        magnitudes, indices = magnitudes[nonzero], indices[nonzero]
    positions, order = torch.sort(indices)
    return positions, magnitudes[order]


def ternarize(x: torch.Tensor, k: int):
    """STC with the exact threshold: (positions, int8 signs, mu)."""
    positions, magnitudes = _top_k_positions(x, k)
    signs = torch.where(x[positions] > 0, 1, -1).to(torch.int8)
    count = positions.numel()
    mu = (magnitudes.double().sum() / count).to(x.dtype) if count else torch.zeros((), dtype=x.dtype)
    return positions, signs, mu


def sampled_ternarize(x: torch.Tensor, sample_positions: torch.Tensor, k_sample: int, k: int):
    """STC with the sampled threshold (fallback to the exact one): (positions, signs, mu, exact)."""
    threshold, mu, _ = top_k_threshold(x[sample_positions], k_sample)
    if threshold > 0:
        magnitudes = x.abs()
        positions = torch.nonzero(magnitudes >= threshold).flatten()
        if magnitudes[positions].max() != threshold:
            return positions, torch.where(x[positions] > 0, 1, -1).to(torch.int8), mu, False
    positions, signs, mu = ternarize(x, k)
    return positions, signs, mu, True


def top_k_sparsify(x: torch.Tensor, k: int):
    """Top-k with values: (positions, values)."""
    positions, _ = _top_k_positions(x, k)
    return positions, x[positions]


def sign(x: torch.Tensor) -> torch.Tensor:
    """sign(x_i) in {-1, 0, +1} as int8."""
    return torch.sign(x).to(torch.int8)


def laq_quantize(gradients: torch.Tensor, previous: torch.Tensor, bits: int):
    """LAQ quantizer of each row (finite inputs): (codes, Q, R, e = ||Q - g||^2, ||Q - Q_prev||^2).

    As fedsim: float64 arithmetic inside, q = floor((g - Q_prev) s + 2^(b-1)) and Q = Q_prev + (q delta - R)
    with s = h / R, delta = R / h, h = (2^b - 1) / 2 (in place where possible), Q stored in the input's
    dtype and the errors measured on Q as stored. Rows with R = 0 keep Q = Q_prev and the code 2^(b-1).
    Radii so extreme that s or delta is not a normal float (fedsim's division form) are not supported.
    """
    half_levels = 0.5 * ((1 << bits) - 1)
    g, q_prev = gradients.double(), previous.double()           # no copy for float64 input
    difference = g - q_prev
    radius = difference.abs().amax(dim=1)
    moving = radius > 0
    safe_radius = torch.where(moving, radius, torch.ones_like(radius))[:, None]
    scale, step = half_levels / safe_radius, safe_radius / half_levels
    tiny = torch.finfo(torch.float64).tiny
    if not bool(((scale >= tiny) & (step >= tiny) & scale.isfinite() & step.isfinite()).all()):
        raise ValueError("radius outside the range of the multiplication form")
    codes = difference.mul_(scale).add_(float(1 << (bits - 1))).floor_()                 # q
    quantized = (codes * step).sub_(safe_radius).add_(q_prev)                            # Q
    if not bool(moving.all()):
        still = ~moving
        quantized[still] = q_prev[still]
        codes[still] = float(1 << (bits - 1))
    quantized = quantized.to(gradients.dtype)
    stored = quantized.double()
    error = (stored - g).square_().sum(dim=1)
    innovation = (stored - q_prev).square_().sum(dim=1)
    return codes.to(torch.uint8 if bits <= 8 else torch.int32), quantized, radius, error, innovation


# ---------------------------------------------------------------------------------------------------------
# batched STC with error feedback (the rounds)


def rice_parameters(counts: np.ndarray, size: int) -> np.ndarray:
    """The Golomb-Rice parameter b* for ``counts`` kept positions out of ``size`` (0 for no positions)."""
    counts = np.asarray(counts, dtype=np.float64)
    with np.errstate(divide="ignore"):
        ratio = LOG_GOLDEN_CONJUGATE / np.log1p(-counts / size)     # b* = 1 + floor(log2(ratio))
    valid = (counts > 0) & (ratio >= 1)
    parameter = np.minimum(1 + np.floor(np.log2(np.where(valid, ratio, 1.0))), MAX_RICE_PARAMETER)
    return np.where(valid, parameter, 0).astype(np.int64)


def stc_rows(accumulated: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """STC of every row of one segment, exactly fedsim's kept set (ties to the lowest index).

    Returns the dense messages (rows) and the encoded bits of each row: 32-bit count, Golomb-Rice
    positions, one sign bit per entry, 32 bits for mu.
    """
    magnitudes = accumulated.abs()
    kth = torch.topk(magnitudes, min(k, magnitudes.shape[1]), dim=1, sorted=False).values.amin(
        dim=1, keepdim=True)
    keep = magnitudes > kth                                        # every nonzero when kth = 0
    ties = (magnitudes == kth) & (kth > 0)
    if bool(ties.any()):
        room = k - keep.sum(dim=1, keepdim=True)
        keep |= ties & (ties.cumsum(dim=1) <= room)
    counts = keep.sum(dim=1)
    mu = ((magnitudes.double() * keep).sum(dim=1) / counts.clamp(min=1)).to(accumulated.dtype)
    sent = torch.where(keep, torch.sign(accumulated) * mu[:, None], torch.zeros((), dtype=mu.dtype))
    return sent, _sparse_bits(keep, counts)


def _sparse_bits(keep: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
    """Encoded bits of each row's ternary message (fedsim's format) from its keep mask."""
    size = keep.shape[1]
    rows, columns = keep.nonzero(as_tuple=True)
    previous = torch.empty_like(columns)
    previous[0:1] = -1
    previous[1:] = columns[:-1]
    previous[torch.cat([torch.ones(min(1, rows.numel()), dtype=torch.bool), rows[1:] != rows[:-1]])] = -1
    gaps = columns - previous                                          # g = s_j - s_(j-1), first s_1 + 1
    parameters = torch.from_numpy(rice_parameters(counts.numpy(), size))
    quotients = torch.zeros(keep.shape[0], dtype=torch.int64)
    quotients.index_add_(0, rows, (gaps - 1) >> parameters[rows])
    return (COUNT_BITS + quotients + counts * (1 + parameters) + counts
            + torch.where(counts > 0, MU_BITS, 0))


class _TorchSTCState:
    """What the torch STC rounds start from: the data as tensors, a copy of a fedsim run's server and
    residual state, and the per-segment budgets k of the two links. The model is softmax regression
    (``hidden = ()``) or fedsim's MLP with those hidden widths; its segments are the flat vector's tensors
    (W1, b1, ..., WL, bL, as :mod:`fedsim.models.mlp` lays them out)."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, eval_sets: dict, n_classes: int,
                 lr: float, p_up: float, p_down: float, weights: np.ndarray,
                 client_residuals: np.ndarray, server_residual: np.ndarray, hidden: tuple[int, ...] = ()):
        self.x_train = torch.from_numpy(np.ascontiguousarray(x_train))
        self.y_train = torch.from_numpy(np.asarray(y_train, dtype=np.int64))
        self.eval_sets = {name: (torch.from_numpy(np.ascontiguousarray(x)),
                                 torch.from_numpy(np.asarray(y, dtype=np.int64)))
                          for name, (x, y) in eval_sets.items()}
        self.n_features = self.x_train.shape[1]
        self.n_classes = n_classes
        self.lr = lr
        self.weights = torch.tensor(weights)
        self.client_residuals = torch.tensor(client_residuals)
        self.server_residual = torch.tensor(server_residual)
        self.widths = (self.n_features, *hidden, n_classes)
        sizes = [size for fan_in, fan_out in zip(self.widths[:-1], self.widths[1:])
                 for size in (fan_in * fan_out, fan_out)]
        ends = np.cumsum(sizes).tolist()
        self.segments = tuple(zip([0] + ends[:-1], ends))
        self.k_up = [ceil_product(p_up, stop - start) for start, stop in self.segments]
        self.k_down = [ceil_product(p_down, stop - start) for start, stop in self.segments]

    def _compress(self, local: torch.Tensor, participants: torch.Tensor) -> tuple[int, int]:
        """Both links of a round from the participants' trained models ``local`` (K, P), overwritten: STC
        with error feedback up (per client and segment), the mean, the server's half; (bits up, bits down)."""
        accumulated = local.sub_(self.weights)                       # dW_k = w_k - W
        accumulated += self.client_residuals[participants]           # A_k + dW_k
        sent = torch.empty_like(accumulated)
        bits_up = torch.zeros(accumulated.shape[0], dtype=torch.int64)
        for (start, stop), k in zip(self.segments, self.k_up):
            sent[:, start:stop], bits = stc_rows(accumulated[:, start:stop], k)
            bits_up += bits
        self.client_residuals[participants] = accumulated - sent      # A_k <- A_k - m_k
        return int(bits_up.sum()), self._downstream(sent.mean(dim=0)) * accumulated.shape[0]

    def _downstream(self, aggregate: torch.Tensor) -> int:
        """The server's half of a round: STC of residual + aggregate per segment, the new residual, the
        weights moved by the message; the message's bits."""
        accumulated_down = self.server_residual + aggregate
        down = torch.empty_like(accumulated_down)
        bits_down = 0
        for (start, stop), k in zip(self.segments, self.k_down):
            message, bits = stc_rows(accumulated_down[None, start:stop], k)
            down[start:stop] = message[0]
            bits_down += int(bits[0])
        self.server_residual = accumulated_down - down
        self.weights += down                                          # W <- W + m_down
        return bits_down


class TorchSTCRound(_TorchSTCState):
    """One round of the STC seed experiment (stc_updown, mean aggregation, error feedback up and down,
    plain SGD), batched over the participants, on preloaded tensors.

    ``weights``, ``client_residuals`` (n_clients, P) and ``server_residual`` start as copies of a fedsim
    run's state; :meth:`step` takes the participants and their batches (fedsim's, replayed), so both
    compute the same round.
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, eval_sets: dict, n_classes: int,
                 lr: float, p_up: float, p_down: float, weights: np.ndarray,
                 client_residuals: np.ndarray, server_residual: np.ndarray):
        super().__init__(x_train, y_train, eval_sets, n_classes, lr, p_up, p_down, weights, client_residuals,
                         server_residual)
        self.choices: dict[str, object] = {}
        # The chosen formulations as zero-argument calls on the real shapes (set by choose_formulations),
        # for timing the products alone.
        self.product_calls: dict[str, Callable[[], torch.Tensor]] = {}

    # -- formulations -------------------------------------------------------------------------------
    def choose_formulations(self, batch_rows: np.ndarray, repeats: int = 3) -> dict:
        """Time the equivalent ways of writing the three products on the real shapes; keep the fastest."""
        K, B = batch_rows.shape
        F, C = self.n_features, self.n_classes
        generator = torch.Generator().manual_seed(0)
        x = self.x_train.index_select(0, torch.from_numpy(batch_rows.reshape(-1))).view(K, B, F)
        stacked = torch.randn(K, F, C, generator=generator, dtype=x.dtype) * 0.01
        bias = torch.randn(K, C, generator=generator, dtype=x.dtype) * 0.01
        delta = torch.randn(K, B, C, generator=generator, dtype=x.dtype)
        forward = {
            "baddbmm": lambda: torch.baddbmm(bias[:, None, :], x, stacked),
            "bmm + bias": lambda: torch.bmm(x, stacked) + bias[:, None, :],
            "einsum": lambda: torch.einsum("kbf,kfc->kbc", x, stacked) + bias[:, None, :],
            "transposed bmm": lambda: torch.bmm(stacked.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2)
            + bias[:, None, :],
        }
        backward = {
            "bmm x^T delta": lambda: torch.bmm(x.transpose(1, 2), delta),
            "(delta^T x)^T": lambda: torch.bmm(delta.transpose(1, 2), x).transpose(1, 2).contiguous(),
            "einsum": lambda: torch.einsum("kbf,kbc->kfc", x, delta),
        }
        x_eval = self.eval_sets["test"][0]
        weights_eval, bias_eval = stacked[0].contiguous(), bias[0]
        weights_eval_t = weights_eval.t().contiguous()
        evaluate = {
            "addmm": lambda: torch.addmm(bias_eval, x_eval, weights_eval),
            "linear (W^T stored)": lambda: torch.nn.functional.linear(x_eval, weights_eval_t, bias_eval),
            "(W^T X^T)^T": lambda: (weights_eval.t() @ x_eval.t()).t() + bias_eval,
        }
        report = {}
        for name, candidates in (("forward", forward), ("backward", backward), ("evaluate", evaluate)):
            best, seconds = fastest(candidates, repeats)
            self.choices[name] = best
            self.product_calls[name] = candidates[best]
            report[name] = {"chosen": best, "seconds": seconds}
        rows = torch.from_numpy(batch_rows.reshape(-1))
        self.product_calls["gather"] = lambda: self.x_train.index_select(0, rows)
        return report

    def _logits(self, x, stacked, bias):
        how = self.choices.get("forward", "baddbmm")
        if how == "bmm + bias":
            return torch.bmm(x, stacked) + bias[:, None, :]
        if how == "einsum":
            return torch.einsum("kbf,kfc->kbc", x, stacked) + bias[:, None, :]
        if how == "transposed bmm":
            return torch.bmm(stacked.transpose(1, 2), x.transpose(1, 2)).transpose(1, 2) + bias[:, None, :]
        return torch.baddbmm(bias[:, None, :], x, stacked)

    def _weight_gradient(self, x, delta, out):
        how = self.choices.get("backward", "bmm x^T delta")
        if how == "(delta^T x)^T":
            out.copy_(torch.bmm(delta.transpose(1, 2), x).transpose(1, 2))
        elif how == "einsum":
            out.copy_(torch.einsum("kbf,kbc->kfc", x, delta))
        else:
            torch.bmm(x.transpose(1, 2), delta, out=out)

    # -- the round ------------------------------------------------------------------------------------
    def step(self, participants: np.ndarray, batch_rows: np.ndarray) -> dict:
        """One round. ``batch_rows`` (iterations, K, B): the samples of each local step of each participant."""
        F, C = self.n_features, self.n_classes
        w_size = F * C
        participants = torch.from_numpy(np.asarray(participants, dtype=np.int64))
        K = participants.numel()
        local = self.weights.expand(K, -1).clone()               # every participant starts from W
        gradient = torch.empty_like(local)
        gradient_w = gradient[:, :w_size].view(K, F, C)
        client_loss = None
        for rows in batch_rows:
            rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
            B = rows.shape[1]
            x = self.x_train.index_select(0, rows.reshape(-1)).view(K, B, F)
            y = self.y_train[rows]
            logits = self._logits(x, local[:, :w_size].view(K, F, C), local[:, w_size:])
            log_p = torch.log_softmax(logits, dim=2)
            client_loss = -log_p.gather(2, y[:, :, None]).mean(dim=(1, 2))
            delta = log_p.exp_()                                     # p - onehot(y), / B
            delta.scatter_add_(2, y[:, :, None], torch.full((K, B, 1), -1.0, dtype=delta.dtype))
            delta /= B
            self._weight_gradient(x, delta, gradient_w)
            torch.sum(delta, dim=1, out=gradient[:, w_size:])
            local.add_(gradient, alpha=-self.lr)                     # w <- w - lr * g
        bits_up, bits_down = self._compress(local, participants)
        return {"client_losses": client_loss, "bits_up": bits_up, "bits_down": bits_down}

    def evaluate(self) -> dict:
        """Loss and accuracy of the server model on every evaluation set."""
        F, C = self.n_features, self.n_classes
        weights = self.weights[:F * C].view(F, C)
        bias = self.weights[F * C:]
        how = self.choices.get("evaluate", "addmm")
        results = {}
        for name, (x, y) in self.eval_sets.items():
            if how == "linear (W^T stored)":
                logits = torch.nn.functional.linear(x, weights.t().contiguous(), bias)
            elif how == "(W^T X^T)^T":
                logits = (weights.t() @ x.t()).t() + bias
            else:
                logits = torch.addmm(bias, x, weights)
            results[f"{name}_loss"] = float(torch.nn.functional.cross_entropy(logits, y))
            results[f"{name}_accuracy"] = float((logits.argmax(dim=1) == y).double().mean())
        return results


class TorchSTCClientLoop(_TorchSTCState):
    """The STC seed round as federated-learning simulations usually run it: one client at a time.

    This is the baseline a user would write with torch (the way Flower and FedLab simulations and the STC
    authors' reference code run their clients): every client owns a model (``torch.nn.Linear``, softmax
    regression; with ``hidden`` widths, an ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``, fedsim's MLP)
    and a ``torch.optim.SGD`` with the run's learning rate, both made once; in a round each
    participant in turn loads the server weights into its model, trains on its batches with
    ``torch.nn.functional.cross_entropy``, ``loss.backward()`` and ``optimizer.step()``, takes its update
    (local weights minus server weights), adds its residual and compresses it with STC per parameter
    tensor (:func:`stc_rows` on its own row), keeping the new residual. The server then averages the
    messages and compresses the aggregate with its own error feedback, as :class:`TorchSTCRound` does.

    The server state (``weights`` in fedsim's flat layout, W (F, C) row-major then b, layer by layer; the
    clients' residuals; the server's residual) starts as copies of a fedsim run's state, and :meth:`step` replays
    fedsim's participants and batches, so the round can be checked against fedsim's before it is timed.
    """

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, eval_sets: dict, n_classes: int,
                 lr: float, p_up: float, p_down: float, weights: np.ndarray,
                 client_residuals: np.ndarray, server_residual: np.ndarray, hidden: tuple[int, ...] = ()):
        super().__init__(x_train, y_train, eval_sets, n_classes, lr, p_up, p_down, weights, client_residuals,
                         server_residual, hidden)
        n_clients = self.client_residuals.shape[0]
        self.models = [torch_network(self.widths, self.x_train.dtype) for _ in range(n_clients)]
        self.optimizers = [torch.optim.SGD(model.parameters(), lr=lr) for model in self.models]
        self.server_model = torch_network(self.widths, self.x_train.dtype)

    def _load(self, model: torch.nn.Module) -> None:
        """Copy the server weights into ``model`` (:func:`load_network`)."""
        load_network(model, self.weights, self.widths)

    def step(self, participants: np.ndarray, batch_rows: np.ndarray) -> dict:
        """One round. ``batch_rows`` (iterations, K, B): the samples of each local step of each participant."""
        participants = np.asarray(participants, dtype=np.int64)
        K = len(participants)
        batch_rows = torch.from_numpy(np.ascontiguousarray(batch_rows, dtype=np.int64))
        sent = torch.empty(K, self.weights.numel(), dtype=self.weights.dtype)
        losses = torch.empty(K, dtype=self.weights.dtype)
        bits_up = 0
        for slot, client in enumerate(participants.tolist()):
            model, optimizer = self.models[client], self.optimizers[client]
            self._load(model)
            for rows in batch_rows[:, slot]:
                x = self.x_train.index_select(0, rows)
                y = self.y_train.index_select(0, rows)
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(x), y)
                loss.backward()
                optimizer.step()
                losses[slot] = loss.detach()
            with torch.no_grad():
                update = network_vector(model, lambda parameter: parameter).sub_(self.weights)
                accumulated = update.add_(self.client_residuals[client])       # A_k + dW_k
                for (start, stop), k in zip(self.segments, self.k_up):
                    message, bits = stc_rows(accumulated[None, start:stop], k)
                    sent[slot, start:stop] = message[0]
                    bits_up += int(bits[0])
                self.client_residuals[client] = accumulated - sent[slot]        # A_k <- A_k - m_k
        bits_down = self._downstream(sent.mean(dim=0))
        return {"client_losses": losses, "bits_up": bits_up, "bits_down": bits_down * K}

    def evaluate(self) -> dict:
        """Loss and accuracy of the server model on every evaluation set (the server's ``nn.Linear``)."""
        self._load(self.server_model)
        results = {}
        with torch.no_grad():
            for name, (x, y) in self.eval_sets.items():
                logits = self.server_model(x)
                results[f"{name}_loss"] = float(torch.nn.functional.cross_entropy(logits, y))
                results[f"{name}_accuracy"] = float((logits.argmax(dim=1) == y).double().mean())
        return results


# ---------------------------------------------------------------------------------------------------------
# LAQ (the lazy seed experiment)


class TorchLAQRun:
    """LAQ iterations (arXiv 1909.07588; fedsim's rule, :mod:`fedsim.algorithms.lazy`) on preloaded tensors.

    ``x`` (M, n, F) and ``y`` (M, n) are the workers' shards; all M gradients come from one batched
    product per direction.
    """

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, theta: np.ndarray, step_size: float,
                 bits: int, l2: float, history_length: int, history_weight: float, max_skips: int):
        self.x = torch.from_numpy(np.ascontiguousarray(x))
        self.y = torch.from_numpy(np.asarray(y, dtype=np.int64))
        self.n_workers, self.n_samples, self.n_features = self.x.shape
        self.n_classes = n_classes
        self.theta = torch.tensor(theta)
        self.step_size, self.bits, self.l2 = step_size, bits, l2
        self.history_weight, self.max_skips = history_weight, max_skips
        n_params = self.theta.numel()
        self.uploaded = torch.zeros(self.n_workers, n_params, dtype=self.x.dtype)   # Q_m
        self.aggregate = torch.zeros(n_params, dtype=self.x.dtype)                   # sum_m Q_m
        self.error_at_upload = torch.zeros(self.n_workers, dtype=torch.float64)       # e_hat_m
        self.skips = torch.zeros(self.n_workers, dtype=torch.int64)
        self.step_history = torch.zeros(history_length, dtype=torch.float64)
        self.iteration = 0
        self.choices: dict[str, str] = {}
        self.product_calls: dict[str, Callable[[], torch.Tensor]] = {}     # as in TorchSTCRound
        # one-hot labels / n, fixed: p - Y is computed as p - this * n
        self.targets = torch.zeros(self.n_workers, self.n_samples, n_classes, dtype=self.x.dtype)
        self.targets.scatter_(2, self.y[:, :, None], 1.0)

    def choose_formulations(self, repeats: int = 3) -> dict:
        M, n, F = self.x.shape
        C = self.n_classes
        generator = torch.Generator().manual_seed(0)
        weights = torch.randn(F, C, generator=generator, dtype=self.x.dtype) * 0.01
        bias = torch.randn(C, generator=generator, dtype=self.x.dtype) * 0.01
        delta = torch.randn(M, n, C, generator=generator, dtype=self.x.dtype)
        flat = self.x.view(M * n, F)
        forward = {
            "addmm (workers stacked)": lambda: torch.addmm(bias, flat, weights).view(M, n, C),
            "matmul (broadcast)": lambda: torch.matmul(self.x, weights) + bias,
            "(W^T X^T)^T": lambda: (weights.t() @ flat.t()).t().reshape(M, n, C) + bias,
        }
        backward = {
            "bmm x^T delta": lambda: torch.bmm(self.x.transpose(1, 2), delta),
            "(delta^T x)^T": lambda: torch.bmm(delta.transpose(1, 2), self.x).transpose(1, 2).contiguous(),
            "einsum": lambda: torch.einsum("mnf,mnc->mfc", self.x, delta),
        }
        report = {}
        for name, candidates in (("forward", forward), ("backward", backward)):
            best, seconds = fastest(candidates, repeats, rtol=1e-9)
            self.choices[name] = best
            self.product_calls[name] = candidates[best]
            report[name] = {"chosen": best, "seconds": seconds}
        return report

    def gradients(self, theta: torch.Tensor):
        """Each worker's loss and gradient at theta: (M,), (M, P)."""
        M, n, F = self.x.shape
        C = self.n_classes
        weights = theta[:F * C].view(F, C)
        bias = theta[F * C:]
        how = self.choices.get("forward", "addmm (workers stacked)")
        if how == "matmul (broadcast)":
            logits = torch.matmul(self.x, weights) + bias
        elif how == "(W^T X^T)^T":
            logits = (weights.t() @ self.x.view(M * n, F).t()).t().reshape(M, n, C) + bias
        else:
            logits = torch.addmm(bias, self.x.view(M * n, F), weights).view(M, n, C)
        log_p = torch.log_softmax(logits, dim=2)
        penalty = 0.5 * self.l2 * float(theta @ theta)
        loss = -(log_p * self.targets).sum(dim=2).mean(dim=1) + penalty
        delta = log_p.exp_().sub_(self.targets).div_(n)                  # (p - Y) / n
        gradients = torch.empty(M, theta.numel(), dtype=theta.dtype)
        how = self.choices.get("backward", "bmm x^T delta")
        gradient_w = gradients[:, :F * C].view(M, F, C)
        if how == "(delta^T x)^T":
            gradient_w.copy_(torch.bmm(delta.transpose(1, 2), self.x).transpose(1, 2))
        elif how == "einsum":
            gradient_w.copy_(torch.einsum("mnf,mnc->mfc", self.x, delta))
        else:
            torch.bmm(self.x.transpose(1, 2), delta, out=gradient_w)
        torch.sum(delta, dim=1, out=gradients[:, F * C:])
        gradients += self.l2 * theta
        return loss, gradients

    def step(self) -> dict:
        """One LAQ iteration: gradients, quantized innovations, the upload rule, the server step."""
        k = self.iteration
        loss, gradients = self.gradients(self.theta)
        full_gradient = gradients.sum(dim=0)
        objective = float(loss.sum())
        grad_norm_sq = float(full_gradient @ full_gradient)
        available = min(k, self.step_history.numel())
        threshold = 0.0 if available == 0 else (
            self.history_weight / available * float(self.step_history.sum())
            / (self.step_size ** 2 * self.n_workers ** 2))
        _, quantized, _, error, innovation = laq_quantize(gradients, self.uploaded, self.bits)
        upload = (innovation >= threshold + 3.0 * (error + self.error_at_upload)) | (self.skips >= self.max_skips)
        if bool(upload.all()):
            self.aggregate += (quantized - self.uploaded).sum(dim=0)
            self.uploaded.copy_(quantized)
        elif bool(upload.any()):
            self.aggregate += (quantized[upload] - self.uploaded[upload]).sum(dim=0)
            self.uploaded[upload] = quantized[upload]
        self.error_at_upload[upload] = error[upload]
        self.skips[upload] = 0
        self.skips[~upload] += 1
        new_theta = self.theta - self.step_size * self.aggregate
        step = new_theta - self.theta
        self.step_history[k % self.step_history.numel()] = float(step @ step)
        self.theta = new_theta
        self.iteration += 1
        return {"objective": objective, "grad_norm_sq": grad_norm_sq, "uploads": upload.numpy().copy()}

    def test_accuracy(self, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
        F, C = self.n_features, self.n_classes
        logits = torch.addmm(self.theta[F * C:], x_test, self.theta[:F * C].view(F, C))
        return float((logits.argmax(dim=1) == y_test).double().mean())


def torch_tensor(array: np.ndarray) -> torch.Tensor:
    """A torch view of a NumPy array (no copy), for the kernel benchmarks' shared inputs."""
    return torch.from_numpy(np.ascontiguousarray(array))


def budget(p: float, size: int) -> int:
    """k = ceil(p N) (fedsim's rounding rule)."""
    return ceil_product(p, size)


def sample_size(p: float, fraction: float, size: int) -> int:
    """n_s = min(max(ceil(N f), ceil(100 / p)), N): the sampled threshold's sample size."""
    return min(max(ceil_product(fraction, size), ceil_product(100 / p, 1)), size)


__all__ = ["MLPGradients", "TorchLAQMLPRun", "TorchLAQRun", "TorchMLPRound", "TorchSTCClientLoop",
           "TorchSTCRound", "budget", "fastest", "laq_quantize", "load_network", "mlp_layers", "mlp_logits",
           "mlp_loss", "network_vector", "sample_size", "sampled_ternarize", "sign", "stc_rows", "ternarize",
           "top_k_sparsify", "top_k_threshold", "torch_network", "torch_tensor"]


# --- terngrad ---


def terngrad(x: torch.Tensor, segment_offsets, uniforms: torch.Tensor, clip: float = 0.0):
    """TernGrad (arXiv 1705.07878) of every row of ``x`` (K, P) with the given uniforms (K, P) float64:
    ``(decoded (K, P), scales (K, S))`` as :func:`fedsim.kernels.terngrad.terngrad_batch`.

    Per segment, all rows at once: sigma from float64 ``torch.cumsum`` (a sequential scan on CPU, the
    same order as fedsim's loop), ``b = dtype(c sigma)`` (+inf when c = 0 or b = 0), magnitudes
    ``min(|x|, b)``, ``s`` their row maximum, ``keep = u < float64(m) / float64(s)`` and
    ``+-s`` where kept, +0.0 elsewhere (0 / 0 is NaN where s = 0, so nothing is kept there).
    """
    rows = x.shape[0]
    decoded = torch.empty_like(x)
    scales = torch.zeros((rows, len(segment_offsets) - 1), dtype=x.dtype)
    zero = torch.zeros((), dtype=x.dtype)
    for j, (start, stop) in enumerate(zip(segment_offsets[:-1], segment_offsets[1:])):
        start, stop = int(start), int(stop)
        if stop == start:
            continue
        segment = x[:, start:stop]
        magnitudes = segment.abs()
        if clip > 0:
            wide = segment.double()
            mean = torch.cumsum(wide, dim=1)[:, -1:] / (stop - start)
            deviations = wide - mean
            sigma = torch.sqrt(torch.cumsum(deviations.mul_(deviations), dim=1)[:, -1:] / (stop - start))
            bound = (clip * sigma).to(x.dtype)
            bound = torch.where(bound > 0, bound, torch.full_like(bound, float("inf")))
            magnitudes = torch.minimum(magnitudes, bound)
        scale = magnitudes.amax(dim=1, keepdim=True)
        keep = uniforms[:, start:stop] < magnitudes.double().div_(scale.double())
        decoded[:, start:stop] = torch.where(keep, torch.where(segment < 0, -scale, scale), zero)
        scales[:, j] = scale[:, 0]
    return decoded, scales


# --- randomk ---
# Random-k given its positions (fedsim.compress.randomk): torch has no counterpart of the seeded position
# generator (Floyd's algorithm is sequential), so the positions are an input; the test derives them again
# from the seeds in plain Python, the benchmark takes fedsim's.


def randomk_rows(x: torch.Tensor, positions: torch.Tensor, scales: torch.Tensor):
    """(decoded, values) of random-k for the rows of ``x`` (K, P) at ``positions`` (K, total) int64.

    ``values = x[r, positions[r]]``; ``decoded`` is zero except ``decoded[r, positions[r]] = values *
    scales`` (one multiply in x's dtype; ``scales`` (total,) holds each position's segment factor,
    dtype(N / k) or 1). Positions within a row are distinct, so the scatter has no collisions.
    """
    values = torch.gather(x, 1, positions)
    decoded = torch.zeros_like(x)
    decoded.scatter_(1, positions, values * scales)
    return decoded, values


# --- powersgd ---
# PowerSGD (arXiv 1905.13727) with fedsim's definitions (fedsim.compress.powersgd,
# fedsim.kernels.powersgd), written independently: Householder QR (torch.linalg.qr) instead of
# Gram-Schmidt, batched matmuls over the senders, torch's own means.


def powersgd_orthogonalize(p: torch.Tensor, tolerance: float) -> torch.Tensor:
    """The orthonormalized columns of ``p`` (n, r), in ``p``'s dtype: Householder QR in float64 with the
    signs fixed so that R's diagonal is positive (which is what Gram-Schmidt computes). A column whose part
    outside the span of the earlier kept columns, |R_jj|, is at most ``tolerance`` times its length is a
    zero column (fedsim's drop rule); the later columns are then orthogonalized against the kept ones only
    (QR over the kept columns, rebuilt column by column: rare, only when something is dropped)."""
    wide = p.double()
    lengths = torch.linalg.vector_norm(wide, dim=0)
    q, r = torch.linalg.qr(wide)
    diagonal = torch.diagonal(r)
    if bool((diagonal.abs() > tolerance * lengths).all()):
        return (q * torch.sign(diagonal)).to(p.dtype)
    kept: list[int] = []
    for j in range(wide.shape[1]):
        _, r = torch.linalg.qr(wide[:, kept + [j]])
        if float(r[-1, -1].abs()) > tolerance * float(lengths[j]):
            kept.append(j)
    result = torch.zeros_like(wide)
    if kept:
        q, r = torch.linalg.qr(wide[:, kept])
        result[:, kept] = q * torch.sign(torch.diagonal(r))
    return result.to(p.dtype)


def powersgd_step(matrices: torch.Tensor, q: torch.Tensor, tolerance: float):
    """One power step for the K senders' matrices (K, n, m) with warm start ``q`` (m, r):
    ``(P_hat, Q_k (K, m, r), decoded (K, n, m), Q_new = mean_k Q_k)``."""
    p_hat = powersgd_orthogonalize(torch.matmul(matrices, q).mean(dim=0), tolerance)
    q_each = torch.matmul(matrices.transpose(1, 2), p_hat)
    decoded = torch.matmul(p_hat, q_each.transpose(1, 2))
    return p_hat, q_each, decoded, q_each.mean(dim=0)


class TorchPowerSGD:
    """PowerSGD with error feedback over rounds: one link (K senders sharing the warm start Q).

    ``shapes`` are the tensors of the flat vector (2-D or more: a matrix (shape[0], rest); others sent as
    they are); ``draw(count, m)`` returns ``count`` rows of m standard normal numbers (a NumPy array), the
    draws of the zero columns of each Q (all of them at the first step), matrix by matrix, as fedsim takes
    them from its Generator.
    """

    def __init__(self, shapes, rank: int, tolerance: float, draw: Callable[[int, int], np.ndarray]):
        self.rank, self.tolerance, self.draw = rank, tolerance, draw
        self.matrices = []
        start = 0
        for shape in shapes:
            size = int(np.prod(shape))
            if len(shape) >= 2 and size:
                self.matrices.append((start, int(shape[0]), size // int(shape[0])))
            start += size
        self.factors: list[torch.Tensor] | None = None
        self.residual: torch.Tensor | None = None

    def step(self, updates: torch.Tensor) -> torch.Tensor:
        """The decoded rows (K, P) of one round; keeps the residuals and the factors."""
        accumulated = updates if self.residual is None else updates + self.residual
        decoded = accumulated.clone()
        if self.factors is None:
            self.factors = [torch.zeros(m, self.rank, dtype=updates.dtype) for _, _, m in self.matrices]
        K = accumulated.shape[0]
        for index, (start, n, m) in enumerate(self.matrices):
            q = self.factors[index].clone()
            zero = torch.nonzero((q == 0).all(dim=0)).flatten()
            if zero.numel():
                q[:, zero] = torch.from_numpy(self.draw(int(zero.numel()), m).T.copy()).to(q.dtype)
            matrices = accumulated[:, start:start + n * m].reshape(K, n, m)
            _, _, rows, self.factors[index] = powersgd_step(matrices, q, self.tolerance)
            decoded[:, start:start + n * m] = rows.reshape(K, n * m)
        self.residual = accumulated - decoded
        return decoded


# --- qsgd ---
# QSGD (arXiv 1610.02132) given its uniforms (fedsim.compress.qsgd, fedsim.kernels.qsgd): the buckets of
# a segment are one (K, buckets, d) block (plus a (K, 1, tail) block for a shorter last bucket), so every
# step is one batched tensor operation; the Elias omega lengths come from a table indexed by bit length.


def _omega_bits_by_length() -> torch.Tensor:
    """Bits of the Elias omega code of an integer of bit length L (index L; 0 for L = 0)."""
    table = [0, 1]
    for length in range(2, 64):
        table.append(length + table[(length - 1).bit_length()])
    return torch.tensor(table, dtype=torch.int64)


_OMEGA_BITS = _omega_bits_by_length()


def _omega_bits(values: torch.Tensor) -> torch.Tensor:
    """Omega code lengths of positive int64 values (below 2^53: the frexp exponent is the bit length)."""
    return _OMEGA_BITS[torch.frexp(values.double()).exponent.long()]


def _qsgd_block(x: torch.Tensor, uniforms: torch.Tensor, levels: int, float_bits: int):
    """QSGD of a (K, m, d) block of m buckets of d entries: (decoded, norms (K, m), signed levels, encoded
    bits (K,))."""
    wide = x.double()
    norms = torch.sqrt(torch.cumsum(wide * wide, dim=2)[:, :, -1]).to(x.dtype)   # sequential float64 sum
    norm64 = norms.double().unsqueeze(2)
    s = float(levels)
    live = norm64 > 0
    ratio = (wide.abs() / norm64 * s).clamp_(max=s)           # (|v| / norm) * s, as fedsim; NaN if norm 0
    lower = torch.floor(ratio)
    level = torch.where(live, lower + (uniforms < ratio - lower), torch.zeros((), dtype=torch.float64))
    magnitude = (norm64 * (level / s)).to(x.dtype)
    negative = x < 0
    decoded = torch.where(level > 0, torch.where(negative, -magnitude, magnitude),
                          torch.zeros((), dtype=x.dtype))
    signed = torch.where(negative, -level, level).long()
    # bits: gap to each nonzero (from the previous nonzero of its bucket, or from -1), its sign bit, its level
    nonzero = signed != 0
    index = torch.arange(x.shape[2], dtype=torch.int64)
    marked = torch.where(nonzero, index, torch.full((), -1, dtype=torch.int64))
    previous_inclusive = torch.cummax(marked, dim=2).values
    previous = torch.cat([torch.full_like(previous_inclusive[:, :, :1], -1), previous_inclusive[:, :, :-1]],
                         dim=2)
    entry_bits = _omega_bits(index - previous) + 1 + _omega_bits(signed.abs())
    entry_bits = torch.where(nonzero, entry_bits, torch.zeros((), dtype=torch.int64)).sum(dim=2)
    end_bits = _omega_bits(x.shape[2] - previous_inclusive[:, :, -1])
    bucket_bits = float_bits + torch.where(live[:, :, 0], entry_bits + end_bits,
                                           torch.zeros((), dtype=torch.int64))
    return decoded, norms, signed, bucket_bits.sum(dim=1)


def qsgd(x: torch.Tensor, segment_offsets, bucket_size: int, levels: int, uniforms: torch.Tensor,
         float_bits: int):
    """QSGD of every row of ``x`` (K, P) with the given uniforms (K, P) float64, buckets of ``bucket_size``
    entries within each segment (0: one per segment): ``(decoded (K, P), norms (K, B), signed levels (K, P)
    int64, encoded bits (K,) int64)`` as :func:`fedsim.kernels.qsgd.qsgd_quantize`.

    Per bucket: norm = dtype(sqrt(float64 ``torch.cumsum`` of the squares)) (a sequential scan on CPU, the
    order of fedsim's loop); r = min(s, (|v| / norm) * s); level = floor(r) + (u < r - floor(r)); decoded
    ``+-dtype(norm * (level / s))`` (+0.0 for level 0); a zero-norm bucket sends zeros.

    Rounding: every step is the same IEEE operation as fedsim's except the square root: ``torch.sqrt`` on
    float64 is not correctly rounded on every CPU build (on an AVX-512 build about 1% of results are 1 ulp
    off ``math.sqrt``). So float64 norms (and the decoded values scaled by them) may differ from fedsim's
    by 1 ulp; float32 norms agree unless the float64 error straddles a float32 rounding boundary
    (probability ~2^-29 per bucket); a level can change only where r lies within ~2^-52 (relative) of an
    integer or of floor(r) + u, which random inputs do not produce.
    """
    rows = x.shape[0]
    decoded = torch.zeros_like(x)
    signed = torch.zeros(x.shape, dtype=torch.int64)
    norms, bits = [], torch.zeros(rows, dtype=torch.int64)
    for start, stop in zip(segment_offsets[:-1], segment_offsets[1:]):
        start, stop = int(start), int(stop)
        size = stop - start
        if size == 0:
            continue
        width = bucket_size if 0 < bucket_size < size else size
        full = size // width
        blocks = [(start, full, width)]
        if size > full * width:
            blocks.append((start + full * width, 1, size - full * width))
        for first, count, length in blocks:
            last = first + count * length
            block = _qsgd_block(x[:, first:last].reshape(rows, count, length),
                                uniforms[:, first:last].reshape(rows, count, length), levels, float_bits)
            decoded[:, first:last] = block[0].reshape(rows, -1)
            signed[:, first:last] = block[2].reshape(rows, -1)
            norms.append(block[1])
            bits += block[3]
    norms = torch.cat(norms, dim=1) if norms else torch.zeros((rows, 0), dtype=x.dtype)
    return decoded, norms, signed, bits


# --- mlp ---
# fedsim's multilayer perceptron (fedsim.models.mlp) in torch, autograd for the gradients: a federated STC
# round and a LAQ iteration with all clients (workers) in one call, and the LAQ iteration one worker at a
# time (the federated per-client loop is TorchSTCClientLoop with hidden widths).


def mlp_layers(theta: torch.Tensor, widths: tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[(W_l, b_l), ...]`` as views of the flat ``theta`` (..., P) in fedsim's layout: each layer's W
    (fan_in, fan_out) row-major, then its b (fan_out)."""
    layers, start = [], 0
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        weight = theta[..., start:start + fan_in * fan_out].unflatten(-1, (fan_in, fan_out))
        start += fan_in * fan_out
        layers.append((weight, theta[..., start:start + fan_out]))
        start += fan_out
    return layers


def mlp_logits(theta: torch.Tensor, x: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """z_L of one model (theta (P,)) for x (n, F): relu between the layers."""
    layers = mlp_layers(theta, widths)
    h = x
    for index, (weight, bias) in enumerate(layers):
        h = torch.addmm(bias, h, weight)                      # z_l = h_{l-1} W_l + b_l
        if index < len(layers) - 1:
            h = torch.relu(h)
    return h


def mlp_loss(theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, widths: tuple[int, ...]) -> torch.Tensor:
    """Mean cross-entropy of one model (theta (P,)) on one batch (x (n, F), y (n,))."""
    return torch.nn.functional.cross_entropy(mlp_logits(theta, x, widths), y)


def torch_network(widths: tuple[int, ...], dtype: torch.dtype) -> torch.nn.Module:
    """The model as users write it: an ``nn.Linear`` (softmax regression, no hidden layer), or an
    ``nn.Sequential`` of Linear, ReLU, ..., Linear."""
    layers = []
    for fan_in, fan_out in zip(widths[:-1], widths[1:]):
        layers += [torch.nn.Linear(fan_in, fan_out, dtype=dtype), torch.nn.ReLU()]
    return layers[0] if len(layers) == 2 else torch.nn.Sequential(*layers[:-1])


def load_network(model: torch.nn.Module, theta: torch.Tensor, widths: tuple[int, ...]) -> None:
    """Copy the flat ``theta`` (each layer's W (fan_in, fan_out) then b) into ``model``'s ``nn.Linear``
    layers (weight (fan_out, fan_in), bias (fan_out,))."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    with torch.no_grad():
        for linear, (weight, bias) in zip(linears, mlp_layers(theta, widths)):
            linear.weight.copy_(weight.t())
            linear.bias.copy_(bias)


def network_vector(model: torch.nn.Module, tensor_of: Callable, out: torch.Tensor | None = None) -> torch.Tensor:
    """``tensor_of(parameter)`` of every ``nn.Linear`` layer (its weight or its gradient) in fedsim's flat
    layout: W (fan_in, fan_out) row-major, then b, layer by layer."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    return torch.cat([tensor for linear in linears
                      for tensor in (tensor_of(linear.weight).t().reshape(-1), tensor_of(linear.bias))], out=out)


class MLPGradients:
    """Each client's loss and gradient, all clients in one call: ``(theta (K, P) or (P,) shared, x (K, n, F),
    y (K, n)) -> (losses (K,), gradients (K, P))``, written two ways; :meth:`choose` keeps the faster.

    * ``"vmap(grad)"``: ``torch.func.vmap`` of ``torch.func.grad_and_value`` of :func:`mlp_loss` over the
      clients (torch's batching of the per-client gradient);
    * ``"bmm + autograd"``: the stacked forward written with ``baddbmm`` (one product per layer for all
      clients), the clients' losses summed and ``backward()`` once: each client's parameters reach only
      its own loss, so the gradient of the sum is the stack of the clients' gradients.
    """

    def __init__(self, widths: tuple[int, ...]):
        self.widths = tuple(widths)
        self.how = "vmap(grad)"
        self._vmapped = {}

    def __call__(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, how: str | None = None):
        how = how or self.how
        if how == "vmap(grad)":
            shared = theta.dim() == 1
            if shared not in self._vmapped:
                per_client = torch.func.grad_and_value(lambda t, xb, yb: mlp_loss(t, xb, yb, self.widths))
                self._vmapped[shared] = torch.func.vmap(per_client, in_dims=(None if shared else 0, 0, 0))
            gradients, losses = self._vmapped[shared](theta, x, y)
            return losses, gradients
        stacked = theta.expand(x.shape[0], -1).clone() if theta.dim() == 1 else theta.detach().clone()
        stacked.requires_grad_(True)
        layers = mlp_layers(stacked, self.widths)
        h = x
        for index, (weight, bias) in enumerate(layers):
            h = torch.baddbmm(bias[:, None, :], h, weight)
            if index < len(layers) - 1:
                h = torch.relu(h)
        K, n, C = h.shape
        losses = torch.nn.functional.cross_entropy(h.reshape(K * n, C), y.reshape(-1), reduction="none")
        losses = losses.view(K, n).mean(dim=1)
        losses.sum().backward()
        return losses.detach(), stacked.grad

    def choose(self, theta: torch.Tensor, x: torch.Tensor, y: torch.Tensor, repeats: int = 3,
               rtol: float = 1e-4) -> dict:
        """Time both ways on these inputs (after checking they agree), keep the faster."""
        candidates = {how: (lambda how=how: self(theta, x, y, how)[1])
                      for how in ("vmap(grad)", "bmm + autograd")}
        self.how, seconds = fastest(candidates, repeats, rtol=rtol)
        return {"chosen": self.how, "seconds": seconds}


class TorchMLPRound(_TorchSTCState):
    """One round of the STC seed experiment on fedsim's MLP, batched over the participants: every local
    step is one :class:`MLPGradients` call for all of them; then STC with error feedback both ways exactly
    as :class:`TorchSTCRound` (same state, same replayed participants and batches)."""

    def __init__(self, x_train: np.ndarray, y_train: np.ndarray, n_classes: int, lr: float, p_up: float,
                 p_down: float, weights: np.ndarray, client_residuals: np.ndarray, server_residual: np.ndarray,
                 hidden: tuple[int, ...]):
        super().__init__(x_train, y_train, {}, n_classes, lr, p_up, p_down, weights, client_residuals,
                         server_residual, hidden)
        self.gradients = MLPGradients(self.widths)

    def _batch(self, rows: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
        rows = torch.from_numpy(np.ascontiguousarray(rows, dtype=np.int64))
        K, B = rows.shape
        return self.x_train.index_select(0, rows.reshape(-1)).view(K, B, -1), self.y_train[rows]

    def choose_formulations(self, batch_rows: np.ndarray, repeats: int = 3) -> dict:
        """Both ways of :class:`MLPGradients` timed on a round's first local step at the server weights."""
        x, y = self._batch(batch_rows)
        return {"gradients": self.gradients.choose(self.weights.expand(x.shape[0], -1), x, y, repeats)}

    def step(self, participants: np.ndarray, batch_rows: np.ndarray) -> dict:
        """One round. ``batch_rows`` (iterations, K, B): the samples of each local step of each participant."""
        participants = torch.from_numpy(np.asarray(participants, dtype=np.int64))
        local = self.weights.expand(participants.numel(), -1).clone()   # every participant starts from W
        for rows in batch_rows:
            client_losses, gradients = self.gradients(local, *self._batch(rows))
            local.add_(gradients, alpha=-self.lr)                       # w <- w - lr * g
        bits_up, bits_down = self._compress(local, participants)
        return {"client_losses": client_losses, "bits_up": bits_up, "bits_down": bits_down}


class TorchLAQMLPRun(TorchLAQRun):
    """LAQ iterations (the rule of :class:`TorchLAQRun`) on fedsim's MLP: the M workers' gradients at the
    shared theta all in one :class:`MLPGradients` call, or (``per_worker=True``) the way a user would
    write it, one worker at a time, each with its own ``nn.Sequential`` of ``nn.Linear`` and ``nn.ReLU``
    loaded with theta, ``cross_entropy`` on its shard and ``loss.backward()``."""

    def __init__(self, x: np.ndarray, y: np.ndarray, n_classes: int, theta: np.ndarray, step_size: float,
                 bits: int, l2: float, history_length: int, history_weight: float, max_skips: int,
                 hidden: tuple[int, ...], per_worker: bool = False):
        super().__init__(x, y, n_classes, theta, step_size, bits, l2, history_length, history_weight, max_skips)
        self.widths = (self.n_features, *hidden, n_classes)
        self.batched = MLPGradients(self.widths)
        self.per_worker = per_worker
        self.workers = [torch_network(self.widths, self.x.dtype) for _ in range(self.n_workers if per_worker else 0)]

    def choose_formulations(self, repeats: int = 3) -> dict:
        if self.per_worker:
            return {"gradients": {"chosen": "per worker: nn.Sequential, loss.backward()"}}
        return {"gradients": self.batched.choose(self.theta, self.x, self.y, repeats, rtol=1e-9)}

    def _worker_gradients(self, theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        losses = torch.empty(self.n_workers, dtype=theta.dtype)
        gradients = torch.empty(self.n_workers, theta.numel(), dtype=theta.dtype)
        for m, model in enumerate(self.workers):
            load_network(model, theta, self.widths)
            model.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(self.x[m]), self.y[m])
            loss.backward()
            losses[m] = loss.detach()
            network_vector(model, lambda parameter: parameter.grad, out=gradients[m])
        return losses, gradients

    def gradients(self, theta: torch.Tensor):
        """Each worker's loss and gradient at theta, the L2 term included: (M,), (M, P)."""
        losses, gradients = self._worker_gradients(theta) if self.per_worker else self.batched(theta, self.x, self.y)
        gradients += self.l2 * theta                                   # grad f_m + l2 theta
        return losses + 0.5 * self.l2 * float(theta @ theta), gradients

    def test_accuracy(self, x_test: torch.Tensor, y_test: torch.Tensor) -> float:
        return float((mlp_logits(self.theta, x_test, self.widths).argmax(dim=1) == y_test).double().mean())
