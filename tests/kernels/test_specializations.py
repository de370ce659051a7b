"""One compiled version of a kernel per argument types, never one more for a constant.

A constant (``0``, ``1``), or a counter that starts at one, passed from one jitted function to another makes
Numba compile the callee for ``Literal[int](0)`` and again for ``int64``: each such version costs a cold start
up to a second (``fedsim run --preset synthetic`` compiled seven of them). The kernels pass ``np.int64(...)``
instead. A child process with an empty Numba cache (a cached caller never compiles its callees, so a warm
process would see nothing) compiles every jitted chain the library has: every compressor's batch kernels,
encoders and decoders (in float32: a literal comes from a call site, whatever the dtype), local training and
the gradients of both models, and every lazy method; then no dispatcher of fedsim may hold a signature with
a literal in it. NUMBA_OPT=0: the versions are decided by type inference, so the child skips LLVM's
optimizations.
"""

import json
import os
import subprocess
import sys
import warnings

import numpy as np

from tests.conftest import REPO


def compile_everything() -> list[str]:
    """Run what compiles every kernel; the signatures with a literal of every fedsim dispatcher."""
    from numba.core.registry import CPUDispatcher

    from fedsim.algorithms.federated import FederatedConfig, FederatedRun
    from fedsim.algorithms.lazy import METHODS, LazyConfig, LazyRun
    from fedsim.compress import COMPRESSORS, Layout, decode
    from fedsim.data.load import load_dataset
    from fedsim.models import ModelConfig

    warnings.simplefilter("ignore")
    data = load_dataset("synthetic", synthetic_devices=6, seed=1)
    for model in (ModelConfig(), ModelConfig(name="mlp", hidden=(6,), init="glorot")):
        config = FederatedConfig(method="fedavg", rounds=1, n_clients=6, batch_size=8, local_iterations=2)
        FederatedRun(config, data, data.client_indices, model_config=model).run()
        for method in METHODS:
            LazyRun(LazyConfig.reference(method, n_workers=3, iterations=2, eval_every=2, minibatch_size=10),
                    data, model_config=model).run()
    layout = Layout((0, 70, 100), ((7, 10), (30,)))
    updates = np.random.default_rng(0).standard_normal((2, layout.size)).astype(np.float32)
    for compressor in (cls() for cls in COMPRESSORS.values()):
        compressed, _ = compressor.compress(updates, compressor.init(layout), np.random.default_rng(0))
        message = compressed.message(0)
        assert decode(message.encode(), message.format) == message
    return sorted({f"{module_name}.{name}: {signature}"
                   for module_name, module in list(sys.modules.items()) if module_name.startswith("fedsim")
                   for name, value in list(vars(module).items()) if isinstance(value, CPUDispatcher)
                   for signature in map(str, value.signatures) if "Literal" in signature})


def test_no_kernel_is_compiled_for_a_literal(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path), "NUMBA_OPT": "0", "PYTHONPATH": str(REPO)}
    child = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True, timeout=600)
    assert child.returncode == 0, child.stderr
    assert json.loads(child.stdout) == []


if __name__ == "__main__":
    print(json.dumps(compile_everything()))
