"""Inference graphs without Python: a function of tensors traced once per input signature (TorchScript).

At batch 1 on a CPU the policies' small models spend a large share of each call in Python (module calls, einops,
diffusers' bookkeeping), not in kernels: a traced graph runs the same aten operations with the interpreter out
of the loop (benchmarks/bench_step.py measures it). We chose `torch.jit.trace` over `torch.compile` (inductor)
because compiling the GFDM's UNet took 4 minutes on the shared 2-core CPU (the adapter's denoiser 2) against
~1 s to trace, for a similar gain at batch 1 (UNet 34 -> 21 ms compiled; 31 -> 18 ms traced, another run).
`torch.jit.freeze` and oneDNN graph fusion on top of the trace were measured too: no gain, and 3.7x slower,
respectively. `torch.jit.trace` is deprecated since torch 2.9 (hence the silenced DeprecationWarning) but still
supported; where it is gone, `TracedCall` says so once and runs the function eagerly (`tracing_status()`).

A trace records the operations of one call, so it is only valid for inputs of the same shapes, dtypes and devices
(one graph per signature), with every Python-side decision (flags, shape checks, values computed outside the
traced tensors) taken as at tracing time: callers key their `TracedCall`s on such flags. The parameters are
constants of the graph (tracing a function, not the module: building a ScriptModule of the GFDM's 450 submodules
took 2 of the 3 s of its trace), as are the buffers, so `check()` drops the graphs when any of them changed (an
optimiser step, an EMA codebook update, `load_state_dict`, a device move); call it once per inference step. Inference only: the graphs are made and run
without gradients, in eval mode.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable

import torch
from torch import Tensor, nn

TRACE_AVAILABLE = hasattr(torch.jit, "trace")
# A signature is traced at its third call: a trace costs ~1 s (the GFDM) plus ~0.5 s when TorchScript optimises
# the graph at its second run, which a robot's thousands of steps repay but a call made once or twice (a test, a
# rare batch size on a server) does not; the first calls run the same function eagerly.
TRACE_AFTER = 2
_warned = False


def tracing_status() -> str:
    """One line for speed reports: whether inference graphs are traced here."""
    if TRACE_AVAILABLE:
        return f"inference graphs: TorchScript traces (torch {torch.__version__})"
    return f"inference graphs: NOT traced (torch {torch.__version__} has no torch.jit.trace): eager Python"


class InferenceCache(dict):
    """Derived inference state kept on a model (traced graphs, precomputed constants): shared by shallow copies
    (a policy's forks), but never deep-copied or pickled (a copy starts empty and rebuilds what it needs), as it
    refers to the very objects it was built for and TorchScript functions cannot be pickled."""

    def __deepcopy__(self, memo: dict) -> InferenceCache:
        return type(self)()

    def __reduce__(self):
        return type(self), ()


def inference_cache(module: nn.Module) -> InferenceCache:
    """The module's `InferenceCache` (a plain attribute, created on first use)."""
    cache = module.__dict__.get("_inference_cache")
    if cache is None:
        cache = module.__dict__["_inference_cache"] = InferenceCache()
    return cache


def weights_key(tensors: list[Tensor]) -> tuple:
    """Changes whenever one of `tensors` does: in place (its version counter) or replaced (its storage)."""
    return tuple((t.data_ptr(), t._version) for t in tensors)


class TracedCall:
    """`fn(*tensors) -> tuple of tensors`, using the parameters of `module`, run as one trace per signature.

    `max_graphs` bounds how many signatures are kept (oldest dropped): batch sizes and text lengths vary little
    in evaluation, but a server could see many."""

    def __init__(self, module: nn.Module, fn: Callable[..., tuple[Tensor, ...]], max_graphs: int = 8):
        self.fn = fn
        self.max_graphs = max_graphs
        self.graphs: dict[tuple, Callable[..., tuple[Tensor, ...]]] = {}
        self.calls: dict[tuple, int] = {}  # eager calls per signature before it is traced (TRACE_AFTER)
        self._params = list(module.parameters())
        # buffers too: e.g. the GIDM's EMA codebook changes in training and is a constant of the graph
        self._state = self._params + list(module.buffers())
        self._weights = weights_key(self._state)

    def clear(self) -> None:
        self.graphs.clear()
        self.calls.clear()
        self._weights = weights_key(self._state)

    def check(self) -> None:
        """Drop the graphs if a parameter or buffer changed since they were traced (they hold the old values)."""
        if weights_key(self._state) != self._weights:
            self.clear()

    @torch.no_grad()
    def __call__(self, *tensors: Tensor) -> tuple[Tensor, ...]:
        if not TRACE_AVAILABLE:
            global _warned
            if not _warned:
                warnings.warn(tracing_status(), RuntimeWarning, stacklevel=2)
                _warned = True
            return tuple(self.fn(*tensors))
        key = tuple((tuple(t.shape), t.dtype, t.device) for t in tensors)
        graph = self.graphs.get(key)
        if graph is None:
            calls = self.calls.get(key, 0)
            if calls < TRACE_AFTER:
                self.calls[key] = calls + 1
                return tuple(self.fn(*tensors))
            graph = self.graphs[key] = self._trace(tensors)
            if len(self.graphs) > self.max_graphs:
                dropped = next(iter(self.graphs))
                del self.graphs[dropped]
                self.calls.pop(dropped, None)
        return graph(*tensors)

    def _trace(self, tensors: tuple[Tensor, ...]) -> Callable[..., tuple[Tensor, ...]]:
        # the tracer refuses constants that require grad: switch it off on the parameters while tracing
        flags = [p.requires_grad for p in self._params]
        try:
            for p in self._params:
                p.requires_grad_(False)
            with warnings.catch_warnings():
                # the deprecation notice (module docstring), and "this value is baked into the trace" notices:
                # baking shapes and flags is what one graph per signature is for
                warnings.simplefilter("ignore", DeprecationWarning)
                warnings.simplefilter("ignore", torch.jit.TracerWarning)
                return torch.jit.trace(lambda *x: tuple(self.fn(*x)), tensors, check_trace=False)
        finally:
            for p, flag in zip(self._params, flags):
                p.requires_grad_(flag)
