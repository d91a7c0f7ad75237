"""Runtime patches that let Megatron-Core (0.16.1 to 0.19.x) run on CPU over gloo.

Megatron-Core assumes a CUDA device in a handful of places that have nothing to
do with the math: it asks ``torch.cuda.current_device()`` where a tensor should
live, allocates a few bookkeeping scalars with ``device="cuda"``, forks the CUDA
RNG for tensor-parallel dropout, and checks ``param.type()`` against CUDA type
names when it builds optimizer shards. On a CPU-only torch build each of those
raises, although the surrounding code is device-agnostic.

:func:`apply_cpu_patches` installs the smallest set of fixes for those calls.
It does nothing when CUDA is available, so importing megatron_salt on a GPU node
never changes Megatron-Core's behaviour there. Each patch declares the
Megatron-Core versions that need it (:data:`CPU_PATCHES`) and is applied only
there; ``patches/README.md`` lists the call each targets and when to drop it.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import types
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from megatron_salt.compat.versions import megatron_core_version

logger = logging.getLogger(__name__)

_APPLIED = False


def cpu_patches_needed() -> bool:
    """True when torch has no usable CUDA device (the patches' only trigger)."""
    return not torch.cuda.is_available()


def apply_cpu_patches() -> bool:
    """Install the CPU patches this Megatron-Core needs, once; return True if active.

    Safe to call many times and from every rank. A no-op with CUDA available.
    """
    global _APPLIED
    if _APPLIED:
        return True
    if not cpu_patches_needed():
        return False

    version = megatron_core_version()
    applied = []
    for patch in patches_for(version):
        patch.apply()
        applied.append(str(patch.number))
    _APPLIED = True
    logger.info(
        "megatron-salt: CPU/gloo patches %s active for megatron-core %s",
        ",".join(applied),
        version,
    )
    return True


def patches_for(version: Version) -> list[CpuPatch]:
    """The patches a Megatron-Core version needs (patches/README.md, column "needed in")."""
    return [patch for patch in CPU_PATCHES if version in SpecifierSet(patch.needed_in)]


# --- 1. torch.cuda.current_device / synchronize -------------------------------


def _patch_cuda_device_queries() -> None:
    """Make ``torch.cuda.current_device()`` answer ``cpu`` and ``synchronize`` a no-op.

    Targets: ``torch.empty(..., device=torch.cuda.current_device())`` all over
    megatron-core 0.16 (RoPE ``inv_freq``, ``GlobalMemoryBuffer``, p2p shape
    exchange, grad buffers) and ``torch.cuda.synchronize()`` in p2p.
    Why global: on a CPU-only build both functions always raise, so replacing
    them cannot change any code path that worked before.
    Drop when: megatron-core takes the device from its tensors/configs.
    """
    torch.cuda.current_device = lambda: torch.device("cpu")  # type: ignore[assignment]
    torch.cuda.synchronize = lambda device=None: None  # type: ignore[assignment]


# --- 2. device="cuda" literals -----------------------------------------------


class _CpuTorch(types.ModuleType):
    """A stand-in for ``torch`` inside one module that maps ``device="cuda"`` to CPU.

    Everything else is the real ``torch``; only the factory functions below see
    their ``device`` argument rewritten.
    """

    _FACTORIES = ("zeros", "ones", "empty", "tensor", "full", "arange")

    def __init__(self) -> None:
        super().__init__("torch")
        for name in self._FACTORIES:
            setattr(self, name, self._on_cpu(getattr(torch, name)))

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def _on_cpu(factory: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        @functools.wraps(factory)
        def wrapper(*args: Any, **kwargs: Any) -> torch.Tensor:
            device = kwargs.get("device")
            if device is not None and torch.device(device).type == "cuda":
                kwargs["device"] = "cpu"
                kwargs.pop("pin_memory", None)
            return factory(*args, **kwargs)

        return wrapper


#: Modules that allocate bookkeeping tensors with a literal ``device="cuda"``.
_MODULES_WITH_CUDA_LITERALS = (
    # total_num_tokens in every forward_backward_* schedule
    "megatron.core.pipeline_parallel.schedules",
    # found_inf / _scale_one / _scale of the (mixed-precision) optimizers
    "megatron.core.optimizer.optimizer",
    # total_norm and zero-count scalars of grad clipping
    "megatron.core.optimizer.clip_grads",
    # l2 norm helper used by grad clipping without apex
    "megatron.core.utils",
    # get_default_causal_mask, used when no attention mask is passed
    "megatron.core.transformer.utils",
)


def _patch_cuda_device_literals() -> None:
    """Give the modules above a ``torch`` whose factories put ``"cuda"`` tensors on CPU.

    Targets: e.g. ``torch.zeros([], dtype=torch.int, device="cuda")`` in
    ``schedules.forward_backward_no_pipelining`` (megatron-core 0.16.1).
    Why module-scoped: a global rewrite of ``device="cuda"`` would hide real
    device bugs in user code; here only the named modules are affected.
    Drop when: those scalars are allocated on the model's device.
    """
    import importlib

    cpu_torch = _CpuTorch()
    for name in _MODULES_WITH_CUDA_LITERALS:
        importlib.import_module(name).torch = cpu_torch


# --- 3. RNG tracker -----------------------------------------------------------


def _patch_rng_tracker() -> None:
    """Back Megatron's tensor-parallel RNG tracker with the CPU generator.

    Targets: ``CudaRNGStatesTracker.add`` / ``fork`` (``torch.cuda.get_rng_state``,
    ``_set_cuda_rng_state``) reached from ``model_parallel_cuda_manual_seed`` and
    from dropout/initialisation inside tensor-parallel regions.
    Why: the tracker's contract (named, independently seeded streams that
    differ per TP rank) is device-agnostic; on CPU the streams are CPU states.
    Drop when: megatron-core grows a device-generic tracker.
    """
    from megatron.core.tensor_parallel import random as mcore_random

    class CpuRNGStatesTracker(mcore_random.CudaRNGStatesTracker):
        """Same bookkeeping as the CUDA tracker, on ``torch``'s CPU generator."""

        def add(self, name: str, seed: int) -> None:
            self._is_initialized = True
            if seed in self.seeds_:
                raise Exception(f"seed {seed} already exists")
            self.seeds_.add(seed)
            if name in self.states_:
                raise Exception(f"rng state {name} already exists")
            orig = torch.get_rng_state()
            torch.manual_seed(seed)
            self.states_[name] = torch.get_rng_state()
            torch.set_rng_state(orig)

        @contextlib.contextmanager
        def fork(self, name: str = mcore_random._MODEL_PARALLEL_RNG_TRACKER_NAME) -> Iterator[None]:
            if name not in self.states_:
                raise Exception(f"rng state {name} is not added")
            orig_state = torch.get_rng_state()
            orig_name = self._current_state_name
            if orig_name != "default-rng":
                self.states_[orig_name] = orig_state
            torch.set_rng_state(self.states_[name])
            self._current_state_name = name
            try:
                yield
            finally:
                self.states_[name] = torch.get_rng_state()
                if orig_name != "default-rng":
                    orig_state = self.states_[orig_name]
                torch.set_rng_state(orig_state)
                self._current_state_name = orig_name

    # initialize_rng_tracker() instantiates the module-level name at call time.
    mcore_random.CudaRNGStatesTracker = CpuRNGStatesTracker
    if mcore_random._CUDA_RNG_STATE_TRACKER is not None and not isinstance(
        mcore_random._CUDA_RNG_STATE_TRACKER, CpuRNGStatesTracker
    ):
        mcore_random.initialize_rng_tracker(force_reset=True)


# --- 4. CUDA type names and .cuda() in named functions -------------------------

_CUDA_TYPE_NAMES = {
    "torch.FloatTensor": "torch.cuda.FloatTensor",
    "torch.HalfTensor": "torch.cuda.HalfTensor",
    "torch.BFloat16Tensor": "torch.cuda.BFloat16Tensor",
}


@contextlib.contextmanager
def _cpu_tensors_act_as_cuda() -> Iterator[None]:
    """While active: CPU tensors report CUDA type names and ``.cuda()`` keeps them on CPU."""
    original_type, original_cuda = torch.Tensor.type, torch.Tensor.cuda

    def type_(self: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        name = original_type(self, *args, **kwargs)
        if args or kwargs:  # a conversion, not a query
            return name
        return _CUDA_TYPE_NAMES.get(name, name)

    def cuda(self: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self

    torch.Tensor.type = type_  # type: ignore[method-assign]
    torch.Tensor.cuda = cuda  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.Tensor.type = original_type  # type: ignore[method-assign]
        torch.Tensor.cuda = original_cuda  # type: ignore[method-assign]


def _acting_as_cuda(fn: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with _cpu_tensors_act_as_cuda():
            return fn(*args, **kwargs)

    return wrapper


def _patch_cuda_tensor_assumptions() -> None:
    """Let four functions that assume CUDA tensors accept CPU ones.

    Targets (megatron-core 0.16.1): ``param.type() == 'torch.cuda.FloatTensor'``
    (and Half/BFloat16) in ``DistributedOptimizer._build_model_and_main_param_groups``,
    ``Float16OptimizerWithFloat16Params.__init__`` and
    ``clip_grad_by_total_norm_fp32``; ``weight.data.cuda()`` in
    ``LanguageModule.setup_embeddings_and_output_layer`` (tied embeddings with PP>1).
    Why scoped: only while those functions run do CPU tensors report CUDA type
    names and stay put on ``.cuda()``; on a CPU-only build both would otherwise
    raise, and nothing outside the four functions sees the change.
    Drop when: the checks use ``tensor.dtype`` / the model's device.
    """
    from megatron.core.models.common.language_module import language_module
    from megatron.core.optimizer import clip_grads, distrib_optimizer, optimizer

    clip = _acting_as_cuda(clip_grads.clip_grad_by_total_norm_fp32)
    clip_grads.clip_grad_by_total_norm_fp32 = clip
    optimizer.clip_grad_by_total_norm_fp32 = clip  # imported by name there

    dist_opt = distrib_optimizer.DistributedOptimizer
    build = dist_opt.__dict__["_build_model_and_main_param_groups"].__func__
    dist_opt._build_model_and_main_param_groups = classmethod(_acting_as_cuda(build))
    fp16_opt = optimizer.Float16OptimizerWithFloat16Params
    fp16_opt.__init__ = _acting_as_cuda(fp16_opt.__init__)

    module = language_module.LanguageModule
    module.setup_embeddings_and_output_layer = _acting_as_cuda(
        module.setup_embeddings_and_output_layer
    )


# --- 5. resuming the DistributedOptimizer without apex/TE ---------------------


def _patch_distributed_optimizer_resume() -> None:
    """Two fixes on the DistributedOptimizer's load path used without apex/TE (always on CPU).

    Targets (megatron-core 0.16.1):

    * ``sharded_state_dict(..., is_loading=True)`` calls ``state_dict()``, which reads
      a ``step`` from every parameter's state; a torch Adam that has not stepped yet
      has none (``assert len(steps) == 1``). Megatron's own remedy for its FSDP path,
      ``_init_optimizer_states_with_dummy_values()`` (a zero-gradient step), runs
      first; the load then replaces every value it wrote.
    * ``load_state_dict`` then takes the per-parameter ``step`` from the parameter
      state written by that dummy step (1), and gives every state the *same* tensor,
      which torch's foreach Adam increments once per parameter: resumed runs
      diverged. Each state gets its own copy of the checkpoint's step (the one
      ``state_dict()`` stored in the param groups).

    Drop when: the non-apex/TE path keeps per-parameter steps itself.
    """
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    sharded_state_dict = DistributedOptimizer.sharded_state_dict
    load_state_dict = DistributedOptimizer.load_state_dict

    @functools.wraps(sharded_state_dict)
    def sharded_state_dict_with_state(
        self, model_sharded_state_dict=None, is_loading=False, **kwargs
    ):
        if is_loading and not self.optimizer.state:
            self._init_optimizer_states_with_dummy_values()
        return sharded_state_dict(self, model_sharded_state_dict or {}, is_loading, **kwargs)

    @functools.wraps(load_state_dict)
    def load_state_dict_own_steps(self, state_dict):
        load_state_dict(self, state_dict)
        steps = {group.get("step") for group in state_dict["optimizer"]["param_groups"]}
        if len(steps) != 1 or None in steps:
            return
        step = float(steps.pop())
        for state in self.optimizer.state.values():
            if "step" in state:
                state["step"] = torch.tensor(step, dtype=torch.float32)

    DistributedOptimizer.sharded_state_dict = sharded_state_dict_with_state
    DistributedOptimizer.load_state_dict = load_state_dict_own_steps


# --- 6. torch.cuda.current_stream in DDP grad sync (0.19+) --------------------


class _HostStream:
    """What a CUDA stream answers on the host: every wait is already satisfied."""

    def wait_event(self, event: Any) -> None:
        pass

    def wait_stream(self, stream: Any) -> None:
        pass

    def synchronize(self) -> None:
        pass


def _patch_cuda_current_stream() -> None:
    """Make ``torch.cuda.current_stream()`` a stream whose waits are no-ops.

    Targets (megatron-core 0.19.0+): ``_ParamAndGradBucketGroup.start_grad_sync``
    asks for the current stream unconditionally, every DDP step, to wait on
    CUDA-graph replay events that a CPU run never records.
    Why global: without a CUDA device the original always raises; host
    execution is already ordered, so a stream whose waits return is exact.
    Drop when: the call moves under the CUDA-graph branch.
    """
    stream = _HostStream()
    torch.cuda.current_stream = lambda device=None: stream  # type: ignore[assignment]


# --- the registry -------------------------------------------------------------


@dataclass(frozen=True)
class CpuPatch:
    """One runtime patch and the Megatron-Core releases that need it (PEP 440 specifier)."""

    number: int
    needed_in: str
    apply: Callable[[], None]


CPU_PATCHES = (
    CpuPatch(1, ">=0.16.1", _patch_cuda_device_queries),
    CpuPatch(2, ">=0.16.1", _patch_cuda_device_literals),
    CpuPatch(3, ">=0.16.1", _patch_rng_tracker),
    CpuPatch(4, ">=0.16.1", _patch_cuda_tensor_assumptions),
    CpuPatch(5, ">=0.16.1", _patch_distributed_optimizer_resume),
    CpuPatch(6, ">=0.19.0", _patch_cuda_current_stream),
)
