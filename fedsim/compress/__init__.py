"""Compressors of update vectors, error feedback and bit accounting."""

from fedsim.compress.base import (
    BatchResult,
    Compressor,
    DenseMessage,
    Layout,
    Message,
    MessageFormat,
    SignMessage,
    SparseMessage,
    TernaryMessage,
    ceil_product,
    decode,
    make_layout,
)
from fedsim.compress.bits import (
    expected_position_bits,
    rice_parameter_for_density,
    sparse_analytic_bits,
    stc_bits_per_entry,
)
from fedsim.compress.compressors import STC, Identity, Sign, TopK, make_compressor
from fedsim.compress.error_feedback import ErrorFeedback, ErrorFeedbackState

__all__ = [
    "BatchResult", "Compressor", "DenseMessage", "ErrorFeedback", "ErrorFeedbackState", "Identity", "Layout",
    "Message", "MessageFormat", "STC", "Sign", "SignMessage", "SparseMessage", "TernaryMessage", "TopK",
    "ceil_product", "decode", "expected_position_bits", "make_compressor", "make_layout",
    "rice_parameter_for_density", "sparse_analytic_bits", "stc_bits_per_entry",
]
