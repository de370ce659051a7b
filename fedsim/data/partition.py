"""Partitioners: split a training set's sample indices among clients.

Every partitioner returns a list with one int64 index array per client (indices into the training set).
No index is used twice; where the table says so, every sample goes to exactly one client. Random
partitioners take an explicit :class:`numpy.random.Generator`; the same generator state always gives the
same split. Settings are validated up front: a bad one raises ``ValueError`` naming the setting and its
allowed range, and a split that cannot be made raises instead of looping forever or silently dropping samples.

=====================  =============================================================  ==================
method                 what a client gets                                             uses all samples
=====================  =============================================================  ==================
``classes_per_client`` a few classes, sizes equal or geometric (the STC reference)    not always
``dirichlet``          per class, a Dir(alpha) share of that class (label skew)        yes
``shards``             ``shards_per_client`` label-sorted shards (McMahan et al.)      yes
``iid``                a uniformly random equal share                                  yes
``contiguous``         the block [m N / M, (m + 1) N / M) in file order (LAQ seed)     yes
=====================  =============================================================  ==================

:func:`split_indices` dispatches by name, also to a plugin's partitioner (:func:`register_partitioner`);
:func:`class_counts` and :func:`partition_report` show what each client received.
"""

from __future__ import annotations

import numpy as np

from fedsim.constraints import Integer, Real, register_into


def _check_labels(labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be a 1-D array, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integers, got dtype {labels.dtype}")
    if len(labels) == 0:
        raise ValueError("labels must hold at least one sample, got an empty array")
    if labels.min() < 0:
        raise ValueError(f"labels must be >= 0, got a label {labels.min()}")
    return labels.astype(np.int64, copy=False)


def _check_n_clients(n_clients, n_samples: int) -> int:
    n_clients = Integer(low=1).check("n_clients", n_clients)
    if n_clients > n_samples:
        raise ValueError(f"n_clients = {n_clients} means more clients than samples ({n_samples}); "
                         f"n_clients must lie in [1, {n_samples}]")
    return n_clients


def _check_rng(rng) -> None:
    if not isinstance(rng, np.random.Generator):
        raise ValueError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}")


def _checked(labels, n_clients, rng) -> tuple[np.ndarray, int, int]:
    """The labels, their number and ``n_clients`` of a random partitioner, checked in that order, then ``rng``."""
    labels = _check_labels(labels)
    n_clients = _check_n_clients(n_clients, len(labels))
    _check_rng(rng)
    return labels, len(labels), n_clients


def _resolve_n_classes(labels: np.ndarray, n_classes) -> int:
    observed = int(labels.max()) + 1
    if n_classes is None:
        return observed
    return Integer(low=observed).check("n_classes", n_classes)


def indices_by_owner(owner: np.ndarray, n_owners: int) -> list[np.ndarray]:
    """For each owner ``o`` in ``0 .. n_owners - 1``, the int64 indices ``j`` with ``owner[j] == o``, increasing."""
    order = np.argsort(owner, kind="stable").astype(np.int64, copy=False)
    return np.split(order, np.cumsum(np.bincount(owner, minlength=n_owners))[:-1])


def _equal_bounds(n_samples: int, n_parts: int) -> np.ndarray:
    """Boundaries of n_parts blocks as equal as possible: block m is [m N // M, (m + 1) N // M)."""
    return (np.arange(n_parts + 1, dtype=np.int64) * n_samples) // n_parts


