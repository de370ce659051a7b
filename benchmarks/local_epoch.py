"""Local epoch benchmark: FedAvg's usual setting, one local epoch of small batches a round (issue #27).

The job: Fashion-MNIST through the LAQ pipeline (60,000 x 784 features, /255) in float32, IID (each
client a random equal share), every client participating, ``fedavg`` (weighted mean of the updates, no
compression), plain SGD (lr 0.05), batch B, one local epoch a round (60,000 / (n B) steps), evaluation
every round on the first 5,000 training samples and the 10,000 test samples. 10 and 100 clients at
batch 20 (the targets); batch 10 and 50 at 10 clients (reported).

Four implementations of the same round, timed interleaved (medians):

* ``fedsim``: :class:`~fedsim.algorithms.federated.run.FederatedRun` as it runs: the model's reusable batch
  gradient (``SoftmaxRegression.batch_gradient``) and the round's kernels (``fedsim.kernels.local_sgd``);
* ``fedsim_general``: the same run calling the model's general ``loss_and_grad`` each step (a softmax
  model without ``batch_gradient``), as every round ran before issue #27 (its batch and update kernels
  aside): the old figures beside the new, in one run;
* ``torch_per_client``: the loop users write: each client its own ``torch.nn.Linear`` and
  ``torch.optim.SGD``, loaded with the server weights, ``cross_entropy``, ``backward``, ``step``, one
  client after another; the server averages the updates and evaluates its own ``nn.Linear``;
* ``torch_batched``: all clients in one call per step: ``baddbmm`` forward, the softmax gradient by hand,
  ``bmm`` backward, in place.

Validation first: from the same start, on fedsim's batches (replayed from its batch trace), both torch
rounds must give fedsim's server model (float32 tolerance) and its evaluation. The step's floor (one local
step of all clients, evaluation apart): ``max(bytes / bandwidth, flops / peak)`` with the bytes of the
clients' batch rows read once (bandwidth: a streaming sum over those very rows) and the flops of the two
products (forward ``x W`` and backward ``x^T delta``, 2 F C per sample each) at the peak of a large
float32 NumPy matmul, both measured in this run (:func:`benchmarks.round_parts.floor`). The step's time is a
training-only round (fedsim with evaluation off) divided by its steps.

Run on its own: ``python -m benchmarks.local_epoch --mode quick --json out.json``.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from benchmarks import common
from benchmarks.common import ValidationError, assert_close, log
from benchmarks.round_parts import floor, load_or_synthesize, peak_here, row_reader

# Per mode: repeats of each timed round, the peak-matmul size, the data (None: Fashion-MNIST; else random
# data of the given shape) and the (clients, batch) cases; the first two cases carry the targets.
SETTINGS = {
    "smoke": dict(repeats=2, peak_size=256, synthetic_shape=(2000, 64), n_test=400, eval_train=300,
                  cases=((10, 20), (20, 20), (10, 10))),
    "quick": dict(repeats=5, peak_size=2000, synthetic_shape=None, n_test=None, eval_train=5000,
                  cases=((10, 20), (100, 20), (10, 10), (10, 50))),
    "full": dict(repeats=9, peak_size=3000, synthetic_shape=None, n_test=None, eval_train=5000,
                 cases=((10, 20), (100, 20), (10, 10), (10, 50), (100, 10), (100, 50))),
}
LR = 0.05


def _general_model(model):
    """``model`` (softmax regression) without its optional ``batch_gradient``: the run then calls
    ``loss_and_grad`` each step."""
    general = dataclasses.make_dataclass("GeneralSoftmax", [], bases=(type(model),), frozen=True,
                                         namespace={"batch_gradient": None})
    return general(model.n_features, model.n_classes, model.l2)


def fedsim_run(dataset, n_clients: int, batch: int, eval_train: int, evaluate: bool, general: bool = False,
               trace: bool = False):
    """A FedAvg run of one local epoch a round on ``n_clients`` IID clients (all participating)."""
    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    shares = np.array_split(np.random.default_rng(0).permutation(len(dataset.y_train)), n_clients)
    steps = min(len(share) for share in shares) // batch
    config = FederatedConfig(method="fedavg", n_clients=n_clients, participation_rate=1.0, rounds=10 ** 6,
                             local_iterations=steps, batch_size=batch, lr=LR, eval_train_samples=eval_train,
                             eval_every=1 if evaluate else 10 ** 6)
    run = FederatedRun(config, dataset, shares, seed=0, trace_batches=trace)
    if general:
        run.model = _general_model(run.model)
    return run, steps


class TorchPerClient:
    """The per-client torch loop (module docstring); ``weights`` is the server model in fedsim's flat layout
    (W (F, C) row-major, then b), updated in place by :meth:`round`."""

    def __init__(self, torch, x_train, y_train, eval_sets, n_clients: int, sizes: np.ndarray):
        self.torch = torch
        self.x, self.y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.eval_sets = {name: (torch.from_numpy(x), torch.from_numpy(y)) for name, (x, y) in eval_sets.items()}
        self.F, self.C = x_train.shape[1], int(y_train.max()) + 1
        self.models = [torch.nn.Linear(self.F, self.C) for _ in range(n_clients)]
        self.optimizers = [torch.optim.SGD(model.parameters(), lr=LR) for model in self.models]
        self.server = torch.nn.Linear(self.F, self.C)
        self.weights = torch.zeros(self.F * self.C + self.C)
        self.share = torch.from_numpy((sizes / sizes.sum()).astype(np.float32))

    def _load(self, model) -> None:
        F, C = self.F, self.C
        with self.torch.no_grad():
            model.weight.copy_(self.weights[:F * C].view(F, C).t())
            model.bias.copy_(self.weights[F * C:])

    def round(self, batch_rows) -> dict:
        """One round: ``batch_rows`` (steps, K, B) int64 tensor, the rows of every client's steps."""
        torch = self.torch
        updates = torch.empty(len(self.models), self.weights.numel())
        for client, (model, optimizer) in enumerate(zip(self.models, self.optimizers)):
            self._load(model)
            for rows in batch_rows[:, client]:
                optimizer.zero_grad(set_to_none=True)
                loss = torch.nn.functional.cross_entropy(model(self.x.index_select(0, rows)),
                                                         self.y.index_select(0, rows))
                loss.backward()
                optimizer.step()
            with torch.no_grad():
                updates[client] = torch.cat([model.weight.t().reshape(-1), model.bias]) - self.weights
        self.weights += self.share @ updates                       # W <- W + sum_k n_k / n dW_k
        self._load(self.server)
        with torch.no_grad():
            return {name: _evaluation(torch, self.server(x), y) for name, (x, y) in self.eval_sets.items()}


