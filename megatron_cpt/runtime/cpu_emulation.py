"""Run megatron-core on the CPU (gloo) when CUDA is absent.

megatron-core 0.16 hard-codes CUDA in about a hundred places. The ones on the dense-GPT
training, checkpointing and optimizer paths are of four kinds, and each is redirected here:

1. Tensor factories with ``device="cuda"`` (token counters in ``pipeline_parallel/schedules.py``,
   the causal mask in ``transformer/utils.py``, flags in ``optimizer/``, ``clip_grads.py``,
   ``distributed/param_and_grad_buffer.py``, ``dist_checkpointing/``). Every ``megatron.*`` module
   sees, as its global ``torch``, a proxy whose factories map a CUDA device to the CPU.
2. ``torch.cuda.current_device()`` used as a device (``p2p_communication.py``,
   ``dot_product_attention.py``): it returns ``torch.device("cpu")``.
3. The CUDA RNG (``tensor_parallel/random.py``): ``torch.cuda.{get,set}_rng_state``,
   ``manual_seed`` and the private ``_get/_set_cuda_rng_state`` helpers use the CPU generator,
   so the RNG tracker forks and restores the CPU state instead.
4. Type strings: ``clip_grads.py`` and the optimizers accept a gradient only if
   ``tensor.type()`` is ``"torch.cuda.FloatTensor"`` (or Half/BFloat16). ``Tensor.type()`` with no
   argument reports a CPU tensor under the ``torch.cuda.`` name.

Also: ``torch.cuda.synchronize`` and ``Tensor.cuda()`` become no-ops, ``torch.cuda.current_stream()``
is a stream whose waits are no-ops (CPU ops run in order; megatron-core 0.19 waits on it in every
gradient sync), and ``torch.autocast("cuda")`` becomes CPU autocast.

``activate()`` is called once by the runtime before megatron-core is imported and only when
``torch.cuda.is_available()`` is false; on a CUDA machine it refuses, so nothing here can alter a
GPU run. Nothing in this module is needed by the model code itself.
"""

from __future__ import annotations

import importlib.abc
import sys
import types

import torch

from megatron_cpt.runtime.import_hooks import PatchAfterLoad

_CPU = torch.device("cpu")
_FACTORIES = (
    "arange", "empty", "empty_like", "empty_strided", "full", "full_like", "ones", "ones_like",
    "rand", "rand_like", "randint", "randn", "randn_like", "tensor", "zeros", "zeros_like",
)
_active = False


def _to_cpu_device(device):
    if device is None:
        return None
    if isinstance(device, int):
        return _CPU
    if isinstance(device, str) and device.startswith("cuda"):
        return _CPU
    if isinstance(device, torch.device) and device.type == "cuda":
        return _CPU
    return device


def _cpu_factory(fn):
    def factory(*args, **kwargs):
        if "device" in kwargs:
            kwargs["device"] = _to_cpu_device(kwargs["device"])
        return fn(*args, **kwargs)

    factory.__name__ = fn.__name__
    return factory


def _cpu_autocast(device_type, *args, **kwargs):
    if device_type == "cuda":
        device_type = "cpu"
    return torch.autocast(device_type, *args, **kwargs)


class _CpuStream:
    """``torch.cuda.current_stream()`` on the CPU, where work runs in program order."""

    def wait_event(self, event) -> None:
        pass

    def wait_stream(self, stream) -> None:
        pass

    def synchronize(self) -> None:
        pass

    def query(self) -> bool:
        return True


_CPU_STREAM = _CpuStream()


class _CpuTorch(types.ModuleType):
    """What megatron-core modules see as ``torch``: the real module with CPU tensor factories."""

    def __getattr__(self, name):
        return getattr(torch, name)


def _make_cpu_torch() -> types.ModuleType:
    proxy = _CpuTorch("torch")
    for name in _FACTORIES:
        setattr(proxy, name, _cpu_factory(getattr(torch, name)))
    proxy.autocast = _cpu_autocast
    return proxy


_CPU_TORCH = None


def _retarget_module(module: types.ModuleType) -> None:
    if getattr(module, "torch", None) is torch:
        module.torch = _CPU_TORCH


class _RetargetOnImport(importlib.abc.MetaPathFinder):
    """Gives every megatron module imported later the CPU ``torch`` proxy as well."""

    def find_spec(self, fullname, path, target=None):
        if not fullname.startswith("megatron."):
            return None
        for finder in sys.meta_path:
            if finder is self:
                continue
            spec = finder.find_spec(fullname, path, target) if hasattr(finder, "find_spec") else None
            if spec is not None and spec.loader is not None:
                spec.loader = PatchAfterLoad(spec.loader, _retarget_module)
                return spec
        return None


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.synchronize = lambda *a, **k: None
    cuda.current_stream = lambda *a, **k: _CPU_STREAM
    cuda.get_rng_state = lambda *a, **k: torch.get_rng_state()
    cuda.set_rng_state = lambda state, *a, **k: torch.set_rng_state(state)
    # torch.manual_seed itself calls torch.cuda.manual_seed_all: seed the CPU generator directly.
    cuda.manual_seed = lambda seed: torch.default_generator.manual_seed(int(seed))
    cuda.manual_seed_all = lambda seed: None
    cuda.random.get_rng_state = cuda.get_rng_state
    cuda.random.set_rng_state = cuda.set_rng_state
    torch.Tensor.cuda = lambda self, *a, **k: self

    real_type = torch.Tensor.type

    def type_as_if_cuda(self, dtype=None, non_blocking=False, **kwargs):
        if dtype is None and not kwargs and self.device.type == "cpu":
            return real_type(self).replace("torch.", "torch.cuda.", 1)
        return real_type(self, dtype, non_blocking, **kwargs)

    torch.Tensor.type = type_as_if_cuda


def _patch_megatron_helpers() -> None:
    from megatron.core.tensor_parallel import random as mcore_random
    from megatron.core.transformer import utils as mcore_transformer_utils

    mcore_random._get_cuda_rng_state = lambda *a, **k: torch.get_rng_state()
    mcore_random._set_cuda_rng_state = lambda state, *a, **k: torch.set_rng_state(state)

    def causal_mask(sq: int, skv: int | None = None):
        skv = sq if skv is None else skv
        return torch.triu(torch.ones(sq, skv, dtype=torch.bool), diagonal=1 + skv - sq)

    original = mcore_transformer_utils.get_default_causal_mask
    cache = getattr(original, "cache_clear", None)
    if cache is not None:
        cache()
    mcore_transformer_utils.get_default_causal_mask = causal_mask
    for module in list(sys.modules.values()):
        if getattr(module, "get_default_causal_mask", None) is original:
            module.get_default_causal_mask = causal_mask


def activate() -> None:
    """Redirect megatron-core's CUDA calls to the CPU. Idempotent; refuses on a CUDA machine."""
    global _active, _CPU_TORCH
    if _active:
        return
    if torch.cuda.is_available():
        raise RuntimeError("CPU emulation of megatron-core must not be activated when CUDA is present")
    _CPU_TORCH = _make_cpu_torch()
    _patch_torch_cuda()
    sys.meta_path.insert(0, _RetargetOnImport())
    for name, module in list(sys.modules.items()):
        if name.startswith("megatron.") and module is not None:
            _retarget_module(module)
    _patch_megatron_helpers()
    _active = True
