"""One lazy-aggregation run, an iteration per :meth:`LazyRun.step` (the equations:
:mod:`fedsim.algorithms.lazy`)."""

from __future__ import annotations

import math
import time
import warnings
from typing import Callable, Sequence

import numpy as np
from tqdm.auto import tqdm

from fedsim.algorithms.lazy.config import RULES, LazyConfig, bits_per_upload
from fedsim.algorithms.lazy.rules import (CURVATURE_STEPS, history_threshold, lag_ps_request_decision,
                                          laq_upload_decision, smoothness_of, stack_shards)
from fedsim.compress.bits import dense_bits
from fedsim.data.dataset import Dataset
from fedsim.data.partition import contiguous
from fedsim.errors import DivergenceError
from fedsim.kernels import laq
from fedsim.models import ModelConfig
from fedsim.models.base import multiply_adds_per_sample
from fedsim.models.features import as_dtype
from fedsim.rng import RunStreams
from fedsim.system import LazyClock, SystemConfig


class LazyRun:
    """One lazy-aggregation run, an iteration per :meth:`step` (the equations: :mod:`fedsim.algorithms.lazy`;
    its records' keys: :mod:`fedsim.runs`; with ``system``, the ``[system]`` table, on: :class:`LazyClock`).

    ``partition``: one index array into ``data.x_train`` per worker (default :func:`~fedsim.data.partition.contiguous`).
    ``smoothness``: LAG-PS's ``L_m``; when omitted, :func:`~fedsim.algorithms.lazy.rules.smoothness_of` (with a
    warning where it is an estimate, not a bound). ``model_config``: the ``[model]`` table. The test data may be empty.
    """

    def __init__(self, config: LazyConfig, data: Dataset, partition: Sequence[np.ndarray] | None = None, *,
                 smoothness: np.ndarray | None = None, model_config: ModelConfig = ModelConfig(),
                 system: SystemConfig = SystemConfig()):
        n_samples, n_workers = len(data.x_train), config.n_workers
        if n_workers > n_samples:
            raise ValueError(f"n_workers (M) must be in [1, {n_samples}] (the number of training samples), "
                             f"got {n_workers}")
        if partition is None:
            partition = contiguous(n_samples, n_workers)
        if len(partition) != n_workers:
            raise ValueError(f"partition has {len(partition)} index arrays but n_workers (M) is {n_workers}")
        dtype = np.dtype(config.dtype)
        self.shards = stack_shards(data.x_train, data.y_train, partition, dtype)
        if RULES[config.method].gradient == "minibatch" and config.minibatch_size > self.shards.sizes.min():
            raise ValueError(f"lazy.minibatch_size must be in [1, {self.shards.sizes.min()}] (the smallest "
                             f"shard), got {config.minibatch_size}")
        self.model, self.theta = starting_point(config, model_config, data.n_features, data.n_classes)
        self.x_test = as_dtype(data.x_test, dtype)
        self.y_test = data.y_test
        streams = RunStreams(config.seed)
        self.minibatch_rng = streams.generator("minibatch")
        n_params = self.model.spec.size
        if RULES[config.method].skip == "server":
            if smoothness is None:
                smoothness = self._smoothness(model_config.name, streams.generator("curvature"))
            smoothness = np.asarray(smoothness, dtype=np.float64)
            if smoothness.shape != (n_workers,) or not np.all(np.isfinite(smoothness) & (smoothness > 0)):
                raise ValueError(f"smoothness must hold {n_workers} finite positive numbers, "
                                 f"got {smoothness!r}")
        else:
            smoothness = None
        self.smoothness = smoothness
        # lazy.bits_per_upload: b solved for P, recorded in the first record (budget_record)
        budget = config.bits_per_upload
        self.config = config = config.for_parameters(n_params)
        self.bits_per_upload = bits_per_upload(config.method, n_params, config.bits)
        self.budget_record = {} if budget is None else {
            "bits_per_upload_budget": budget, "bits_per_upload_b": config.bits,
            "bits_per_upload_achieved": self.bits_per_upload}
        # The simulated clock: theta broadcast (32 P bits), each worker's gradient, the uploaders' uplinks.
        samples = (np.full(n_workers, config.minibatch_size) if RULES[config.method].gradient == "minibatch"
                   else self.shards.sizes)
        self.clock = (LazyClock(system, streams, n_workers, multiply_adds_per_sample(self.model), samples,
                                dense_bits(n_params), self.bits_per_upload) if system.enabled else None)

        # Server and worker state.
        self.uploaded = np.zeros((n_workers, n_params), dtype=dtype)     # Q_m, each worker's last upload
        self.aggregate = np.zeros(n_params, dtype=dtype)                 # sum_m Q_m, updated by innovations
        self.error_at_upload = np.zeros(n_workers)                       # e_hat_m
        self.skips = np.zeros(n_workers, dtype=np.int64)                 # consecutive skips (the clock)
        self.step_history = np.zeros(config.history_length)              # ring of ||theta^{j+1} - theta^j||^2
        self.theta_at_gradient = np.zeros((n_workers, n_params), dtype=dtype)   # LAG-PS: theta_hat_m
        if config.quantized:
            self._codes = np.empty((n_workers, n_params), dtype=laq.code_dtype(config.bits))
            self._quantized = np.empty((n_workers, n_params), dtype=dtype)
            self._radius, self._error, self._innovation = (np.empty(n_workers) for _ in range(3))
        self._rows = np.arange(n_workers)[:, None]
        self.history: list[dict] = []
        self.completed = 0

    # -- one iteration ------------------------------------------------------------------------------
    def step(self) -> dict:
        """Iteration k = ``completed``: gradients at theta^k, uploads, theta^{k+1}; returns its record."""
        config, shards, model = self.config, self.shards, self.model
        rule, alpha, n_workers = RULES[config.method], config.step_size, config.n_workers
        k = self.completed
        if k >= config.iterations:
            raise RuntimeError(f"the run is complete ({config.iterations} iterations)")
        started = time.perf_counter()
        theta, uploaded, skips = self.theta, self.uploaded, self.skips
        # All M gradients at theta^k in one batched call (theta (P,) broadcasts against x (M, n, F)).
        loss, gradients = model.loss_and_grad(theta, shards.x, shards.y, shards.weights)
        full_gradient = gradients.sum(axis=0)                     # grad f = sum_m grad f_m
        objective = float(loss.sum())                             # f = sum_m f_m
        grad_norm_sq = float(full_gradient @ full_gradient)
        if not (math.isfinite(objective) and math.isfinite(grad_norm_sq)):
            self._diverge(k, "the objective or a gradient", objective)
        if rule.gradient == "minibatch":
            # Each worker's gradient on its own minibatch, drawn without replacement.
            batch = _minibatch_indices(self.minibatch_rng, shards.sizes, config.minibatch_size)
            _, gradients = model.loss_and_grad(theta, shards.x[self._rows, batch], shards.y[self._rows, batch])
            if not np.all(np.isfinite(gradients)):
                self._diverge(k, "a minibatch gradient", objective)
        accuracy = self._evaluate(k, theta) if k % config.eval_every == 0 else None

        threshold = history_threshold(self.step_history, k, config.history_weight, alpha, n_workers)
        # What would be uploaded: Q = quantize(g_m | Q_m) with its error e_m and ||Q - Q_m||^2, or g_m.
        if rule.upload == "quantized":
            laq.laq_quantize(gradients, uploaded, config.bits, self._codes, self._quantized, self._radius,
                         self._error, self._innovation)
            candidates, error, innovation = self._quantized, self._error, self._innovation
        else:
            candidates, error, innovation = gradients, np.zeros(n_workers), None
        # Who uploads.
        if rule.skip == "never":
            upload = np.ones(n_workers, dtype=bool)
        elif rule.skip == "worker":
            if innovation is None:                               # ||g_m - Q_m||^2, exact
                difference = gradients - uploaded
                innovation = np.einsum("mp,mp->m", difference, difference)
            constants = (config.slaq_error_scale, config.slaq_threshold_offset) if rule.slaq_terms else ()
            upload = laq_upload_decision(innovation, threshold, error, self.error_at_upload, skips,
                                         config.max_skips, *constants)
        else:  # "server" (LAG-PS): the server decides from theta_hat_m alone; everyone is asked at k = 0
            offset = self.theta_at_gradient - theta
            distance_sq = np.einsum("mp,mp->m", offset, offset)
            upload = lag_ps_request_decision(self.smoothness, distance_sq, threshold, skips, config.max_skips)
            if k == 0:
                upload[:] = True
            self.theta_at_gradient[upload] = theta

        # The server adds only the uploaders' innovations to its running sum of the last uploads.
        if upload.any():
            chosen = slice(None) if upload.all() else upload
            self.aggregate += (candidates[chosen] - uploaded[chosen]).sum(axis=0)
            uploaded[chosen] = candidates[chosen]
        if rule.upload == "quantized":
            self.error_at_upload[upload] = self._error[upload]
        skips[upload] = 0
        skips[~upload] += 1
        aggregate_norm_sq = float(self.aggregate @ self.aggregate)

        with np.errstate(over="ignore", invalid="ignore"):       # checked just below
            new_theta = theta - alpha * self.aggregate            # theta^{k+1} = theta^k - alpha sum_m Q_m
            step = new_theta - theta
            step_sq = float(step @ step)
        if not math.isfinite(step_sq):
            self._diverge(k, "theta", objective)
        self.step_history[k % config.history_length] = step_sq
        self.theta = new_theta
        self.completed = k + 1

        uploads_so_far = (self.history[-1]["communications"] if self.history else 0) + int(upload.sum())
        entry = {"iteration": k, "objective": objective, "grad_norm_sq": grad_norm_sq,
                 "aggregate_norm_sq": aggregate_norm_sq,
                 "uploads": np.flatnonzero(upload).tolist(), "communications": uploads_so_far,
                 "bits": uploads_so_far * self.bits_per_upload}
        if self.clock is not None:      # LAG-PS: only the asked workers receive theta and compute
            seconds = self.clock.iteration(k, upload, upload if rule.skip == "server" else None)
            entry["simulated_seconds"] = self.clock.checked(
                (self.history[-1]["simulated_seconds"] if self.history else 0.0) + seconds, f"iteration {k}")
        if accuracy is not None:
            entry["test_accuracy"] = accuracy
        if k == 0:
            entry.update(self.budget_record)
        if self.completed == config.iterations:
            final = self._evaluate(self.completed, self.theta)
            if final is not None:
                entry["final_test_accuracy"] = final
        entry["time"] = time.perf_counter() - started
        self.history.append(entry)
        return entry

    def run(self, callback: Callable[[int, np.ndarray], None] | None = None,
            progress: bool = False) -> list[dict]:
        """Step to ``config.iterations``; ``callback(k + 1, theta^{k+1})`` after each step (a fresh copy).
        Returns the records (:attr:`history`)."""
        remaining = range(self.completed, self.config.iterations)
        for _ in tqdm(remaining, desc=self.config.method, disable=not progress):
            self.step()
            if callback is not None:
                callback(self.completed, self.theta.copy())
        return self.history

    # -- checkpoints ---------------------------------------------------------------------------------
    def solve_budget(self) -> None:
        """Nothing left to settle before the run folder: lazy.bits_per_upload is solved when the run is built."""

    def state_dict(self) -> tuple[dict[str, np.ndarray], dict]:
        arrays = {"theta": self.theta, "uploaded": self.uploaded, "aggregate": self.aggregate,
                  "error_at_upload": self.error_at_upload, "skips": self.skips,
                  "step_history": self.step_history, "theta_at_gradient": self.theta_at_gradient}
        if self.smoothness is not None:
            arrays["smoothness"] = self.smoothness
        meta = {"completed": self.completed, "history": self.history,
                "minibatch_rng": self.minibatch_rng.bit_generator.state}
        return arrays, meta

    def load_state_dict(self, arrays: dict[str, np.ndarray], meta: dict) -> None:
        """Restore a :meth:`state_dict` into a run built with the same config and data (or with more
        iterations: a run extended after its checkpoint)."""
        completed = int(meta["completed"])
        if arrays["theta"].shape != self.theta.shape or arrays["uploaded"].shape[0] != self.config.n_workers \
                or completed > self.config.iterations:
            raise ValueError("the checkpoint belongs to another config or dataset (its shapes differ)")
        for name in ("theta", "aggregate"):
            setattr(self, name, np.array(arrays[name], dtype=self.theta.dtype))
        for name in ("uploaded", "error_at_upload", "skips", "step_history", "theta_at_gradient"):
            getattr(self, name)[...] = arrays[name]
        if "smoothness" in arrays:
            self.smoothness = np.array(arrays["smoothness"])
        self.completed = completed
        self.history = list(meta["history"])
        self.minibatch_rng.bit_generator.state = meta["minibatch_rng"]

    # -- pieces --------------------------------------------------------------------------------------
    def _smoothness(self, model_name: str, rng: np.random.Generator) -> np.ndarray:
        smoothness = smoothness_of(self.model, self.shards, self.theta, rng)
        if not smoothness.bound:
            warnings.warn(
                f"lag-ps: model {model_name!r} has no smoothness bound, so L_m is an estimate of worker m's "
                f"curvature at theta^0 ({CURVATURE_STEPS} power-iteration steps on finite differences of its "
                f"gradient; L_m in [{smoothness.per_worker.min():.4g}, {smoothness.per_worker.max():.4g}]), "
                f"not a bound: LAG-PS's convergence guarantee does not hold", UserWarning, stacklevel=3)
        return smoothness.per_worker

    def _evaluate(self, k: int, point: np.ndarray) -> float | None:
        if not len(self.y_test):
            return None
        return float(self.model.evaluate(point, self.x_test, self.y_test)[1])

    def _diverge(self, k: int, what: str, objective: float) -> None:
        """Raise DivergenceError at iteration ``k``, naming the last finite objective: ``objective``, f(theta^k),
        if it is finite (theta^{k+1} or a gradient was not), else the last record's."""
        finite = (objective, k) if math.isfinite(objective) else (
            (self.history[-1]["objective"], self.history[-1]["iteration"]) if self.history else None)
        last = f"; last finite objective {finite[0]:.10g} at iteration {finite[1]}" if finite else ""
        raise DivergenceError(
            f"{self.config.method}: {what} is not finite at iteration {k} (step_size alpha = "
            f"{self.config.step_size}); the run diverged - try a smaller step_size{last}",
            self.history)


def starting_point(config: LazyConfig, model_config: ModelConfig, n_features: int, n_classes: int):
    """The run's model (from the registry, with the config's L2 term, shaped by the data) and theta^0
    (``model_config.init_kind``, drawn from the run's "init" stream): ``(model, theta)``."""
    model = model_config.build(n_features, n_classes, config.l2, rows=config.n_workers,
                               whose=f"worker (lazy.n_workers = {config.n_workers})", dtype=config.dtype)
    theta = model.init(RunStreams(config.seed).generator("init"), model_config.init_kind, np.dtype(config.dtype))
    return model, theta


def _minibatch_indices(rng: np.random.Generator, sizes: np.ndarray, batch: int) -> np.ndarray:
    """``batch`` distinct indices per worker, uniform within its shard, shape (M, batch).

    One uniform key per (worker, sample); padded rows get keys above 1 and are never among the
    ``batch`` smallest.
    """
    n_workers, n_max = len(sizes), int(sizes.max())
    keys = rng.random((n_workers, n_max))
    keys[np.arange(n_max)[None, :] >= sizes[:, None]] = 2.0
    return np.argpartition(keys, batch - 1, axis=1)[:, :batch]