class TorchBatched:
    """All clients in one call per step (module docstring): W (K, F, C), b (K, C) tensors."""

    def __init__(self, torch, x_train, y_train, eval_sets, n_clients: int, sizes: np.ndarray):
        self.torch = torch
        self.x, self.y = torch.from_numpy(x_train), torch.from_numpy(y_train)
        self.eval_sets = {name: (torch.from_numpy(x), torch.from_numpy(y)) for name, (x, y) in eval_sets.items()}
        self.F, self.C, self.K = x_train.shape[1], int(y_train.max()) + 1, n_clients
        self.weights = torch.zeros(self.F * self.C + self.C)
        self.share = torch.from_numpy((sizes / sizes.sum()).astype(np.float32))

    def round(self, batch_rows) -> dict:
        torch, F, C, K = self.torch, self.F, self.C, self.K
        W = self.weights[:F * C].view(F, C).expand(K, F, C).clone()
        b = self.weights[F * C:].expand(K, C).clone()
        B = batch_rows.shape[-1]
        for rows in batch_rows:                                   # (K, B)
            x = self.x[rows]                                      # (K, B, F)
            delta = torch.softmax(torch.baddbmm(b[:, None, :], x, W), dim=-1)
            delta.scatter_add_(-1, self.y[rows][..., None], torch.full((K, B, 1), -1.0))
            delta /= B                                            # (p - Y) / B
            W.baddbmm_(x.transpose(1, 2), delta, alpha=-LR)       # W -= lr x^T delta
            b.sub_(delta.sum(dim=1), alpha=LR)
        updates = torch.cat([W.reshape(K, -1), b], dim=1) - self.weights
        self.weights += self.share @ updates
        logits_W, logits_b = self.weights[:F * C].view(F, C), self.weights[F * C:]
        return {name: _evaluation(torch, torch.addmm(logits_b, x, logits_W), y)
                for name, (x, y) in self.eval_sets.items()}