def stc_client_sizes(n_samples: int, n_clients: int, balancedness: float) -> np.ndarray:
    """Client sizes of the STC reference split (Sattler et al., arXiv 1903.02891).

    With balancedness beta = 1 every client gets ``N // n``. With beta < 1::

        f_i = beta^i / sum_j beta^j           (i = 0 .. n - 1)
        size_i = floor((0.1 / n + 0.9 f_i) * N)

    and the list is reversed, so client 0 is the smallest. Every client keeps at least a tenth of an equal
    share; the sizes sum to at most N.
    """
    if balancedness >= 1:
        return np.full(n_clients, n_samples // n_clients, dtype=np.int64)
    geometric = balancedness ** np.arange(n_clients, dtype=np.float64)
    fractions = 0.1 / n_clients + 0.9 * geometric / geometric.sum()
    return np.floor(fractions * n_samples).astype(np.int64)[::-1].copy()


def classes_per_client(labels, n_clients: int, classes_per_client: int, balancedness: float,
                       rng: np.random.Generator, n_classes: int | None = None) -> list[np.ndarray]:
    """The STC reference split: each client draws from a few classes, sizes equal or geometric.

    Algorithm (Sattler et al., arXiv 1903.02891, as in their reference code)::

        size_i  = stc_client_sizes(N, n, balancedness)
        quota_i = max(1, size_i // classes_per_client)
        shuffle the indices of every class
        for client i = 0 .. n - 1:
            c = a uniformly random class; budget = size_i
            while budget > 0:
                take = min(quota_i, samples left in class c, budget)
                give the next `take` unused indices of class c to client i; budget -= take
                c = (c + 1) mod L

    A client can end up with **more** than ``classes_per_client`` classes (:func:`partition_report` flags
    it): the remainder ``size_i - classes_per_client * quota_i`` comes from the next class, a visited class
    that runs short sends the client on to further ones, and late clients, finding most classes exhausted,
    may wrap around and take more from a class they already hold. Sizes that do not add up to N leave the
    rest to no client (the report counts them). ``n_classes`` is L (default ``labels.max() + 1``). Each
    client's indices come in the order taken. ValueError when some client would get no sample (the
    reference then produced an empty client).
    """
    labels, n_samples, n_clients = _checked(labels, n_clients, rng)
    n_classes = _resolve_n_classes(labels, n_classes)
    classes_per_client = Integer(1, n_classes).check("classes_per_client", classes_per_client)
    Real(0, 1, low_open=True).check("balancedness", balancedness)      # 1: equal client sizes

    sizes = stc_client_sizes(n_samples, n_clients, balancedness)
    if sizes.min() < 1:
        empty = np.flatnonzero(sizes < 1)
        raise ValueError(f"impossible split: with {n_samples} samples, n_clients = {n_clients} and "
                         f"balancedness = {balancedness}, clients {empty.tolist()[:10]} would get no "
                         f"sample; lower n_clients, or raise balancedness toward 1")
    if sizes.sum() > n_samples:  # cannot happen with the sizes above; kept as the reference's guard
        raise ValueError(f"impossible split: client sizes sum to {sizes.sum()} > {n_samples} samples")
    quotas = np.maximum(1, sizes // classes_per_client)

    class_pools = [rng.permutation(np.flatnonzero(labels == c)) for c in range(n_classes)]
    used_per_class = np.zeros(n_classes, dtype=np.int64)
    start_classes = rng.integers(0, n_classes, size=n_clients)

    parts = []
    for client in range(n_clients):
        budget, quota, current = int(sizes[client]), int(quotas[client]), int(start_classes[client])
        pieces, empty_visits = [], 0
        while budget > 0:
            left = len(class_pools[current]) - used_per_class[current]
            take = min(quota, left, budget)
            if take > 0:
                start = used_per_class[current]
                pieces.append(class_pools[current][start:start + take])
                used_per_class[current] += take
                budget -= take
                empty_visits = 0
            else:
                empty_visits += 1
                if empty_visits >= n_classes:  # unreachable while sum(sizes) <= N; never loop forever
                    raise ValueError(f"impossible split: every class ran out while client {client} "
                                     f"still needed {budget} samples")
            current = (current + 1) % n_classes
        parts.append(np.concatenate(pieces).astype(np.int64, copy=False))
    return parts


def dirichlet(labels, n_clients: int, alpha: float, rng: np.random.Generator, min_size: int = 1,
              n_classes: int | None = None, max_attempts: int = 100) -> list[np.ndarray]:
    """Label-skewed split: every class is shared among the clients in Dirichlet(alpha) proportions.

    For each class c with n_c samples (Hsu, Qi, Brown, arXiv 1909.06335; the per-class form popularised
    by Yurochkin et al., arXiv 1905.12022)::

        (p_c1, ..., p_cn) ~ Dir(alpha, ..., alpha)
        cut_ck = floor(n_c * (p_c1 + ... + p_ck))
        client k gets the shuffled class-c indices [cut_c(k-1), cut_ck)

    Small alpha concentrates each class on few clients; large alpha approaches an iid split.

    Minimum size: if some client ends up with fewer than ``min_size`` samples, the whole split is drawn
    again (fresh proportions and shuffles from ``rng``), at most ``max_attempts`` times; then a
    ``ValueError`` says so. Nothing is moved between clients to force the minimum, so the accepted split
    is an exact Dirichlet draw conditioned on all sizes >= min_size. Each client's indices are sorted.
    """
    labels, n_samples, n_clients = _checked(labels, n_clients, rng)
    n_classes = _resolve_n_classes(labels, n_classes)
    Real(0, low_open=True).check("alpha", alpha)
    min_size = Integer(0, n_samples // n_clients).check("min_size", min_size)
    max_attempts = Integer(low=1).check("max_attempts", max_attempts)

    class_members = [np.flatnonzero(labels == c) for c in range(n_classes)]
    client_ids = np.arange(n_clients, dtype=np.int64)
    smallest = 0
    for _ in range(max_attempts):
        proportions = rng.dirichlet(np.full(n_clients, float(alpha)), size=n_classes)   # (L, n)
        owner = np.empty(n_samples, dtype=np.int64)   # owner[j] = the client of sample j
        for c, members in enumerate(class_members):
            shuffled = rng.permutation(members)
            cumulative = np.minimum(np.cumsum(proportions[c]), 1.0)
            cuts = np.floor(cumulative * len(members)).astype(np.int64)
            cuts[-1] = len(members)   # the last client takes the rest of the class: nothing is dropped
            counts = np.diff(cuts, prepend=0)
            owner[shuffled] = np.repeat(client_ids, counts)
        smallest = int(np.bincount(owner, minlength=n_clients).min())
        if smallest >= min_size:
            return indices_by_owner(owner, n_clients)
    raise ValueError(f"dirichlet: in {max_attempts} draws, none gave every client at least {min_size} samples "
                     f"(alpha = {alpha}, n_clients = {n_clients}; the last draw's smallest client: {smallest}); "
                     f"raise alpha, or lower n_clients")


def shards(labels, n_clients: int, rng: np.random.Generator, shards_per_client: int = 2) -> list[np.ndarray]:
    """McMahan et al.'s pathological non-IID split (arXiv 1602.05629).

    Sort the sample indices by label (a stable sort, so file order within a class), cut them into
    S = n_clients * shards_per_client contiguous shards as equal as possible (shard j is
    [j N // S, (j + 1) N // S) of the sorted order), and give every client ``shards_per_client`` shards
    chosen uniformly at random without replacement. ``shards_per_client`` lies in [1, N // n_clients], so
    that every shard holds a sample.
    """
    labels, n_samples, n_clients = _checked(labels, n_clients, rng)
    shards_per_client = Integer(1, n_samples // n_clients).check("shards_per_client", shards_per_client)
    n_shards = n_clients * shards_per_client
    sorted_indices = np.argsort(labels, kind="stable").astype(np.int64)
    bounds = _equal_bounds(n_samples, n_shards)
    assignment = rng.permutation(n_shards).reshape(n_clients, shards_per_client)
    return [np.concatenate([sorted_indices[bounds[s]:bounds[s + 1]] for s in client_shards])
            for client_shards in assignment]


def iid(n_samples: int, n_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    """Uniformly random split into equal shares: a random permutation cut at [m N // M] (m = 0..M)."""
    n_samples = Integer(low=1).check("n_samples", n_samples)
    n_clients = _check_n_clients(n_clients, n_samples)
    _check_rng(rng)
    permutation = rng.permutation(n_samples).astype(np.int64)
    bounds = _equal_bounds(n_samples, n_clients)
    return [permutation[bounds[m]:bounds[m + 1]] for m in range(n_clients)]


def contiguous(n_samples: int, n_clients: int) -> list[np.ndarray]:
    """Equal blocks in file order, as the LAQ reference: worker m gets [m N // M, (m + 1) N // M)."""
    n_samples = Integer(low=1).check("n_samples", n_samples)
    n_clients = _check_n_clients(n_clients, n_samples)
    bounds = _equal_bounds(n_samples, n_clients)
    return [np.arange(bounds[m], bounds[m + 1], dtype=np.int64) for m in range(n_clients)]


# method -> (required settings, optional settings)
METHOD_SETTINGS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "classes_per_client": (("classes_per_client", "balancedness"), ("n_classes",)),
    "dirichlet": (("alpha",), ("min_size", "n_classes", "max_attempts")),
    "shards": ((), ("shards_per_client",)),
    "iid": ((), ()),
    "contiguous": ((), ()),
}
#: The partitioners registered by plugins (:func:`register_partitioner`), by name.
PLUGIN_PARTITIONERS: dict = {}


def register_partitioner(name: str):
    """Decorator: ``split(labels, n_clients, rng)``, which returns one int64 index array per client, becomes
    the partitioner ``name`` of ``data.partition`` (a plugin's, :mod:`fedsim.plugins`; no settings of its
    own)."""
    def add(split):
        register_into(PLUGIN_PARTITIONERS, name, split, "partition method")
        METHOD_SETTINGS.setdefault(name, ((), ()))
        return split
    return add


def split_indices(method: str, labels, n_clients: int, rng: np.random.Generator | None = None,
                  **settings) -> list[np.ndarray]:
    """Split ``labels``' indices among ``n_clients`` with the partitioner named ``method``.

    ``settings`` are the method's own keyword arguments (see ``METHOD_SETTINGS``), e.g.
    ``split_indices("dirichlet", labels, 100, rng, alpha=0.5)``. ``contiguous`` ignores ``rng``.
    """
    if method not in METHOD_SETTINGS:
        raise ValueError(f"unknown partition method {method!r}; allowed: {', '.join(METHOD_SETTINGS)}")
    required, optional = METHOD_SETTINGS[method]
    unknown = sorted(set(settings) - set(required) - set(optional))
    if unknown:
        allowed = ", ".join(required + optional) or "none"
        raise ValueError(f"partition method {method!r} got unknown settings {unknown}; allowed: {allowed}")
    missing = [name for name in required if name not in settings]
    if missing:
        raise ValueError(f"partition method {method!r} needs the settings {missing}")
    if method in PLUGIN_PARTITIONERS:
        parts = PLUGIN_PARTITIONERS[method](_check_labels(labels), n_clients, rng)
        if len(parts) != n_clients:
            raise ValueError(f"partition method {method!r} gave {len(parts)} index arrays for {n_clients} clients")
        return [np.asarray(part, np.int64) for part in parts]
    if method == "contiguous":
        return contiguous(len(_check_labels(labels)), n_clients)
    if method == "iid":
        return iid(len(_check_labels(labels)), n_clients, rng)
    splitter = {"shards": shards, "dirichlet": dirichlet, "classes_per_client": classes_per_client}[method]
    return splitter(labels, n_clients, rng=rng, **settings)


def class_counts(labels, parts, n_classes: int) -> np.ndarray:
    """How many samples of each class every client holds: an (n_clients, n_classes) int64 array."""
    labels = _check_labels(labels)
    n_classes = _resolve_n_classes(labels, n_classes)
    parts = [np.asarray(part, dtype=np.int64) for part in parts]
    sizes = np.array([len(part) for part in parts], dtype=np.int64)
    if not parts:
        return np.zeros((0, n_classes), dtype=np.int64)
    indices = np.concatenate(parts)
    if len(indices) and (indices.min() < 0 or indices.max() >= len(labels)):
        raise ValueError(f"partition indices must lie in [0, {len(labels) - 1}], "
                         f"got [{indices.min()}, {indices.max()}]")
    owner = np.repeat(np.arange(len(parts), dtype=np.int64), sizes)
    # count[client, class] as one bincount over the flat key client * L + class
    flat = np.bincount(owner * n_classes + labels[indices], minlength=len(parts) * n_classes)
    return flat.reshape(len(parts), n_classes).astype(np.int64)


def partition_report(labels, parts, n_classes: int, classes_per_client: int | None = None) -> str:
    """A readable table of a split: client, size, number of classes present, count per class.

    The footer gives the size range, how many samples were used (and how many went to no client or were
    used twice), and, when ``classes_per_client`` is given, which clients hold more classes than that.
    """
    labels = _check_labels(labels)
    counts = class_counts(labels, parts, n_classes)
    sizes = counts.sum(axis=1)
    present = (counts > 0).sum(axis=1)
    width = max(5, len(str(int(counts.max()))) + 1) if counts.size else 5
    class_header = "".join(f"{c:>{width}}" for c in range(counts.shape[1]))
    lines = [f"{'client':>6} {'size':>7} {'classes':>7} |{class_header}"]
    for client, row in enumerate(counts):
        cells = "".join(f"{n:>{width}}" for n in row)
        lines.append(f"{client:>6} {sizes[client]:>7} {present[client]:>7} |{cells}")
    all_indices = (np.concatenate([np.asarray(p, dtype=np.int64) for p in parts]) if parts
                   else np.zeros(0, dtype=np.int64))
    distinct = len(np.unique(all_indices))
    lines.append(f"{len(parts)} clients; sizes min {sizes.min() if len(sizes) else 0}, "
                 f"max {sizes.max() if len(sizes) else 0}; {distinct} of {len(labels)} samples used, "
                 f"{len(labels) - distinct} unassigned, {len(all_indices) - distinct} assigned twice")
    if classes_per_client is not None:
        over = np.flatnonzero(present > classes_per_client)
        if len(over):
            lines.append(f"{len(over)} clients hold more than classes_per_client = {classes_per_client} "
                         f"classes: {over.tolist()}")
        else:
            lines.append(f"no client holds more than classes_per_client = {classes_per_client} classes")
    return "\n".join(lines)
