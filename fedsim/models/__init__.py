"""Models over flat parameter vectors, each registered by name (the protocol: :mod:`fedsim.models.base`)."""

from fedsim.models.base import MODELS, ModelConfig, register_model
from fedsim.models.mlp import MLP
from fedsim.models.softmax import SoftmaxRegression

# The models: one registration line each.
register_model("softmax", lambda settings, n_features, n_classes, l2: SoftmaxRegression(n_features, n_classes, l2))
register_model("mlp", lambda settings, n_features, n_classes, l2: MLP(n_features, settings.hidden, n_classes,
                                                                     settings.activation, l2),
               default_init="glorot", hidden_layers=True, convex=False)

__all__ = ["MLP", "MODELS", "ModelConfig", "SoftmaxRegression", "register_model"]
