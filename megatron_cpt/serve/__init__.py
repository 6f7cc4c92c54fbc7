"""megatron-cpt serve: generation on the megatron-core model behind an OpenAI-compatible API (docs/SERVE.md)."""
