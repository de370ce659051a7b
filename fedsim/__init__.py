"""fedsim: a NumPy + Numba simulator of communication-efficient federated learning.

Two algorithm families over one flat-parameter-vector convention (:mod:`fedsim.params`):

* compressed federated averaging: STC (Sattler et al., arXiv 1903.02891), FedAvg, signSGD, top-k;
* lazy aggregation: LAG (Chen et al., arXiv 1805.09965) and LAQ (Sun et al., arXiv 1909.07588).

ARCHITECTURE.md draws its layers, each importing only from the ones below it.
"""

__version__ = "0.1.0"
