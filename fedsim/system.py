"""The system model: each client's links and device, and the simulated clock of a round (the ``[system]`` table).

Off by default (``profile = "off"``): a run without it computes exactly what it computed before. On, every
client k gets an uplink ``up_k`` and a downlink ``down_k`` (bits/s), a one-way latency ``lat_k`` (s) and a
compute speed ``speed_k`` (multiply-adds/s), drawn once per run from the stream ``"system"`` of the run's seed
(the same seed gives the same devices whatever else changes), and each record gets ``simulated_seconds``
(cumulative) and ``dropped``.

The clock of one federated round, from the exact sizes of the messages the encoders produced::

    transfer(bits)  = lat_k + bits / bandwidth_k                          one message on one link
    arrival_k       = transfer_down(catch-up_k)                           what k receives before it trains
                      + samples_k * multiply-adds per sample / speed_k    its local work
                      + transfer_up(encoded bits of its update)
    wait            = the time the server stops waiting: when it holds the updates it needs (the first
                      `needed` to arrive), or at system.deadline, or when every reachable participant
                      has reported, whichever comes first
    round           = wait + max_k transfer_down(broadcast)               the new model reaches the participants

PowerSGD (``powersgd_up``, ``powersgd_updown``) uploads in two messages, and its factor P_hat depends on every
participant's first one, so its ``arrival_k`` is ``max_j [transfer_down_j(catch-up_j) + work_j +
transfer_up_j(P_j)] + transfer_down_k(P_hat) + transfer_up_k(Q_k and the tensors sent as they are)``.

Multiply-adds per sample are those of the model's forward and backward products as fedsim computes them
(:func:`fedsim.models.base.multiply_adds_per_sample`: 2 F C for softmax regression, whose backward pass
computes no gradient of the input).

``samples_k`` is local_iterations x batch_size (an epoch's last, smaller batch is counted whole: fedsim
computes its padded rows too). A sampled client is reachable with probability ``availability`` (drawn per
round and client from the stream ``("system", round)``, so the same seed drops the same clients, also after
a resume); an unreachable one takes no part: it receives nothing, trains nothing, keeps its state and is
counted in ``dropped``. A reachable one whose update arrives after the deadline or after the first
`needed` is dropped too: the server aggregates only the updates it kept. Such a client keeps its whole
update: under error feedback its residual becomes A_k + dW_k (nothing of it was delivered, so all of it
waits for the client's next round); without error feedback the update is lost. Every reachable
participant, kept or dropped, receives the round's broadcast (it counts in bits_down, as before).
``over_select``: the server samples ceil(over_select x needed) clients (more than n_clients is refused),
keeps the first `needed` to arrive (as production cross-device systems do: Bonawitz et al., arXiv
1902.01046) and drops the others.

The lazy family, per iteration: every worker receives theta (32 P bits), computes its gradient (its
samples x multiply-adds per sample / speed) and, if it uploads, sends its upload; the iteration takes the
longest of these: ``max_m [transfer_down_m(32 P) + compute_m + upload_m transfer_up_m(bits)]``. Under LAG-PS
only the workers the server asks receive theta, compute and upload (the max is over them; none asked: 0 s).

A client keeps its device for the whole run unless ``round_spread`` > 0: then each round (iteration) its four
numbers are its own times exp(round_spread z), z standard normal from the stream ``("system-round", round,
client)`` (links and load vary from round to round). With round_spread 0, under a deadline and messages of
fixed size the same slow clients miss it every round, and under error feedback their residuals keep growing.
Each client draws the same standard normal factors whatever the profile, so runs on two profiles compare
client by client.

Profiles (medians; each client draws each number lognormally around its median with sigma ``spread``,
0.5 by default: measured speeds spread over an order of magnitude; the spread is an assumption)::

    profile   uplink      downlink    latency   source
    wifi      40 Mbit/s   90 Mbit/s   20 ms     Ookla Speedtest Global Index, fixed broadband global medians
                                                (2024: about 90 down / 40 up); latency an assumption (Ookla's
                                                idle latency to a nearby server is ~10 ms, plus the Wi-Fi hop)
    4g        8 Mbit/s    25 Mbit/s   50 ms     Opensignal, "The State of Mobile Network Experience" and
                                                "4G/LTE" reports (4G download 20-30, upload 5-10 Mbit/s,
                                                latency 40-60 ms across countries), rounded
    3g        1 Mbit/s    4 Mbit/s    120 ms    Opensignal, "The State of LTE" / "Global State of Mobile
                                                Networks" (2017-2018: 3G download 2-8 Mbit/s, latency above
                                                100 ms); the 1 Mbit/s upload is an assumption in that range
    mixed     per client: wifi with probability 0.3, 4g 0.5, 3g 0.2 (an assumption)

The compute speed of every profile is 1e9 multiply-adds/s, an assumption (a phone CPU core runs a few
GFLOP/s peak; training code reaches a fraction of it), not a measurement. ``custom`` takes the medians
from ``uplink``, ``downlink``, ``latency`` and ``speed``; ``trace`` reads every client's numbers from a CSV
file with the header ``client,up,down,latency,speed`` and one row per client 0..n-1.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from fedsim.constraints import OneOf, Optional, Real, Text, check_fields, setting
from fedsim.files import read_hashed
from fedsim.data.registry import DataSettingError
from fedsim.data.search import expand_home


class Profile(NamedTuple):
    """The median numbers of one kind of device."""

    uplink: float        # bits/s
    downlink: float      # bits/s
    latency: float       # seconds, one way, per message
    speed: float         # multiply-adds/s


#: The named profiles (sources: the module docstring).
PROFILES = {
    "wifi": Profile(uplink=40e6, downlink=90e6, latency=0.020, speed=1e9),
    "4g": Profile(uplink=8e6, downlink=25e6, latency=0.050, speed=1e9),
    "3g": Profile(uplink=1e6, downlink=4e6, latency=0.120, speed=1e9),
}
#: The "mixed" population: each client's profile drawn with these probabilities (an assumption).
MIXED = {"wifi": 0.3, "4g": 0.5, "3g": 0.2}
PROFILE_CHOICES = ("off", *PROFILES, "mixed", "custom", "trace")
CUSTOM_MEDIANS = ("uplink", "downlink", "latency", "speed")     # the settings that only "custom" reads
TRACE_COLUMNS = ("client", "up", "down", "latency", "speed")
POSITIVE = Real(0, low_open=True)
#: A lognormal sigma: NumPy's normal draws stay within |z| < 14, so exp(sigma z) stays far inside the floats.
SIGMA = Real(0, 10)


@dataclass(frozen=True)
class SystemConfig:
    """The ``[system]`` table: the clients' links and devices, the deadline (off by default)."""

    profile: str = setting("off", "off | wifi | 4g | 3g | mixed | custom (the medians below) | trace (a CSV file)",
                           OneOf(*PROFILE_CHOICES))
    uplink: float = setting(8e6, "custom: median uplink, bits/s", POSITIVE)
    downlink: float = setting(25e6, "custom: median downlink, bits/s", POSITIVE)
    latency: float = setting(0.05, "custom: median one-way latency per message, s", Real(low=0))
    speed: float = setting(1e9, "custom: median compute speed, multiply-adds/s", POSITIVE)
    spread: float = setting(0.5, "lognormal sigma of each client's numbers around the medians (not trace); 0: equal",
                            SIGMA)
    round_spread: float = setting(0.0, "lognormal sigma of each client's numbers from round to round around its "
                                       "own; 0: the same device every round", SIGMA)
    trace: str | None = setting(None, "trace: CSV file, header client,up,down,latency,speed, a row per client",
                                Optional(Text(nonempty=True), "no trace"))
    availability: float = setting(1.0, "probability that a sampled client is reachable (else it takes no part)",
                                  Real(0, 1, low_open=True))
    deadline: float | None = setting(None, "federated: seconds the server waits for updates; later ones are dropped",
                                     Optional(POSITIVE, "wait for every participant"))
    over_select: float = setting(1.0, "federated: sample this many times the participants needed (at most "
                                      "n_clients in all), keep the first to arrive", Real(low=1))

    def __post_init__(self):
        check_fields(self)
        if self.profile == "trace" and self.trace is None:
            raise ValueError("trace must name a CSV file with system.profile = 'trace'")
        if self.trace is not None and self.profile != "trace":
            raise ValueError(f"trace is read only with system.profile = 'trace', not {self.profile!r}")
        if self.trace is not None:       # a relative path is from the current folder now; kept absolute
            object.__setattr__(self, "trace", str(expand_home(self.trace, "trace").absolute()))
        changed = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) != f.default]
        if not self.enabled and changed:
            raise ValueError("profile is 'off', so the other [system] settings would be ignored; set "
                             "system.profile (wifi, 4g, 3g, mixed, custom or trace)")
        for names, readers in ((CUSTOM_MEDIANS, ("custom",)), (("spread",), (*PROFILES, "mixed", "custom"))):
            ignored = [name for name in names if name in changed]
            if ignored and self.profile not in readers:
                others = "".join(f", system.{name}" for name in ignored[1:])
                said = ", ".join(map(repr, readers[:-1])) + " or " * (len(readers) > 1) + repr(readers[-1])
                raise ValueError(f"{ignored[0]}{others}: read only with system.profile = {said}, not "
                                 f"{self.profile!r}, which would ignore it")
        beyond = _beyond_the_floats(np.array([[getattr(self, name) for name in CUSTOM_MEDIANS]]))
        if self.profile == "custom" and beyond:     # as a trace's rows are checked (and each client's draw)
            name = CUSTOM_MEDIANS[beyond[1]]
            raise ValueError(f"{name} = {getattr(self, name):g} makes the simulated time of a round infinite (beyond "
                             f"{np.finfo(float).max:.3g} s); uplink, downlink and speed must be larger, latency "
                             f"smaller")

    @property
    def enabled(self) -> bool:
        return self.profile != "off"

    def sampled(self, needed: int, population: int) -> int:
        """Clients sampled per round: ceil(over_select x needed); a ValueError if the population is smaller."""
        sampled = math.ceil(self.over_select * needed - 1e-9)
        if sampled > population:
            largest = math.floor(population / needed * 1e4) / 1e4
            raise ValueError(f"system.over_select ({self.over_select:g}) x the {needed} participants needed per round "
                             f"(federated.participation_rate x n_clients) is {sampled} clients, more than the "
                             f"{population} of federated.n_clients; at most {largest:g}")
        return sampled


