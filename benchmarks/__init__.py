"""fedsim's benchmark suite: kernels, rounds, scale and JIT compile time, against NumPy and torch.

Run everything with ``python -m benchmarks.run --quick`` (a few minutes) or ``--full``; see
``benchmarks/README.md`` for what is measured and the latest tables. Every benchmark validates that the
implementations it compares agree before it times them.
"""
