"""The federated family's settings: the methods (:data:`NAMED_METHODS` and one or two per compressor) and
:class:`FederatedConfig`, the config file's ``[federated]`` table (the round:
:mod:`fedsim.algorithms.federated`)."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass

from fedsim.compress import COMPRESSORS, aggregation
from fedsim.compress.base import FRACTION, SCOPES
from fedsim.constraints import Flag, Integer, OneOf, Optional, Real, Registered, check_fields, setting


@dataclass(frozen=True)
class Method:
    """What a named method sends up and down, and how the server aggregates."""

    up: str                # compressor of client updates (a name in fedsim.compress.COMPRESSORS)
    down: str              # compressor of the server's aggregate
    aggregation: str       # mean | weighted | majority (fedsim.compress.aggregation)
    accumulate_up: bool    # client-side error feedback (residuals) by default
    accumulate_down: bool  # server-side error feedback by default


#: Methods with names of their own; every other method is built from a compressor (:func:`methods`).
NAMED_METHODS = {
    "none": Method("identity", "identity", "mean", False, False),
    "fedavg": Method("identity", "identity", "weighted", False, False),
    "signsgd": Method("sign", "identity", "majority", False, False),
}
AGGREGATIONS = tuple(aggregation.AGGREGATIONS)
LR_SCHEDULES = ("constant", "exponential", "step")


def methods() -> dict[str, Method]:
    """Every federated method: the named ones, and for each registered compressor C (as its class says,
    ``Compressor.directions``) ``C_up`` (C upstream, nothing downstream) and ``C_updown`` (C both ways),
    with C's default aggregation and error feedback: ``stc_updown`` is STC up and down with residuals."""
    table = dict(NAMED_METHODS)
    for name, cls in COMPRESSORS.items():
        if "up" in cls.directions:
            table[f"{name}_up"] = Method(name, "identity", cls.aggregations[0], cls.error_feedback, False)
        if "updown" in cls.directions:
            table[f"{name}_updown"] = Method(name, name, cls.aggregations[0], cls.error_feedback,
                                             cls.error_feedback)
    return table


AT_LEAST_ONE = Integer(low=1)
METHODS_DEFAULT = "the method's"     # what an unset error feedback or aggregation takes


