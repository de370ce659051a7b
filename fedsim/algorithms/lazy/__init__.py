"""Lazy aggregation: GD, QGD, LAG-WK, LAG-PS, LAQ and SLAQ on any registered model (softmax regression by
default).

LAG: Chen, Giannakis, Sun, Yin, "LAG: Lazily Aggregated Gradient for Communication-Efficient Distributed
Learning", NeurIPS 2018, arXiv 1805.09965. LAQ/SLAQ: Sun, Chen, Giannakis, Yang, "Communication-Efficient
Distributed Learning via Lazily Aggregated Quantized Gradients", NeurIPS 2019, arXiv 1909.07588.

Setting
-------
M workers; worker m holds ``f_m(theta)`` = the model's mean cross-entropy on its shard + ``(l2 / 2) ||theta||^2``, and
the objective is ``f = sum_m f_m``. The server keeps each worker's last upload ``Q_m`` and their running sum;
an upload adds only its innovation ``Q_m^new - Q_m`` to that sum. Iteration k (``theta^0`` is the
initialization)::

    every worker computes g_m = grad f_m(theta^k)               (one batched call for all M workers)
    some workers upload (rule below); their Q_m is replaced
    theta^{k+1} = theta^k - alpha * sum_m Q_m

Upload rules (``||.||`` Euclidean; ``Delta_d = ||theta^{k+1-d} - theta^{k-d}||^2``, the last D squared
steps, kept as a ring of D scalars)::

    history threshold  H^k = (1 / (alpha^2 M^2)) * sum_{d=1..min(k,D)} xi_d Delta_d,
                       xi_d = xi / min(k, D)     (xi / D once k >= D; before that the reference divides by
                                                  the number of differences that exist; H^0 = 0)
    GD      upload g_m, always                                               32 P bits per upload
    QGD     upload Q_m = quantize(g_m | Q_m), always                         b P + 32 bits per upload
    LAG-WK  upload g_m  if ||g_m - Q_m||^2 >= H^k                            32 P bits per upload
    LAQ     upload Q    if ||Q - Q_m||^2 >= H^k + 3 (e_m + e_hat_m)          b P + 32 bits per upload
    SLAQ    as LAQ on a minibatch gradient, with threshold
                           H^k + ec * 3 (e_m + e_hat_m) + offset  (reference: ec = 0.5, offset = 0.2)
    LAG-PS  the server asks worker m (which then uploads g_m) if
                           L_m^2 ||theta_hat_m - theta^k||^2 > H^k
            theta_hat_m: the point of worker m's last gradient; L_m: the model's smoothness bound
            (:func:`smoothness_bounds`: softmax regression's), or for a model without one (the MLP) an
            estimate of f_m's curvature at theta^0, with a warning (:func:`smoothness_of`); every worker
            is asked at k = 0. Only the asked workers receive theta^k and compute (the simulated clock,
            :mod:`fedsim.system`, times only them; the run computes every g_m, for the records).

``Q = quantize(g | Q_m)`` is the LAQ quantizer of :mod:`fedsim.kernels.laq` (b bits relative to the last
upload), ``e_m = ||Q - g_m||^2`` its error now and ``e_hat_m`` its error at worker m's last upload. On a
skip the new Q is discarded. Every lazy rule (LAG-WK, LAG-PS, LAQ, SLAQ) also forces an upload after C
consecutive skips (the staleness clock; it resets on every upload).

Records and f*
--------------
One JSON record per iteration k = 0..K-1 (its keys: :mod:`fedsim.runs`; ``grad_norm_sq`` is the full
gradient's, whatever the method uploads). :mod:`~fedsim.algorithms.lazy.report` turns records into arrays and
measures the cost of reaching a residual ``f - f*``. A NaN or inf in the objective, a gradient or theta stops
the run with :class:`DivergenceError`, which carries the records of the iterations completed before it.
"""

from fedsim.algorithms.family import Family, register_family
from fedsim.algorithms.lazy.config import (DTYPES, LAQ_ERROR_FACTOR, MAX_BITS, METHODS, MIN_BITS,
                                           RULES, LazyConfig, LazyRule, bits_per_upload)
from fedsim.algorithms.lazy.report import (REPORT, configured_f_star, f_star_of, records_reach,
                                           records_spent_before, records_to_arrays, smallest_objective)
from fedsim.algorithms.lazy.rules import (CURVATURE_STEPS, Shards, Smoothness, curvature_estimates,
                                          history_threshold, lag_ps_request_decision, laq_upload_decision,
                                          smoothness_bounds, smoothness_of, stack_shards)
from fedsim.algorithms.lazy.run import LazyRun, starting_point
from fedsim.errors import DivergenceError


def _make_run(config, dataset, clients) -> LazyRun:
    # f* (run.f_star) is read by the report, not the run.
    return LazyRun(config.lazy, dataset, clients, model_config=config.model, system=config.system)


FAMILY = register_family(Family(
    name="lazy", config_class=LazyConfig, make_run=_make_run, pipeline="laq", unit="iteration",
    clients_setting="n_workers", steps_setting="iterations", method_names=lambda: list(RULES), report=REPORT,
    derived={"seed": "the top-level `seed`"}))

__all__ = ["CURVATURE_STEPS", "DTYPES", "DivergenceError", "FAMILY", "LAQ_ERROR_FACTOR", "LazyConfig", "LazyRule",
           "LazyRun", "MAX_BITS", "METHODS", "MIN_BITS", "RULES", "Shards", "Smoothness", "bits_per_upload",
           "configured_f_star", "curvature_estimates", "f_star_of", "history_threshold", "lag_ps_request_decision",
           "laq_upload_decision", "records_reach", "records_spent_before", "records_to_arrays",
           "smallest_objective", "smoothness_bounds", "smoothness_of", "stack_shards", "starting_point"]
