"""The algorithm families, each registered in :data:`fedsim.algorithms.family.FAMILIES` by its module.

* ``federated`` (:mod:`fedsim.algorithms.federated`): compressed federated averaging, STC, FedAvg,
  signSGD, top-k and every compressor of :mod:`fedsim.compress`;
* ``lazy`` (:mod:`fedsim.algorithms.lazy`): GD, QGD, LAG-WK, LAG-PS, LAQ, SLAQ.
"""

from fedsim.algorithms import federated, lazy  # noqa: F401  (registration)
from fedsim.algorithms.family import FAMILIES, Family, family

__all__ = ["FAMILIES", "Family", "family"]
