"""One compressed federated learning run, a round per :meth:`FederatedRun.step` (the round and the catch-up
of returning clients: :mod:`fedsim.algorithms.federated`)."""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np

from fedsim.algorithms.federated.clients import ClientRows, ClientStates, RoundData
from fedsim.algorithms.federated.config import FederatedConfig
from fedsim.compress import Compressed, ErrorFeedback, ErrorFeedbackState
from fedsim.compress.base import float_bits, layout_of
from fedsim.compress.bits import dense_bits, sparse_vector_bits
from fedsim.compress.budget import solve_knob
from fedsim.data.dataset import Dataset
from fedsim.errors import DivergenceError, UpdateOverflowError
from fedsim.kernels import local_sgd
from fedsim.models import ModelConfig
from fedsim.models.base import multiply_adds_per_sample
from fedsim.models.features import as_dtype
from fedsim.rng import RunStreams
from fedsim.system import FederatedClock, SystemConfig


class BatchTrace(NamedTuple):
    """One local step of a round, as ``FederatedRun(..., trace_batches=True)`` records it."""

    round: int                 # the round (1-based)
    participants: np.ndarray   # (K,) clients, increasing
    samples: np.ndarray        # (K, B) training-sample rows of each participant's batch
    counts: np.ndarray         # (K,) real rows of each batch (the rest repeat the last one, masked out)


class _Sent(NamedTuple):
    compressed: object                 # fedsim.compress.Compressed
    residual: np.ndarray | None        # the senders' new residuals under error feedback


@dataclass
class ServerState:
    weights: np.ndarray                  # W, (P,)
    residual: np.ndarray | None          # downstream error accumulation
    round: int = 0                       # completed rounds
    cache: list = field(default_factory=list)  # [(round, positions, values)] of recent downstream messages


