"""Compressors of update vectors, error feedback and bit accounting."""
