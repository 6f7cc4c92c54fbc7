"""megatron-cpt: continual pre-training of Llama-3 on megatron-core (TP x PP x DP)."""

import os
import runpy

from setuptools import find_packages, setup

# The tested megatron-core line, on every Python; also checked when a command starts.
MCORE = runpy.run_path(os.path.join(os.path.dirname(os.path.abspath(__file__)), "megatron_cpt",
                                     "runtime", "mcore_version.py"))["MEGATRON_CORE_REQUIREMENT"]

setup(
    name="megatron-cpt",
    version="0.1.0",
    description="Continual pre-training of Llama-3 on megatron-core, with a verified ALMR data mix",
    python_requires=">=3.11",
    packages=find_packages(include=["megatron_cpt", "megatron_cpt.*"])
    + ["megatron_cpt.launch", "megatron_cpt.conversion"]
    + [f"megatron_cpt.conversion.{p}" for p in find_packages("conversion")],
    # The top-level launch/ and conversion/ folders install inside megatron_cpt, never bare.
    package_dir={"megatron_cpt.launch": "launch", "megatron_cpt.conversion": "conversion"},
    package_data={"megatron_cpt.launch": ["templates/*"], "megatron_cpt.profile": ["templates/*"],
                  "megatron_cpt.serve": ["chat.html"]},
    install_requires=[
        MCORE,
        # torch is pinned by the Makefile/CI (the local CPU build); any 2.x with megatron-core works.
        "torch>=2.6",
        "numpy",
        "psutil",  # megatron-core dist_checkpointing writers need it
        "pyyaml",
        # 5.x: data train-tokenizer converts sentencepiece with its TokenizersBackend (ids checked).
        "transformers>=5.0",
        "safetensors",
        "tokenizers",
        "tiktoken",
        "sentencepiece",
        "tensorboard",
        "tqdm",
        "matplotlib",
        "scipy",  # shape-preserving interpolation of the ALMR study's loss curves
        # megatron-cpt serve: the OpenAI-compatible HTTP API
        "fastapi",
        "uvicorn",
    ],
    # llama-models: Meta's reference Llama-3 ChatFormat and its tokenizer.model, which the chat
    # data tests compare against. lm-evaluation-harness's `hf` model is the reference that
    # `megatron-cpt eval` is checked against (tests/distributed/test_eval.py); [hf] adds accelerate
    # and peft, both satisfied by the torch already installed (the Makefile installs the CPU build
    # first). pytest-xdist runs the suite on 2 workers (tests/conftest.py keeps each module, and all
    # the Slurm tests, on one worker). The openai client, httpx (FastAPI's test client), playwright
    # (driving Debian's chromium) and lm-eval's [api] models (local-chat-completions) check
    # megatron-cpt serve.
    extras_require={"test": ["pytest", "pytest-timeout", "pytest-xdist==3.8.0", "llama-models==0.3.0",
                             "lm-eval[hf,api]==0.4.13", "openai", "httpx", "playwright"]},
    entry_points={"console_scripts": ["megatron-cpt=megatron_cpt.cli:main"]},
)
