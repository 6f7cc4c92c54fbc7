"""Two gaps in megatron-core 0.16's optimizer checkpointing when neither Transformer Engine nor
apex is installed (the optimizer is then ``torch.optim.Adam``), on CPU and GPU alike.

1. ``torch.optim.Adam`` creates its state at the first step, but ``DistributedOptimizer.state_dict``
   (called to build the sharded state dict a checkpoint is loaded into) reads a ``step`` from every
   state entry, and megatron-core's ``init_state_fn`` creates ``exp_avg``/``exp_avg_sq`` only.
   ``materialize_adam_state`` fills in zeros and step 0; the load overwrites all of it.
2. Loading, ``DistributedOptimizer`` restores ``step`` through the param groups as ONE tensor
   shared by every parameter's state; torch's Adam then increments it in place once per
   parameter, so the bias correction of the first step after a resume is wrong. It then copies
   every per-parameter key of the checkpoint's format over the state: ``fully_reshardable`` has
   no ``step`` (a KeyError), and ``dp_reshardable`` carries the step the optimizer had before the
   load (the 0 of point 1), which would overwrite the restored one. ``patch_adam_state_loading``
   copies the restored step instead in both, and gives each parameter its own step tensor after
   the load.
Both act only on ``torch.optim.Adam`` instances, so with TE's or apex's fused Adam nothing changes.
"""

from __future__ import annotations

import types

import torch


def _inner_optimizers(optimizer):
    for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
        yield opt


def materialize_adam_state(optimizer) -> None:
    for opt in _inner_optimizers(optimizer):
        inner = getattr(opt, "optimizer", None)
        if not isinstance(inner, torch.optim.Adam):
            continue
        for group in inner.param_groups:
            for param in group["params"]:
                state = inner.state[param]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state.setdefault("exp_avg", torch.zeros_like(param.data))
                    state.setdefault("exp_avg_sq", torch.zeros_like(param.data))


def _unshare_steps(adam: torch.optim.Adam) -> None:
    for state in adam.state.values():
        if "step" in state:
            state["step"] = state["step"].clone()


def patch_adam_state_loading(optimizer) -> None:
    from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer

    for opt in _inner_optimizers(optimizer):
        if not isinstance(opt, DistributedOptimizer) or not isinstance(opt.optimizer, torch.optim.Adam):
            continue
        original = opt._set_main_param_and_optimizer_states

        def set_states(self, model_param, tensors, _original=original):
            group_index, group_order = self.model_param_group_index_map[model_param]
            main_param = self.optimizer.param_groups[group_index]["params"][group_order]
            step = self.optimizer.state[main_param].get("step")  # restored from the param groups
            if step is not None:
                tensors = {**tensors, "step": step.clone()}
            return _original(model_param, tensors)

        opt._set_main_param_and_optimizer_states = types.MethodType(set_states, opt)
        original_load = opt.load_state_dict

        def load_state_dict(self, state_dict, _original=original_load):
            _original(state_dict)
            _unshare_steps(self.optimizer)

        opt.load_state_dict = types.MethodType(load_state_dict, opt)
