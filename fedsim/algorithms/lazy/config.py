"""The lazy family's settings: the table of rules (:data:`RULES`), :class:`LazyConfig` and the bits of one
upload (the equations: :mod:`fedsim.algorithms.lazy`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import NamedTuple

from fedsim.compress.bits import dense_bits, quantized_bits
from fedsim.constraints import Integer, OneOf, Optional, Real, check_fields, setting
from fedsim.kernels import LAQ_MAX_BITS as MAX_BITS, LAQ_MIN_BITS as MIN_BITS


class LazyRule(NamedTuple):
    """What a lazy method uploads and when a worker skips: one row of :data:`RULES`."""

    upload: str      # "gradient": g_m itself (32 P bits); "quantized": Q = quantize(g_m | Q_m) (b P + 32)
    gradient: str    # "full": the shard's gradient; "minibatch": a minibatch gradient (SLAQ)
    skip: str        # "never"; "worker": ||new - Q_m||^2 < H^k + error terms; "server": L_m^2 ||.||^2 <= H^k
    slaq_terms: bool = False   # the worker rule with SLAQ's constants (ec * 3 (e + e_hat) + offset)


#: The lazy methods as a table: every difference between them is in these columns.
RULES = {
    "gd": LazyRule("gradient", "full", "never"),
    "qgd": LazyRule("quantized", "full", "never"),
    "lag-wk": LazyRule("gradient", "full", "worker"),
    "lag-ps": LazyRule("gradient", "full", "server"),
    "laq": LazyRule("quantized", "full", "worker"),
    "slaq": LazyRule("quantized", "minibatch", "worker", slaq_terms=True),
}
METHODS = tuple(RULES)
DTYPES = ("float64", "float32")
LAQ_ERROR_FACTOR = 3.0       # the 3 in 3 (e + e_hat) of the LAQ rule (arXiv 1909.07588)

POSITIVE = Real(0, low_open=True)
NONNEGATIVE = Real(low=0)
AT_LEAST_ONE = Integer(low=1)


@dataclass(frozen=True)
class LazyConfig:
    """Settings of one lazy-aggregation run; validated on construction.

    Defaults are the LAQ reference's MNIST experiment; :meth:`reference` gives each method's reference
    settings (SLAQ: alpha 0.008, b 3).
    """

    method: str = setting("laq", "a row of RULES", OneOf(*METHODS))
    n_workers: int = setting(10, "number of workers (<= number of training samples)", AT_LEAST_ONE, symbol="M")
    step_size: float = setting(0.02, "the server's step: theta <- theta - alpha sum_m Q_m", POSITIVE,
                               symbol="alpha")
    bits: int = setting(4, "bits per quantized entry (qgd, laq, slaq)", Integer(MIN_BITS, MAX_BITS), symbol="b")
    history_length: int = setting(10, "how many past squared steps the upload threshold uses", AT_LEAST_ONE,
                                  symbol="D")
    history_weight: float = setting(0.8, "total weight of those D steps: xi_d = xi / min(k, D)", NONNEGATIVE,
                                    symbol="xi")
    max_skips: int = setting(100, "a worker that skipped C times in a row must upload", AT_LEAST_ONE, symbol="C")
    l2: float = setting(0.01, "L2 coefficient of each f_m: (l2 / 2) ||theta||^2", NONNEGATIVE)
    iterations: int = setting(4000, "number of server steps", AT_LEAST_ONE, symbol="K")
    minibatch_size: int = setting(500, "SLAQ: samples per worker per iteration (without replacement)",
                                  AT_LEAST_ONE)
    slaq_error_scale: float = setting(0.5, "the SLAQ factor on the error term 3 (e + e_hat)", NONNEGATIVE,
                                      symbol="ec")
    slaq_threshold_offset: float = setting(0.2, "SLAQ: constant added to the upload threshold", NONNEGATIVE)
    seed: int = setting(0, "seeds the glorot init (model.init) and SLAQ's minibatches", Integer(low=0))
    dtype: str = setting("float64", "float64 | float32: data, parameters and gradients", OneOf(*DTYPES))
    eval_every: int = setting(100, "test accuracy every this many iterations (and at the end)", AT_LEAST_ONE)
    bits_per_upload: float | None = setting(None, "bits of one quantized upload (qgd, laq, slaq): b is the largest "
                                            "that fits, b P + 32 <= this", Optional(Real(0, low_open=True), "b as set"))

    def __post_init__(self):
        check_fields(self)
        if self.bits_per_upload is not None and not self.quantized:
            raise ValueError(f"bits_per_upload sets b of the quantized methods (qgd, laq, slaq); method "
                             f"{self.method!r} uploads 32-bit gradients")

    def for_parameters(self, n_params: int) -> "LazyConfig":
        """This config with b solved for ``bits_per_upload`` on P = ``n_params``: the largest integer b with
        b P + 32 <= bits_per_upload (quantized_bits); itself when unset. A ValueError naming the setting and
        the reachable range when no b in [MIN_BITS, MAX_BITS] fits or even MAX_BITS leaves 5% unused."""
        if self.bits_per_upload is None:
            return self
        bits = min(MAX_BITS, int((self.bits_per_upload - quantized_bits(n_params, 0)) // n_params))
        reachable = (f"{quantized_bits(n_params, MIN_BITS)} to {quantized_bits(n_params, MAX_BITS)} bits (b = "
                     f"{MIN_BITS} to {MAX_BITS})")
        if bits < MIN_BITS or (bits == MAX_BITS and quantized_bits(n_params, bits) < 0.95 * self.bits_per_upload):
            raise ValueError(f"lazy.bits_per_upload = {self.bits_per_upload:g} is out of reach of "
                             f"{n_params} parameters: one upload sends {reachable}")
        return dataclasses.replace(self, bits=bits, bits_per_upload=None)

    @classmethod
    def reference(cls, method: str, **overrides) -> "LazyConfig":
        """The reference code's settings for ``method``, then ``overrides``."""
        settings = dict(step_size=0.008, bits=3) if method == "slaq" else {}
        settings.update(overrides)
        return cls(method=method, **settings)

    @property
    def quantized(self) -> bool:
        """Whether uploads are LAQ-quantized innovations (qgd, laq, slaq)."""
        return RULES[self.method].upload == "quantized"


def bits_per_upload(method: str, n_params: int, bits: int) -> int:
    """Bits of one upload: ``32 P`` (gd, lag-wk, lag-ps) or ``b P + 32`` (qgd, laq, slaq: codes + R)."""
    if RULES[OneOf(*METHODS).check("method", method)].upload == "quantized":
        return quantized_bits(n_params, bits)
    return dense_bits(n_params)
