"""megatron-cpt: continual pre-training of Llama-3 on megatron-core."""

from megatron_cpt.runtime import deferred_compile

__version__ = "0.1.0"

# Before anything imports megatron-core: its torch.compile decorators import TorchDynamo and
# Inductor (about 2 s per process) although they compile nothing until a kernel's first call.
deferred_compile.install()
