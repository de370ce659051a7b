"""Models over flat parameter vectors, each registered by name (the protocol: :mod:`fedsim.models.base`)."""

from fedsim.models.base import MODELS, ModelConfig, register_model
from fedsim.models.softmax import SoftmaxRegression

# The models: one registration line each.
register_model("softmax", lambda settings, n_features, n_classes, l2: SoftmaxRegression(n_features, n_classes, l2))

__all__ = ["MODELS", "ModelConfig", "SoftmaxRegression", "register_model"]