@dataclass(frozen=True)
class FederatedConfig:
    """Settings of one compressed federated learning run (defaults: the STC seed experiment)."""

    method: str = setting("stc_updown", "a named method or <compressor>_up / <compressor>_updown",
                          Registered(lambda: sorted(methods())))
    rounds: int = setting(20, "communication rounds", AT_LEAST_ONE)
    n_clients: int = setting(50, "clients holding data", AT_LEAST_ONE)
    participation_rate: float = setting(1.0, "fraction of clients sampled per round", FRACTION)
    local_iterations: int = setting(1, "SGD steps per client per round", AT_LEAST_ONE)
    batch_size: int = setting(100, "samples per local SGD step", AT_LEAST_ONE)
    lr: float = setting(0.04, "client learning rate (and the server step of majority vote)",
                        Real(0, low_open=True))
    momentum: float = setting(0.0, "SGD momentum of each client's own optimizer", Real(0, 1, high_open=True))
    l2: float = setting(0.0, "L2 coefficient: (l2 / 2) ||w||^2 in each client's loss, g + l2 w", Real(low=0))
    lr_schedule: str = setting("constant", "constant | exponential (lr * decay^epoch) | step",
                               OneOf(*LR_SCHEDULES))
    lr_decay: float = setting(1.0, "the factor of the exponential and step schedules", FRACTION)
    lr_step_epochs: int = setting(1, "step schedule: lr * decay^(epoch // lr_step_epochs)", AT_LEAST_ONE)
    p_up: float = setting(0.001, "sparsity of upstream top-k / STC / random-k", FRACTION)
    p_down: float = setting(0.002, "sparsity of downstream top-k / STC / random-k", FRACTION)
    accumulate_up: bool | None = setting(None, "client error feedback; None: the method's default",
                                         Optional(Flag(), METHODS_DEFAULT))
    accumulate_down: bool | None = setting(None, "server error feedback; None: the method's default",
                                           Optional(Flag(), METHODS_DEFAULT))
    aggregation: str | None = setting(None, "mean | weighted | majority; None: the method's default",
                                      Optional(OneOf(*AGGREGATIONS), METHODS_DEFAULT))
    compression_scope: str = setting("tensor", "tensor (per parameter tensor, as the reference) | global",
                                     OneOf(*SCOPES))
    eval_train_samples: int = setting(5000, "evaluate on the first this-many training samples, at most all (the "
                                            "default 5000: all if fewer)", AT_LEAST_ONE)
    eval_every: int = setting(1, "evaluate every this-many rounds (and at the last)", AT_LEAST_ONE)
    dtype: str = setting("float32", "float32 | float64", OneOf("float32", "float64"))
    bits_per_round: float | None = setting(
        None, "mean upload bits per participant per round: the up compressor's knob (p, levels, rank) is "
              "solved on the first round's updates to meet it", Optional(Real(0, low_open=True), "the knobs as set"))
    compressors: dict = setting(dataclasses.MISSING, "the compressor tables ([stc], [sign], ...)",
                                default_factory=dict)
    sampled_per_round: int | None = setting(None, "clients sampled per round (system.over_select)",
                                            Optional(AT_LEAST_ONE, "the participants needed"))

    def __post_init__(self):
        check_fields(self)
        for name, compressor in self.compressors.items():
            if not (name in COMPRESSORS and isinstance(compressor, COMPRESSORS[name])):
                raise ValueError(f"compressors must be a mapping of compressor names to compressors of that "
                                 f"name, got {{{name!r}: {compressor!r}}}")
        # Canonical form: every registered compressor, with its defaults where none was given.
        object.__setattr__(self, "compressors", {name: self.compressors.get(name) or cls()
                                                 for name, cls in COMPRESSORS.items()})
        resolved = methods()[self.method]
        allowed = COMPRESSORS[resolved.up].aggregations
        if self.aggregation is not None and self.aggregation not in allowed:
            raise ValueError(f"aggregation {self.aggregation!r} does not fit the {resolved.up} updates of "
                             f"method {self.method!r} (allowed: {', '.join(allowed)}; 'majority' needs sign "
                             f"updates, method 'signsgd')")
        for direction in ("up", "down"):
            try:
                compressor = self.compressor(direction)        # builds (and so validates) both compressors
            except (TypeError, ValueError) as error:          # p and scope: named as the settings that give them
                named = {"p": f"p_{direction}", "scope": "compression_scope"}
                raise type(error)(re.sub(r"^(p|scope)\b", lambda found: named[found[1]], str(error))
                                  + f" (the {getattr(self.resolved_method, direction)} compressor, {direction})")
            if (compressor.name == "sign" and compressor.scale == "none"
                    and getattr(self.resolved_method, f"accumulate_{direction}")):
                raise ValueError(f'accumulate_{direction} = true needs sign.scale = "mean": an unscaled sign '
                                 f"message (+-1) is not in the update's units, so its residual A - sign(A) would "
                                 f"grow with every round")
        knob = COMPRESSORS[resolved.up].budget_knob
        if self.bits_per_round is not None and knob is None:
            with_knobs = sorted(name for name, cls in COMPRESSORS.items() if cls.budget_knob)
            raise ValueError(f"bits_per_round needs a method whose up compressor has a knob ({', '.join(with_knobs)}"
                             f"); method {self.method!r} sends {resolved.up}, which has none")

    @property
    def resolved_method(self) -> Method:
        """The :class:`Method` named by ``method``, with this config's overrides (error feedback,
        aggregation) applied."""
        overrides = {name: getattr(self, name) for name in ("aggregation", "accumulate_up", "accumulate_down")}
        return dataclasses.replace(methods()[self.method],
                                   **{name: value for name, value in overrides.items() if value is not None})

    def compressor(self, direction: str):
        """The compressor of ``direction`` ("up" or "down"): the method's, with its settings from
        ``compressors``, its p from ``p_up`` / ``p_down`` and its scope from ``compression_scope``."""
        base = self.compressors[getattr(self.resolved_method, direction)]
        given = {"p": self.p_up if direction == "up" else self.p_down, "scope": self.compression_scope}
        names = {f.name for f in dataclasses.fields(base)}
        return dataclasses.replace(base, **{name: value for name, value in given.items() if name in names})

    @property
    def participants_needed(self) -> int:
        """Updates the server aggregates per round: max(1, floor(n_clients x participation_rate))."""
        return max(1, int(math.floor(self.n_clients * self.participation_rate)))

    @property
    def participants_per_round(self) -> int:
        """Clients sampled per round: the participants needed, or more when the server over-selects."""
        return self.sampled_per_round or self.participants_needed