class Devices(NamedTuple):
    """Every client's numbers, arrays of shape (n_clients,)."""

    uplink: np.ndarray       # bits/s
    downlink: np.ndarray     # bits/s
    latency: np.ndarray      # s
    speed: np.ndarray        # multiply-adds/s


@np.errstate(over="ignore")     # medians far out, times exp(sigma z): inf, refused by the clocks (_Clock.checked)
def draw_devices(config: SystemConfig, n_clients: int, rng: np.random.Generator) -> Devices:
    """The devices of ``n_clients`` clients (the module docstring: profiles, spread, custom, trace); one drawn
    whose round of one bit is beyond the floats is refused in one ValueError line, as a trace's row is."""
    if config.profile == "trace":
        return read_trace(config.trace, n_clients)
    z = rng.standard_normal((n_clients, len(Profile._fields)))    # first: the same z whatever the profile
    if config.profile == "custom":
        medians = np.array([[config.uplink, config.downlink, config.latency, config.speed]] * n_clients)
    elif config.profile == "mixed":
        names = list(MIXED)
        chosen = rng.choice(len(names), size=n_clients, p=list(MIXED.values()))
        medians = np.array([PROFILES[name] for name in names])[chosen]
    else:
        medians = np.array([PROFILES[config.profile]] * n_clients)
    drawn = medians * np.exp(config.spread * z)   # x = median exp(sigma z)
    beyond = _beyond_the_floats(drawn)      # custom medians (finite: SystemConfig) the spread draws beyond them
    if beyond:
        (client, column), name = beyond, CUSTOM_MEDIANS[beyond[1]]
        raise ValueError(f"system.{name} = {medians[client, column]:g} with system.spread = {config.spread:g} draws "
                         f"client {client} the {name} {drawn[client, column]:g}, which makes the simulated time of a "
                         f"round infinite (beyond {np.finfo(float).max:.3g} s); uplink, downlink and speed must be "
                         f"larger, latency or spread smaller")
    return Devices(*drawn.T.copy())