class FederatedRun:
    """A federated learning run; :meth:`step` runs one round.

    ``client_indices``: the training samples each client holds (a partitioner's output, one array per
    client), or None when ``dataset.population`` draws each client's data on demand (one client per device;
    its rounds touch only their participants' data); ``seed`` seeds every random choice (sampling, batch
    order, initialization, thresholds);
    ``model_config``: the ``[model]`` table (softmax regression by default); ``system``: the ``[system]``
    table (off by default; on, each record gets ``simulated_seconds`` and ``dropped``: :mod:`fedsim.system`).
    """

    def __init__(self, config: FederatedConfig, dataset: Dataset, client_indices, seed: int = 0, *,
                 model_config: ModelConfig = ModelConfig(), trace_batches: bool = False,
                 system: SystemConfig = SystemConfig()):
        self.population = dataset.population
        if self.population is not None and trace_batches:
            raise ValueError("trace_batches needs a dataset held whole: a population's batch rows are the round's")
        sizes = (self.population.train_counts if self.population is not None
                 else np.array([len(ix) for ix in client_indices], dtype=np.int64))
        if len(sizes) != config.n_clients:
            raise ValueError(f"n_clients is {config.n_clients} but the partition has {len(sizes)} clients")
        if np.any(sizes == 0):
            raise ValueError(f"clients {np.flatnonzero(sizes == 0)[:10].tolist()} hold no samples; every "
                             f"client needs at least one (use fewer clients or another partition)")
        if config.batch_size > sizes.min():
            raise ValueError(f"federated.batch_size ({config.batch_size}) is larger than the smallest client's data "
                             f"({sizes.min()} samples, client {sizes.argmin()}): set federated.batch_size <= "
                             f"{sizes.min()}, or fewer federated.n_clients")
        # With over-selection the run samples more clients than it aggregates (system.over_select).
        self.needed = config.participants_needed
        if system.enabled and system.sampled(self.needed, config.n_clients) != config.participants_per_round:
            config = dataclasses.replace(config, sampled_per_round=system.sampled(self.needed, config.n_clients))
        self.config = config
        self.resolved_method = config.resolved_method
        self.dataset = dataset
        self.dtype = np.dtype(config.dtype)
        # A loss beyond 1 / eps of the run's floats has left their range: it no longer resolves a change of one
        # nat (cross-entropy at chance is ln C), so the run has diverged although the number is finite.
        self.loss_limit = 1.0 / float(np.finfo(self.dtype).eps)
        # The model, from the registry, shaped by the dataset (the clients add the L2 term: g + l2 w).
        sampled = config.participants_per_round     # its (K, P) arrays, refused if they would not fit
        self.model = model_config.build(dataset.n_features, dataset.n_classes, rows=sampled, dtype=self.dtype,
                                        whose=f"client sampled per round ({sampled} of federated.n_clients = "
                                              f"{config.n_clients})")
        self.x_train = as_dtype(dataset.x_train, self.dtype)        # floats, or 8-bit Codes
        self.y_train = np.asarray(dataset.y_train, dtype=np.int64)
        n_eval, default = config.eval_train_samples, FederatedConfig.eval_train_samples     # the default: at most
        if n_eval > len(self.y_train) and n_eval != default:
            raise ValueError(f"federated.eval_train_samples must be an integer in [1, {len(self.y_train)}] (the "
                             f"training samples; or {default}: all of them if fewer), got {n_eval}")
        n_eval = min(n_eval, len(self.y_train))
        self.eval_sets = {
            "train": (self.x_train[:n_eval], self.y_train[:n_eval]),
            "test": (as_dtype(dataset.x_test, self.dtype),
                     np.asarray(dataset.y_test, dtype=np.int64)),
        }
        self.streams = RunStreams(seed)
        self.sampling_rng = self.streams.generator("sampling")
        self.compression_rng = self.streams.generator("compression")
        spec = self.model.spec
        # The two links: a compressor, wrapped in error feedback where the method keeps residuals.
        self.compressors = {"up": config.compressor("up"), "down": config.compressor("down")}
        up, down = self.compressors["up"], self.compressors["down"]
        self.up = ErrorFeedback(up) if self.resolved_method.accumulate_up else up
        self.down = ErrorFeedback(down) if self.resolved_method.accumulate_down else down
        # The compressors' own states (a Layout when stateless); residuals are kept with their owners.
        self.up_state = up.init(spec)
        self.down_state = down.init(spec)
        P = spec.size

        samples = (None if self.population is not None
                   else np.concatenate([np.asarray(ix, dtype=np.int64) for ix in client_indices]))
        self.clients = ClientStates.start(sizes, samples, {
            "residual": ClientRows(config.n_clients, P, self.dtype) if self.resolved_method.accumulate_up else None,
            "momentum": ClientRows(config.n_clients, P, self.dtype) if config.momentum else None})
        init_rng = self.streams.generator("init")
        self.server = ServerState(
            weights=self.model.init(init_rng, model_config.init_kind, self.dtype),
            residual=np.zeros(P, self.dtype) if self.resolved_method.accumulate_down else None)
        # The simulated clock (None when [system] is off): devices from the run's "system" stream.
        self.clock = (FederatedClock(system, self.streams, config.n_clients, multiply_adds_per_sample(self.model),
                                     config.local_iterations * config.batch_size) if system.enabled else None)
        self.catch_up_bits = np.zeros(0, np.int64)      # (K,) each participant's catch-up bits this round
        self.history: list[dict] = []
        # With trace_batches, every local step's participants and batch rows, so that another
        # implementation (the torch oracle and baselines) can replay the same rounds.
        self.batch_trace: list[BatchTrace] | None = [] if trace_batches else None
        self._local_buffers: dict = {}     # the local rounds' buffers and gradient, made at first use
        self.unreachable = 0               # sampled clients unreachable this round (system.availability)
        self.knob = None                   # the up compressor's knob, once solved for bits_per_round
        self._first, self._solved, self._first_seconds = None, {}, 0.0     # round 1's first half (solve_budget)

    def solve_budget(self) -> None:
        """Solve ``bits_per_round`` now, on round 1's updates (kept for :meth:`step`: the same round), so that a
        budget out of reach is refused before a run folder exists; nothing without a budget or updates."""
        if self.config.bits_per_round is None or self.knob is not None or self.server.round:
            return
        started = time.perf_counter()
        try:
            self._first = self._local_round(1)
            if len(self._first[0]):
                self._solved = self._meet_bits_budget(self._first[2])
        except DivergenceError as error:       # raised by step(), as it would have been
            self._first = error
            return
        self._first_seconds = time.perf_counter() - started

    # -- the round ----------------------------------------------------------------------------------
    def step(self) -> dict:
        """Run one round; append its record to ``history`` and return it."""
        config, clients, server = self.config, self.clients, self.server
        started = time.perf_counter() - self._first_seconds
        t = server.round + 1
        first, solved, self._first, self._solved, self._first_seconds = self._first, self._solved, None, {}, 0.0
        if isinstance(first, DivergenceError):
            raise first
        participants, catch_up_bits, update, client_loss = first or self._local_round(t)
        K = len(participants)           # the sampled clients that were reachable (all, without [system])
        solved = (self._meet_bits_budget(update) if K and config.bits_per_round is not None and self.knob is None
                  else solved)

        # Upstream: the participants' rows (with their residuals under error feedback).
        residual = clients.residual[participants] if clients.residual is not None else None
        up = self._send(self.up, "up_state", update, residual) if K else self._nothing_sent()
        kept = None
        if self.clock is not None:     # which updates arrive in time: each participant receives its catch-up,
            # trains, sends its encoded update (PowerSGD: P_k, then Q_k after the server's P_hat)
            devices = self.clock.devices_in(t, participants)
            kept, wait = self.clock.wait(devices, self.catch_up_bits, up.compressed.encoded_bits, self.needed,
                                         up.compressed.broadcast_bits)
            if residual is not None:   # a dropped client keeps its whole update: A_k <- A_k + dW_k
                up.residual[~kept] = residual[~kept] + update[~kept]
        if clients.residual is not None:
            clients.residual[participants] = up.residual
        if K and (kept is None or kept.any()):
            arrived = slice(None) if kept is None or kept.all() else kept
            with np.errstate(over="ignore", invalid="ignore"):     # an overflow diverges below, in fedsim's words
                aggregate = self.up.aggregate(up.compressed.decoded[arrived], clients.sizes[participants][arrived],
                                              self.resolved_method.aggregation, config.lr)
        else:                          # no update arrived: the server model stays
            aggregate = np.zeros_like(server.weights)
        if not np.all(np.isfinite(aggregate)):     # a decoded update overflowed (random-k's N/k, TernGrad's scale)
            self._diverge(t, "the server's aggregate of the decoded updates is NaN or inf (a scaled entry overflows)")
        # Downstream: the server's aggregate, one row (with the server's residual).
        down = self._send(self.down, "down_state", aggregate[None, :],
                             None if server.residual is None else server.residual[None, :])
        if server.residual is not None:
            server.residual = down.residual[0]
        bits_up, analytic_up = up.compressed.encoded_bits, up.compressed.analytic_bits
        bits_down, analytic_down = down.compressed.encoded_bits, down.compressed.analytic_bits
        protocol_bits = up.compressed.broadcast_bits * K       # sent to the participants mid-protocol
        message = down.compressed.decoded[0]
        server.weights += message                                # W <- W + m_down
        positions = np.flatnonzero(message)
        server.cache.append((t, positions, message[positions]))
        clients.synchronized(participants, t)
        self._prune_cache()

        record = {
            "round": t,
            "participants": int(K) + self.unreachable,
            # (with no reachable participant: the lr and epoch of none, written as nothing)
            "lr": float(np.mean(self._learning_rates(clients.epoch[participants]))) if K else None,
            "epoch": float(np.mean(clients.epoch[participants]
                                   + clients.cursor[participants] / clients.sizes[participants])) if K else None,
            "iteration": t * config.local_iterations,
            "client_losses": client_loss.astype(float).tolist(),
            "bits_up": int(bits_up.sum()),
            "bits_up_analytic": float(analytic_up.sum()),
            # the broadcast reaches every participant; returning clients also got their catch-up
            "bits_down": int(bits_down[0]) * K + catch_up_bits + protocol_bits,
            "bits_down_analytic": float(analytic_down[0]) * K + catch_up_bits + protocol_bits,
            "bits_down_catch_up": int(catch_up_bits),
            **solved,
        }
        if self.clock is not None:
            previous = self.history[-1]["simulated_seconds"] if self.history else 0.0
            # then the round's encoded broadcast reaches every participant
            record["simulated_seconds"] = self.clock.checked(
                previous + wait + self.clock.broadcast_seconds(devices, int(bits_down[0])), f"round {t}")
            record["dropped"] = int(K - kept.sum()) + self.unreachable
        if t % config.eval_every == 0 or t == config.rounds:
            for split, (x, y) in self.eval_sets.items():
                loss, accuracy = self.model.evaluate(server.weights, x, y)
                if not abs(loss) <= self.loss_limit:
                    self._diverge(t, f"the {split} loss of the server model is NaN or inf, or above "
                                     f"{self.loss_limit:.3g}")
                record[f"{split}_loss"] = float(loss)
                record[f"{split}_accuracy"] = float(accuracy)
        record["time"] = time.perf_counter() - started
        server.round = t                   # complete only now (a round whose evaluation diverges is not)
        self.history.append(record)
        return record

    def _local_round(self, t: int):
        """The first half of round ``t``: sample the participants, bring the reachable ones up to date and
        train them; ``(participants, catch-up bits, updates (K, P), client losses (K,))``. A sampled client
        that is unreachable (system.availability) takes no part: it receives, trains and keeps nothing."""
        config, clients, server = self.config, self.clients, self.server
        participants = np.sort(self.sampling_rng.choice(config.n_clients, config.participants_per_round,
                                                        replace=False))
        self.unreachable = 0
        if self.clock is not None:
            reachable = self.clock.reachable(t, participants)
            self.unreachable = int(np.count_nonzero(~reachable))
            participants = participants[reachable]
        catch_up_bits = self._synchronize(participants, t)

        K = len(participants)
        data = self._round_data(participants)
        weights = np.broadcast_to(server.weights, (K, server.weights.size)).copy()
        momentum = clients.momentum[participants] if clients.momentum is not None else None
        gradient = self._batch_gradient(K, data.x) if K else None
        buffers = self._round_buffers(K)
        dtype = self.dtype.type
        l2, momentum_factor = dtype(config.l2), dtype(config.momentum)
        momentum_rows = momentum if momentum is not None else buffers["no_momentum"]
        step = 0
        while K and step < config.local_iterations:
            # A run of steps at one learning rate: up to a step that completes some participant's epoch.
            lr = self._learning_rates(data.epoch[data.rows])
            end = self._next_batches(data, step, buffers["samples"], buffers["counts"])
            labels = data.y[buffers["samples"][step:end]]
            for s in range(step, end):
                samples, count = buffers["samples"][s], buffers["counts"][s]
                mask = None
                if count.min() < config.batch_size:    # an epoch's last, smaller batch: 0/1 over its rows
                    mask = (buffers["slot"] < count[:, None]).astype(self.dtype)
                # One pass: each client's batch is gathered from x_train block by block, in cache.
                client_loss, grad = gradient(weights, samples, labels[s - step], mask)
                # The SGD step (fedsim.kernels.local_sgd), unless a loss is NaN, inf or out of range
                if not local_sgd.sgd_update(weights, grad, momentum_rows, lr, l2, momentum_factor,
                                            client_loss, self.loss_limit):
                    out_of_range = ~(np.abs(client_loss) <= self.loss_limit)
                    self._diverge(t, f"the training losses of clients {participants[out_of_range][:10].tolist()} "
                                     f"are NaN or inf, or above {self.loss_limit:.3g}")
            step = end
        if momentum is not None:
            clients.momentum[participants] = momentum
        if data.cursor is not clients.cursor:     # a population's round: its participants move on
            clients.cursor[participants], clients.epoch[participants] = data.cursor, data.epoch

        if K == 0:
            return participants, catch_up_bits, weights, np.zeros(0, self.dtype)
        update = weights
        update -= server.weights                                # dW_k = w_k - W
        if not np.all(np.isfinite(update)):
            bad = participants[~np.all(np.isfinite(update), axis=1)]
            self._diverge(t, f"the updates of clients {bad[:10].tolist()} contain NaN or inf")

        return participants, catch_up_bits, update, client_loss

    def _meet_bits_budget(self, update: np.ndarray) -> dict:
        """Solve the up compressor's knob so that its mean encoded bits on the first round's updates meet
        ``bits_per_round`` (:func:`fedsim.compress.budget.solve_knob`; the residuals are still zero), use
        it from this round on, and return what the round's record keeps of it."""
        compressor = self.compressors["up"]
        try:
            _, value, bits = solve_knob(compressor, update, self.model.spec, self.config.bits_per_round,
                                        lambda: self.streams.generator("bits_per_round"),
                                        setting="federated.bits_per_round")
        except UpdateOverflowError as error:     # the update cannot be encoded at some knob value
            self._diverge(self.server.round + 1, str(error))
        self._use_knob(value)
        return {"bits_per_round_knob": compressor.budget_knob, "bits_per_round_knob_value": value,
                "bits_per_round_first": bits}

    def _use_knob(self, value) -> None:
        """Send upstream with the up compressor's knob at ``value`` (the down link keeps its settings)."""
        up = dataclasses.replace(self.compressors["up"], **{self.compressors["up"].budget_knob: value})
        self.compressors["up"] = up
        self.up = ErrorFeedback(up) if self.resolved_method.accumulate_up else up
        self.up_state = up.init(self.model.spec)
        self.knob = value

    def next_updates(self) -> np.ndarray:
        """The updates w_k - W (K, P) the participants of the next round would send, their training done
        (it consumes the run's streams and moves its clients on: for a run that is then thrown away, as
        ``fedsim compressors report`` does with a run folder's checkpoint)."""
        return self._local_round(self.server.round + 1)[2]

    def run(self, rounds: int | None = None) -> list[dict]:
        """Run until ``rounds`` (default: ``config.rounds``) rounds are complete."""
        target = self.config.rounds if rounds is None else rounds
        while self.server.round < target:
            self.step()
        return self.history

    # -- pieces -------------------------------------------------------------------------------------
    def _diverge(self, t: int, what: str) -> None:
        """Stop the run: round ``t`` met NaN or inf; the message names the last finite values."""
        evaluated = [r for r in self.history if "test_accuracy" in r]
        last = (f"; last finite: test accuracy {evaluated[-1]['test_accuracy']:.4f}, test loss "
                f"{evaluated[-1]['test_loss']:.4g} at round {evaluated[-1]['round']}") if evaluated else ""
        raise DivergenceError(f"round {t}: {what} (the run diverged; try a smaller lr than "
                              f"{self.config.lr}){last}; {len(self.history)} completed rounds kept", self.history)

    def _nothing_sent(self) -> _Sent:
        """The upstream of a round without a reachable participant: no rows, no bits."""
        P = self.server.weights.size
        none = Compressed(np.zeros((0, P), self.dtype), np.zeros(0, np.int64), np.zeros(0),
                          layout_of(self.up_state), self.compressors["up"])
        return _Sent(none, None if self.clients.residual is None else np.zeros((0, P), self.dtype))

    def _send(self, link, state_name: str, rows: np.ndarray, residual: np.ndarray | None):
        """Compress ``rows`` over ``link`` (with ``residual`` under error feedback), keeping the
        compressor's state in ``self.<state_name>``; rows the compressor cannot encode (a scale overflows) diverge."""
        state = getattr(self, state_name)
        try:
            if residual is not None:
                compressed, feedback = link.compress(rows, ErrorFeedbackState(state, residual),
                                                     self.compression_rng)
                setattr(self, state_name, feedback.inner)
                return _Sent(compressed, feedback.residual)
            compressed, state = link.compress(rows, state, self.compression_rng)
        except UpdateOverflowError as error:
            self._diverge(self.server.round + 1, str(error))
        setattr(self, state_name, state)
        return _Sent(compressed, None)

    def _synchronize(self, participants: np.ndarray, t: int) -> int:
        """The bits of the returning participants' catch-up (:mod:`fedsim.algorithms.federated`); each one's
        are kept in ``catch_up_bits`` (K,), for the simulated clock."""
        self.catch_up_bits = np.zeros(len(participants), np.int64)
        last_sync = self.clients.last_sync[participants]
        P = self.server.weights.size
        value_bits = float_bits(self.dtype)         # the width of every float the run sends
        full_model = dense_bits(P, value_bits)
        for since in np.unique(last_sync[last_sync < t - 1]):      # the returning participants, by last round
            missed = np.zeros(P, self.dtype)
            covered = False
            for round_, positions, values in self.server.cache:
                if round_ > since:
                    missed[positions] += values
                    covered = covered or round_ == since + 1
            cost = sparse_vector_bits(np.flatnonzero(missed), P, value_bits) if covered else full_model
            self.catch_up_bits[last_sync == since] = min(cost, full_model)
        return int(self.catch_up_bits.sum())

    def _prune_cache(self) -> None:
        """Keep the cache bounded: once the union of the newest messages' positions would make a sparse
        catch-up cost as much as the full model, older messages go, and a client that missed them receives
        the full model. Where messages cancel (majority votes add +-lr), the sum it missed may have been
        sparser: the protocol simulated is this bounded cache, and its bits are the ones counted."""
        P = self.server.weights.size
        value_bits = float_bits(self.dtype)
        support = np.zeros(P, bool)
        for i in range(len(self.server.cache) - 1, -1, -1):
            support[self.server.cache[i][1]] = True
            if sparse_vector_bits(np.flatnonzero(support), P, value_bits) >= dense_bits(P, value_bits):
                del self.server.cache[:i]
                return
        oldest_needed = self.clients.oldest_sync()
        self.server.cache = [entry for entry in self.server.cache if entry[0] > oldest_needed]

    def _learning_rates(self, epoch: np.ndarray) -> np.ndarray:
        """lr, lr * decay^epoch or lr * decay^(epoch // step), from each client's own epoch count."""
        config = self.config
        if config.lr_schedule == "exponential":
            factor = config.lr_decay ** epoch
        elif config.lr_schedule == "step":
            factor = config.lr_decay ** (epoch // config.lr_step_epochs)
        else:
            factor = np.ones(len(epoch))
        return (config.lr * factor).astype(self.dtype)

    def _round_data(self, participants: np.ndarray) -> RoundData:
        """The training data of round's ``participants``: the run's own arrays, or, for a population drawn
        on demand, the participants' data generated now (each device's from its own seed), their sample
        orders made again from their (seed, client, epoch) streams."""
        clients = self.clients
        if self.population is None:
            return RoundData(self.x_train, self.y_train, clients.samples, clients.order, clients.offsets,
                              clients.cursor, clients.epoch, clients.order_epoch, participants, participants)
        x, y, offsets = self.population.training_data(participants)
        samples = np.arange(len(y), dtype=np.int64)
        K = len(participants)
        return RoundData(as_dtype(x, self.dtype), y, samples, samples.copy(), offsets, clients.cursor[participants],
                          clients.epoch[participants], np.full(K, -1, np.int64), np.arange(K), participants)

    def _next_batches(self, data: RoundData, first: int, samples: np.ndarray, counts: np.ndarray) -> int:
        """The rows of the next mini-batches of every participant, steps ``first, ...`` of the round, into
        ``samples[s]`` (K, B) with ``counts[s]`` (K,) real rows each (the batches:
        :func:`fedsim.kernels.local_sgd.plan_batches`); returns the step after the last one planned. A
        client's order is reshuffled for its next epoch before its next batch."""
        # Shuffle lazily: only a client that trains needs its order for the current epoch.
        for i in np.flatnonzero(data.order_epoch[data.rows] != data.epoch[data.rows]):
            self._shuffle(data, data.rows[i], data.clients[i])
        end = local_sgd.plan_batches(data.order, data.offsets, data.cursor, data.epoch, data.rows,
                                     first, samples, counts)
        if self.batch_trace is not None:
            for s in range(first, end):
                self.batch_trace.append(BatchTrace(self.server.round + 1, data.clients.copy(), samples[s].copy(),
                                                   counts[s].copy()))
        return end

    def _batch_gradient(self, K: int, x):
        """``(weights, rows, labels, mask) -> (loss, grad)`` of K participants' batches of rows of ``x``: the
        model's reusable one (its optional ``batch_gradient``, buffers allocated once per run for the run's
        own data, per round for a population's) where it has one, else its ``loss_and_grad``."""
        key = ("gradient", K)
        if x is not self.x_train or key not in self._local_buffers:
            prepared = getattr(self.model, "batch_gradient", None)
            gradient = None if prepared is None else prepared(x, K, self.config.batch_size, self.dtype)
            if gradient is None:
                def gradient(weights, rows, labels, mask):
                    return self.model.loss_and_grad(weights, x, labels, mask, rows=rows)
            if x is not self.x_train:
                return gradient
            self._local_buffers[key] = gradient
        return self._local_buffers[key]

    def _round_buffers(self, K: int) -> dict:
        """The local round's index buffers for K participants, allocated once per run."""
        key = ("batches", K)
        if key not in self._local_buffers:
            steps, B = self.config.local_iterations, self.config.batch_size
            self._local_buffers[key] = {"samples": np.empty((steps, K, B), np.int64),
                                        "counts": np.empty((steps, K), np.int64),
                                        "slot": np.arange(B), "no_momentum": np.empty((0, 0), self.dtype)}
        return self._local_buffers[key]

    def _shuffle(self, data: RoundData, row: int, client: int) -> None:
        """Client ``client``'s order (entry ``row`` of ``data``) for its current epoch: a permutation of its
        samples drawn from a stream keyed by (run seed, client, epoch), so no per-client generator is stored."""
        rng = self.streams.generator("batches", client, data.epoch[row])
        lo, hi = data.offsets[row], data.offsets[row + 1]
        data.order[lo:hi] = data.samples[lo:hi][rng.permutation(hi - lo)]
        data.order_epoch[row] = data.epoch[row]

    # -- checkpoints ----------------------------------------------------------------------------------
    @property
    def completed(self) -> int:
        return self.server.round

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        """The protocol's checkpoint (:mod:`fedsim.algorithms.family`): rows and counters only of the clients that
        took part (the others are at their start: cursor, epoch and last_sync 0), so a checkpoint of a million
        mostly idle clients stays small; no sample order (a function of (seed, client, epoch), made again)."""
        clients, server = self.clients, self.server
        touched = clients.last_sync.held()[0].copy()          # ascending
        arrays = {"server_weights": server.weights, "cursor": clients.cursor[touched],
                  "epoch": clients.epoch[touched], "last_sync": clients.last_sync[touched], "touched": touched}
        if server.residual is not None:
            arrays["server_residual"] = server.residual
        if clients.residual is not None:
            arrays["client_residual"] = clients.residual[touched]
        if clients.momentum is not None:
            arrays["client_momentum"] = clients.momentum[touched]
        cache = server.cache
        arrays["cache_rounds"] = np.array([entry[0] for entry in cache], np.int64)
        arrays["cache_offsets"] = np.cumsum([0] + [len(entry[1]) for entry in cache]).astype(np.int64)
        arrays["cache_positions"] = np.concatenate([entry[1] for entry in cache] or [np.zeros(0, np.int64)])
        arrays["cache_values"] = np.concatenate([entry[2] for entry in cache] or [np.zeros(0, self.dtype)])
        for direction, compressor in self.compressors.items():
            state = getattr(self, f"{direction}_state")
            arrays.update({f"{direction}_{key}": value for key, value in compressor.state_arrays(state).items()})
        meta = {"round": server.round, "history": self.history,
                "sampling_rng": self.sampling_rng.bit_generator.state,
                "compression_rng": self.compression_rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restore a :meth:`state_dict` into a run built with the same config, data and seed."""
        clients, server = self.clients, self.server
        if arrays["server_weights"].shape != server.weights.shape:
            raise ValueError(f"checkpoint has {arrays['server_weights'].shape[0]} parameters, this run "
                             f"{server.weights.shape[0]}: it belongs to another config or dataset")
        solved = [r["bits_per_round_knob_value"] for r in meta["history"] if "bits_per_round_knob_value" in r]
        if self.config.bits_per_round is not None and solved:     # the knob solved at the first round with updates
            self._use_knob(solved[0])
        server.weights = np.array(arrays["server_weights"], dtype=self.dtype)
        if server.residual is not None:
            server.residual = np.array(arrays["server_residual"], dtype=self.dtype)
        server.round = int(meta["round"])
        offsets = arrays["cache_offsets"]
        server.cache = [(int(r), arrays["cache_positions"][offsets[i]:offsets[i + 1]].copy(),
                         arrays["cache_values"][offsets[i]:offsets[i + 1]].astype(self.dtype))
                        for i, r in enumerate(arrays["cache_rounds"])]
        touched = arrays["touched"]
        counters = {name: arrays[name] for name in ("cursor", "epoch", "last_sync")}
        if len(counters["last_sync"]) != len(touched):       # an older checkpoint: every client's counters
            counters = {name: values[touched] for name, values in counters.items()}
        for name, values in counters.items():
            getattr(clients, name)[touched] = values
        if clients.residual is not None:
            clients.residual[touched] = arrays["client_residual"]
        if clients.momentum is not None:
            clients.momentum[touched] = arrays["client_momentum"]
        for direction, compressor in self.compressors.items():
            prefix, name = f"{direction}_", f"{direction}_state"
            saved = {key[len(prefix):]: value for key, value in arrays.items() if key.startswith(prefix)}
            setattr(self, name, compressor.load_state_arrays(getattr(self, name), saved))
        if clients.order_epoch is not None:     # orders are made again from (seed, client, epoch) when needed
            clients.order_epoch[:] = -1
        self.sampling_rng.bit_generator.state = meta["sampling_rng"]
        self.compression_rng.bit_generator.state = meta["compression_rng"]
        self.history = list(meta["history"])
