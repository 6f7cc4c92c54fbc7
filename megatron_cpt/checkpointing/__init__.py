"""megatron-core distributed checkpoints on disk: atomic writes, metadata, model-weight loading.

Shared by training (resume) and conversion (initial weights); imports no training code.
"""