@np.errstate(over="ignore", divide="ignore")
def _beyond_the_floats(devices: np.ndarray) -> tuple[int, int] | None:
    """``(row, column)`` of the first device, of devices given as rows (up, down, latency, speed), whose round of
    one bit each way and one multiply-add (1 / up + 1 / down + 2 latency + 1 / speed seconds) is beyond the
    floats, and of its term that is; None if there is none."""
    terms = np.column_stack([1 / devices[:, 0], 1 / devices[:, 1], 2 * devices[:, 2], 1 / devices[:, 3]])
    beyond = np.flatnonzero(~np.isfinite(terms.sum(axis=1)))
    return (int(beyond[0]), int(np.argmax(terms[beyond[0]]))) if len(beyond) else None


def read_trace(path, n_clients: int) -> Devices:
    """The devices of the CSV file at ``path`` (rows in any order); a malformed file is one ValueError line
    naming system.trace. The file is UTF-8, with or without a byte order mark (Excel's "CSV UTF-8"); blank
    lines (no cell holding more than spaces, as ``,,,,``) are skipped wherever they are, and a line's number
    in a message is its number in the file."""
    where = f"system.trace {path}"
    try:
        reader = csv.reader(io.StringIO(read_hashed(path)[0].decode("utf-8-sig"), newline=""))
        rows = [(reader.line_num, row) for row in reader if any(cell.strip() for cell in row)]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{where}: cannot be read ({error.strerror if isinstance(error, OSError) else error})") \
            from None
    if not rows or tuple(cell.strip() for cell in rows[0][1]) != TRACE_COLUMNS:
        raise ValueError(f"{where}: the first line must be the header {','.join(TRACE_COLUMNS)}")
    lines = [line for line, _ in rows[1:]]
    values = np.empty((len(lines), len(TRACE_COLUMNS)))
    for index, (line, row) in enumerate(rows[1:]):
        try:
            if len(row) != len(TRACE_COLUMNS):
                raise ValueError
            values[index] = [float(cell) for cell in row]
        except ValueError:
            raise ValueError(f"{where}: line {line} must hold {len(TRACE_COLUMNS)} numbers "
                             f"({','.join(TRACE_COLUMNS)}), got {','.join(row)[:60]!r}") from None
    clients = values[:, 0]
    if not np.all(np.isfinite(values)) or np.any(values[:, [1, 2, 4]] <= 0) or np.any(values[:, 3] < 0):
        raise ValueError(f"{where}: up, down and speed must be finite and > 0, latency finite and >= 0")
    beyond = _beyond_the_floats(values[:, 1:])
    if beyond:
        row, column = beyond[0], 1 + beyond[1]
        raise ValueError(f"{where}: line {lines[row]}: {TRACE_COLUMNS[column]} {values[row, column]:g} makes the "
                         f"simulated time of a round infinite (beyond {np.finfo(float).max:.3g} s); up, down "
                         f"and speed must be larger, latency smaller")
    if np.any(clients != np.round(clients)) or len(np.unique(clients)) != len(clients):
        raise ValueError(f"{where}: the client column must hold distinct integers")
    outside = clients[(clients < 0) | (clients >= n_clients)]
    if len(outside):
        raise ValueError(f"{where}: the client column must hold the clients 0 .. {n_clients - 1} of the run, one row "
                         f"each; it has rows for {len(outside)} others "
                         f"(first: [{', '.join(f'{client:.16g}' for client in outside[:5])}])")
    missing = np.setdiff1d(np.arange(n_clients), clients.astype(np.int64))
    if len(missing):
        raise ValueError(f"{where}: {len(missing)} of the {n_clients} clients have no row "
                         f"(first: {missing[:5].tolist()})")
    return Devices(*values[np.argsort(clients)][:, 1:].T.copy())


