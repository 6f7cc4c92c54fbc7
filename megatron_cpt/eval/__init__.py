"""Benchmark accuracy of a model: multiple-choice tasks scored by log-likelihood on megatron-core
checkpoints (``megatron-cpt eval``) and during training (a recipe's ``eval`` section); docs/EVAL.md."""
