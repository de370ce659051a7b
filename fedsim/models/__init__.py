"""Models over flat parameter vectors."""

from fedsim.models.mlp import MLP
from fedsim.models.softmax import SoftmaxRegression

__all__ = ["MLP", "SoftmaxRegression"]