# ---------------------------------------------------------------------------------------------------------
# the clock


@np.errstate(over="ignore")     # a time beyond the float range is inf, refused by the clocks (_Clock.checked)
def transfer_seconds(bits, bandwidth, latency):
    """One message on one link: latency + bits / bandwidth (s)."""
    return latency + np.asarray(bits, dtype=np.float64) / bandwidth


@np.errstate(over="ignore")
def arrival_seconds(devices: Devices, clients: np.ndarray, down_bits, samples, multiply_adds_per_sample: float,
                    up_bits) -> np.ndarray:
    """``arrival_k`` of the module docstring for each of ``clients``, from the round's start."""
    latency = devices.latency[clients]
    return (transfer_seconds(down_bits, devices.downlink[clients], latency)
            + np.asarray(samples, dtype=np.float64) * multiply_adds_per_sample / devices.speed[clients]
            + transfer_seconds(up_bits, devices.uplink[clients], latency))


def kept_updates(arrival: np.ndarray, reachable: np.ndarray, needed: int, deadline: float | None):
    """``(kept (K,) bool, wait seconds)``: the first ``needed`` reachable updates to arrive by the deadline
    (ties: in client order) are kept; ``wait`` as in the module docstring (0 if no one is reachable)."""
    limit = math.inf if deadline is None else deadline
    candidates = np.flatnonzero(reachable & (arrival <= limit))
    order = candidates[np.argsort(arrival[candidates], kind="stable")][:needed]
    kept = np.zeros(len(arrival), dtype=bool)
    kept[order] = True
    if len(order) == needed:
        wait = float(arrival[order].max()) if needed else 0.0
    elif deadline is not None and np.any(reachable & (arrival > limit)):
        wait = float(deadline)
    else:
        wait = float(arrival[reachable].max()) if np.any(reachable) else 0.0
    return kept, wait


