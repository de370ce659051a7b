"""Compressed federated learning: FedAvg, signSGD, top-k and Sparse Ternary Compression.

Sattler, Wiedemann, Mueller, Samek, "Robust and Communication-Efficient Federated Learning from Non-IID
Data", arXiv 1903.02891 (STC); McMahan et al., arXiv 1602.05629 (FedAvg); Bernstein et al.,
arXiv 1802.04434 (signSGD with majority vote); Lin et al., arXiv 1712.01887 (top-k with residuals).

One round t (all participants at once, as arrays of shape (participants, parameters))::

    S_t ~ uniform subset of max(1, floor(n * participation_rate)) clients       sampling
    w_k = W  for k in S_t (after catching up on missed downstream messages)      synchronize
    w_k <- w_k - lr_k * SGD-momentum(grad f_k(w_k; batch))  (local_iterations)   local training
    dW_k = w_k - W                                                                update
    A_k <- A_k + dW_k;  m_k = C_up(A_k);  A_k <- A_k - m_k                        upstream, error feedback
    m = mean_k m_k | sum_k n_k m_k / sum_k n_k | lr * sign(sum_k sign(m_k))       aggregation
    A <- A + m;  m_down = C_down(A);  A <- A - m_down                             downstream, error feedback
    W <- W + m_down                                                               server update

What a client keeps across rounds: :mod:`~fedsim.algorithms.federated.clients` (not its model: after
synchronization it equals the server model).

Caching (STC paper, section "Communication-efficient ... partial participation"): the server keeps the
downstream messages of recent rounds; a client that last synchronized at round t0 receives
sum_{s = t0+1}^{t-1} m_down_s as a sparse vector (positions + 32-bit values) or the full model (32 P bits)
when that is cheaper (64-bit floats in a float64 run). The cache is bounded: older messages leave once the
union of the newer ones' positions would cost as much as the full model, and a client that missed a message
no longer held receives the full model. Those bits count as downstream traffic, beside the round's
broadcast to its participants. (The modules: ARCHITECTURE.md.)
"""

from fedsim.algorithms.family import Family, register_family
from fedsim.algorithms.federated.config import (AGGREGATIONS, LR_SCHEDULES, NAMED_METHODS, FederatedConfig,
                                                Method, methods)
from fedsim.algorithms.federated.report import REPORT, reach, summarize, total_bits
from fedsim.algorithms.federated.clients import ClientRows, ClientStates
from fedsim.algorithms.federated.run import BatchTrace, FederatedRun, ServerState


def _make_run(config, dataset, clients) -> FederatedRun:
    return FederatedRun(config.federated, dataset, clients, seed=config.seed, model_config=config.model,
                        system=config.system)


FAMILY = register_family(Family(
    name="federated", config_class=FederatedConfig, make_run=_make_run, pipeline="stc", unit="round",
    clients_setting="n_clients", steps_setting="rounds", method_names=lambda: sorted(methods()), report=REPORT,
    derived={"compressors": "the compressor tables ([stc], [sign], ...)", "sampled_per_round": "system.over_select"},
    unset_meanings={name: ("the method's", lambda config, name=name: getattr(config.federated.resolved_method,
                                                                             name))
                    for name in ("accumulate_up", "accumulate_down", "aggregation")}))

__all__ = ["AGGREGATIONS", "BatchTrace", "ClientRows", "ClientStates", "FAMILY", "FederatedConfig", "FederatedRun",
           "LR_SCHEDULES", "Method", "NAMED_METHODS", "ServerState", "methods", "reach",
           "summarize", "total_bits"]
