"""Models over flat parameter vectors."""

from fedsim.models.softmax import SoftmaxRegression

__all__ = ["SoftmaxRegression"]