def reachable_clients(config: SystemConfig, streams, round_: int, participants: np.ndarray) -> np.ndarray:
    """Which participants stay reachable in round ``round_``: one uniform draw each (in client order) from the
    stream ``("system", round_)``, below ``availability``."""
    if config.availability >= 1.0:
        return np.ones(len(participants), dtype=bool)
    return streams.generator("system", round_).random(len(participants)) < config.availability


@np.errstate(over="ignore")     # numbers beyond the floats: inf, refused by the clocks (_Clock.checked)
def round_devices(config: SystemConfig, streams, devices: Devices, round_: int, clients: np.ndarray) -> Devices:
    """The devices of ``clients`` in round (iteration) ``round_`` under ``round_spread`` (the module docstring;
    one stream per client, so a client's links in a round do not depend on who else takes part)."""
    own = Devices(*(values[clients] for values in devices))
    if config.round_spread == 0:
        return own
    z = np.array([streams.generator("system-round", round_, client).standard_normal(4) for client in clients])
    factors = np.exp(config.round_spread * z.reshape(len(clients), 4))          # x_t = x exp(sigma_r z_t)
    return Devices(*(values * factors[:, i] for i, values in enumerate(own)))


class _Clock:
    """What both clocks share: the [system] table, and the check of the simulated time so far."""

    config: SystemConfig

    def checked(self, seconds: float, step: str) -> float:
        """``seconds``, the simulated time through ``step`` (``"round 3"``), if finite; else a one-line
        DataSettingError naming where the devices came from."""
        if math.isfinite(seconds):
            return seconds
        source = (f"system.trace {self.config.trace}" if self.config.profile == "trace" else
                  f"system.profile {self.config.profile!r} (its links, latencies and speeds)")
        raise DataSettingError(f"{source}: the simulated time through {step} is infinite (beyond "
                               f"{np.finfo(float).max:.3g} s); give the devices larger up, down and speed, or "
                               f"smaller latency")


