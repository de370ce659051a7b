"""Compressors of update vectors, error feedback, aggregation and bit accounting.

Each compressor is one module (its class and its message type); importing it registers it. To add one,
write the module and add its import line below (ARCHITECTURE.md, "Adding a compressor").
"""

from fedsim.compress.base import (
    COMPRESSORS,
    Compressed,
    Compressor,
    Layout,
    Message,
    MessageFormat,
    ceil_product,
    compressor_class,
    decode,
    make_compressor,
)
from fedsim.compress.bits import expected_position_bits, stc_bits_per_entry
from fedsim.compress.error_feedback import ErrorFeedback, ErrorFeedbackState

# The compressors (one registration line each).
from fedsim.compress.identity import DenseMessage, Identity
from fedsim.compress.topk import SparseMessage, TopK
from fedsim.compress.stc import STC, TernaryMessage
from fedsim.compress.sign import Sign, SignMessage
from fedsim.compress.powersgd import PowerSGD, PowerSGDMessage
from fedsim.compress.randomk import RandomK, RandomKMessage
from fedsim.compress.terngrad import TernGrad, TernGradMessage
from fedsim.compress.qsgd import QSGD, QSGDMessage

__all__ = [
    "COMPRESSORS", "Compressed", "Compressor", "DenseMessage", "ErrorFeedback", "ErrorFeedbackState",
    "Identity", "Layout", "Message", "MessageFormat", "STC", "Sign", "SignMessage", "SparseMessage",
    "TernaryMessage", "TopK", "ceil_product", "compressor_class", "decode", "expected_position_bits",
    "make_compressor", "stc_bits_per_entry",
    "PowerSGD", "PowerSGDMessage", "QSGD", "QSGDMessage", "RandomK", "RandomKMessage", "TernGrad", "TernGradMessage",
]