def _evaluation(torch, logits, y) -> dict:
    return {"loss": float(torch.nn.functional.cross_entropy(logits, y)),
            "accuracy": float((logits.argmax(dim=-1) == y).float().mean())}


def _batch_rows(run) -> np.ndarray:
    """The (steps, K, B) rows of the round fedsim just ran, from its batch trace (full batches only)."""
    if any(np.any(count < samples.shape[1]) for _, _, samples, count in run.batch_trace):
        raise ValidationError("a ragged batch in a replayed round; the torch rounds assume full batches")
    rows = np.stack([samples for _, _, samples, _ in run.batch_trace])
    run.batch_trace.clear()
    return rows


def case_benchmark(torch, dataset, n_clients: int, batch: int, settings: dict, peak: dict) -> dict:
    """Validate, then time one (clients, batch) case: rounds with evaluation, and the training-only step."""
    eval_train = settings["eval_train"]
    run, steps = fedsim_run(dataset, n_clients, batch, eval_train, evaluate=True, trace=True)
    sizes = run.clients.sizes.astype(np.float64)
    eval_sets = {name: (np.ascontiguousarray(x), y) for name, (x, y) in run.eval_sets.items()}
    x_train, y_train = np.ascontiguousarray(run.x_train), run.y_train
    references = {"torch_per_client": TorchPerClient(torch, x_train, y_train, eval_sets, n_clients, sizes),
                  "torch_batched": TorchBatched(torch, x_train, y_train, eval_sets, n_clients, sizes)}
    # Validation: the first round from the zero start, on fedsim's batches.
    record = run.step()
    rows = torch.from_numpy(_batch_rows(run))
    validation = {}
    scale = float(np.abs(run.server.weights).max())
    for name, reference in references.items():
        evaluation = reference.round(rows)
        assert_close(f"local epoch {n_clients} x {batch}: server weights ({name} vs fedsim)",
                     reference.weights.numpy(), run.server.weights, rtol=1e-4, atol=1e-4 * scale)
        for split in ("train", "test"):
            assert_close(f"local epoch {n_clients} x {batch}: {split} loss ({name} vs fedsim)",
                         evaluation[split]["loss"], record[f"{split}_loss"], rtol=1e-4)
            assert_close(f"local epoch {n_clients} x {batch}: {split} accuracy ({name} vs fedsim)",
                         evaluation[split]["accuracy"], record[f"{split}_accuracy"], rtol=0, atol=2e-4)
        validation[name] = {"server_weights_max_abs_difference":
                            float(np.abs(reference.weights.numpy() - run.server.weights).max()),
                            "server_weights_max_abs": scale}
    run.batch_trace = None
    general, _ = fedsim_run(dataset, n_clients, batch, eval_train, evaluate=True, general=True)
    general.step()
    common.assert_equal(f"local epoch {n_clients} x {batch}: server weights (fedsim general path vs fedsim)",
                        general.server.weights, run.server.weights)
    log(f"local epoch {n_clients} clients, batch {batch}: validated; timing")
    training, _ = fedsim_run(dataset, n_clients, batch, eval_train, evaluate=False)
    training_general, _ = fedsim_run(dataset, n_clients, batch, eval_train, evaluate=False, general=True)
    rounds = common.time_interleaved({"fedsim": run.step, "fedsim_general": general.step,
                                      **{name: (lambda r=reference: r.round(rows))
                                         for name, reference in references.items()}},
                                     settings["repeats"])
    trained = common.time_interleaved({"fedsim": training.step, "fedsim_general": training_general.step},
                                      settings["repeats"])
    step_seconds = {name: timing.median / steps for name, timing in trained.items()}
    # The bandwidth: a streaming read of all the rows a round gathers (the whole training set, in the
    # round's order: from memory, as the round reads them); a step's bytes are its share of them.
    read, round_bytes = row_reader(run.x_train, rows.numpy())
    read_timing = common.time_interleaved({"read": read}, settings["repeats"])["read"]
    read_bytes, read_seconds = round_bytes // steps, read_timing.median / steps
    F, C = run.model.n_features, run.model.n_classes
    flops = 2 * (2 * n_clients * batch * F * C)                 # forward x W and backward x^T delta
    step_floor = floor(read_bytes, read_seconds, flops, peak, step_seconds)
    medians = {name: timing.median for name, timing in rounds.items()}
    return {"clients": n_clients, "batch": batch, "steps": steps, "validation": validation,
            "rounds": {name: timing.to_dict() for name, timing in rounds.items()},
            "training_rounds": {name: timing.to_dict() for name, timing in trained.items()},
            "step_floor": step_floor,
            "summary": {"round_seconds": medians, "step_seconds": step_seconds,
                        "speedup_vs_torch_per_client": medians["torch_per_client"] / medians["fedsim"],
                        "speedup_vs_torch_batched": medians["torch_batched"] / medians["fedsim"],
                        "speedup_vs_fedsim_general": medians["fedsim_general"] / medians["fedsim"],
                        "step_over_floor": step_floor["multiple"]["fedsim"],
                        "general_step_over_floor": step_floor["multiple"]["fedsim_general"]}}