class FederatedClock(_Clock):
    """A federated run's devices and its round clock (:func:`arrival_seconds`, :func:`kept_updates`)."""

    def __init__(self, config: SystemConfig, streams, n_clients: int, multiply_adds_per_sample: float,
                 samples_per_round: int):
        self.config, self.streams = config, streams
        self.devices = draw_devices(config, n_clients, streams.generator("system"))
        self.multiply_adds = float(multiply_adds_per_sample)
        self.samples = int(samples_per_round)
        if config.deadline is not None:
            fastest = float(np.min(arrival_seconds(self.devices, np.arange(n_clients), 0, self.samples,
                                                   self.multiply_adds, 0)))
            if fastest > config.deadline:
                raise ValueError(f"system.deadline ({config.deadline:g} s) is shorter than the fastest client's "
                                 f"round ({fastest:.4g} s: two latencies and its local work, sending nothing); "
                                 f"raise it above {fastest:.4g}")

    def reachable(self, t: int, sampled: np.ndarray) -> np.ndarray:
        """Which of round ``t``'s sampled clients are reachable (:func:`reachable_clients`)."""
        return reachable_clients(self.config, self.streams, t, sampled)

    def devices_in(self, t: int, participants: np.ndarray) -> Devices:
        """The (reachable) participants' devices in round ``t`` (:func:`round_devices`), one entry each."""
        return round_devices(self.config, self.streams, self.devices, t, participants)

    def wait(self, devices: Devices, down_bits, up_bits, needed: int, protocol_bits: int = 0):
        """A round up to the aggregation: ``(kept (K,) bool, wait seconds)``, from the participants' ``devices``
        (:meth:`devices_in`), what each receives before it trains (``down_bits``) and the encoded bits of its
        update (``up_bits``). With ``protocol_bits`` > 0 (PowerSGD, the module docstring) the update goes up in
        two messages around the server's factor of ``protocol_bits``."""
        K = len(devices.uplink)
        first = up_bits if not protocol_bits else protocol_bits     # P_k: as many floats as P_hat
        arrival = arrival_seconds(devices, np.arange(K), down_bits, self.samples, self.multiply_adds, first)
        if protocol_bits:      # every P_k is in: P_hat down, then Q_k up
            arrival = (arrival.max(initial=0.0) + transfer_seconds(protocol_bits, devices.downlink, devices.latency)
                       + transfer_seconds(np.asarray(up_bits) - protocol_bits, devices.uplink, devices.latency))
        return kept_updates(arrival, np.ones(K, bool), needed, self.config.deadline)

    @staticmethod
    def broadcast_seconds(devices: Devices, bits: float) -> float:
        """The new model reaching every participant: max_k transfer_down_k(bits) (0 with none)."""
        return float(transfer_seconds(bits, devices.downlink, devices.latency).max(initial=0.0))


class LazyClock(_Clock):
    """A lazy run's devices and its iteration clock: max_m [down_m(theta) + compute_m + upload_m up_m(bits)]."""

    def __init__(self, config: SystemConfig, streams, n_workers: int, multiply_adds_per_sample: float,
                 samples: np.ndarray, broadcast_bits: float, bits_per_upload: float):
        self.config, self.streams = config, streams
        self.devices = draw_devices(config, n_workers, streams.generator("system"))
        self.workers = np.arange(n_workers)
        self.message = (broadcast_bits, samples, multiply_adds_per_sample, bits_per_upload)
        self.parts = self._parts(self.devices)      # the same every iteration unless round_spread > 0

    def _parts(self, devices: Devices) -> tuple[np.ndarray, np.ndarray]:
        """Each worker's seconds before its upload (theta down, its gradient, one latency) and of its upload."""
        broadcast_bits, samples, multiply_adds, bits_per_upload = self.message
        before = arrival_seconds(devices, self.workers, broadcast_bits, samples, multiply_adds, 0) - devices.latency
        return before, transfer_seconds(bits_per_upload, devices.uplink, devices.latency)

    @np.errstate(over="ignore")
    def iteration(self, k: int, uploads: np.ndarray, working: np.ndarray | None = None) -> float:
        """Seconds of iteration ``k``, in which the workers ``uploads`` (a bool mask) upload and ``working`` (a bool
        mask; None: every worker) receive theta and compute; the others cost nothing (none working: 0 s)."""
        before, upload = (self.parts if self.config.round_spread == 0 else
                          self._parts(round_devices(self.config, self.streams, self.devices, k, self.workers)))
        seconds = before + np.where(uploads, upload, 0.0)
        return float(np.max(seconds) if working is None else np.max(seconds, where=working, initial=0.0))


__all__ = ["Devices", "FederatedClock", "LazyClock", "MIXED", "PROFILES", "Profile", "SystemConfig",
           "arrival_seconds", "draw_devices", "kept_updates", "read_trace", "reachable_clients", "round_devices",
           "transfer_seconds"]