def run(mode: str, threads: int, data_dir=None) -> dict:
    mode = common.check_mode(mode)
    threads_report = common.apply_threads(common.check_threads(threads))
    machine = common.machine_info(threads_report)          # its date: the suite's start, as the others'
    import torch
    settings = SETTINGS[mode]
    data = load_or_synthesize("laq", data_dir, settings["synthetic_shape"], settings["n_test"])
    dataset = dataclasses.replace(data.dataset, x_train=np.asarray(data.dataset.x_train, np.float32),
                                  x_test=np.asarray(data.dataset.x_test, np.float32))
    peak = peak_here(settings["peak_size"], np.float32)
    cases = [case_benchmark(torch, dataset, n_clients, batch, settings, peak)
             for n_clients, batch in settings["cases"]]
    return {"machine": machine, "mode": mode, "data": data.source + ", float32",
            "peak": peak, "cases": cases}


def table(results: dict) -> list[str]:
    """The results as markdown: per case, the rounds (medians, ms) and ratios, the step against its floor."""
    lines = [f"Data: {results['data']}; peak {results['peak']['gflops']:.1f} GFLOP/s (float32, "
             f"{results['peak']['size']}x{results['peak']['size']} NumPy matmul). Rounds with evaluation, medians.", "",
             "| clients x batch (steps) | fedsim ms | fedsim general path ms | batched torch ms | per-client torch ms "
             "| general / fedsim | batched torch / fedsim | per-client torch / fedsim | fedsim step us "
             "| general step us | step floor us (binds) | fedsim step / floor |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for case in results["cases"]:
        summary, step_floor = case["summary"], case["step_floor"]
        seconds, step = summary["round_seconds"], summary["step_seconds"]
        lines.append(
            f"| {case['clients']} x {case['batch']} ({case['steps']}) | {seconds['fedsim'] * 1e3:.1f} "
            f"| {seconds['fedsim_general'] * 1e3:.1f} | {seconds['torch_batched'] * 1e3:.1f} "
            f"| {seconds['torch_per_client'] * 1e3:.1f} | {summary['speedup_vs_fedsim_general']:.2f} "
            f"| {summary['speedup_vs_torch_batched']:.2f} | {summary['speedup_vs_torch_per_client']:.2f} "
            f"| {step['fedsim'] * 1e6:.0f} | {step['fedsim_general'] * 1e6:.0f} "
            f"| {step_floor['floor_seconds'] * 1e6:.0f} ({step_floor['binds']}) | {summary['step_over_floor']:.2f} |")
    return lines


def main(argv=None) -> None:
    args = common.suite_arguments(__doc__.splitlines()[0], argv)
    results = run(args.mode, args.threads, args.data_dir)
    common.write_json(args.json, results)
    print("\n".join(table(results)))


if __name__ == "__main__":
    main()
