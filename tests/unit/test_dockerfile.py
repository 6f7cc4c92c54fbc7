"""The Dockerfile (no Docker here to build it): megatron-core pinned to the version this suite
runs; the image's own pins (NGC's PIP_CONSTRAINT) narrowed to its CUDA stack, which the build
then checks is unchanged, so that the HF stack may resolve past the image's other pins."""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = (REPO / "Dockerfile").read_text()
# Lines of the kind /etc/pip/constraint.txt holds in NVIDIA's PyTorch images.
IMAGE_CONSTRAINTS = """\
torch==2.9.0a0+50eac811a6.nv25.9
torchvision==0.24.0a0+98f8b375
pytorch-triton==3.4.0+gitc817b9b6
transformer_engine==2.7.0+abcdef0
transformer_engine_cu12==2.7.0
apex==0.1
flash_attn==2.7.4.post1
nvidia-cudnn-frontend==1.14.0
numpy==1.26.4
packaging==23.2
safetensors==0.6.2
tokenizers==0.21.4
transformers==4.56.1
huggingface-hub==0.34.4
tqdm==4.67.1
"""


def _arg(name: str) -> str:
    return re.search(rf'^ARG {name}="?(.*?)"?$', DOCKERFILE, re.MULTILINE).group(1)


def test_megatron_core_is_pinned_to_the_tested_version():
    assert _arg("MEGATRON_CORE_VERSION") == importlib.metadata.version("megatron-core")
    assert '"megatron-core==${MEGATRON_CORE_VERSION}" -e .' in DOCKERFILE  # one resolution
    assert "FROM nvcr.io/nvidia/pytorch:25.09-py3\n" in DOCKERFILE


def test_only_the_images_cuda_stack_stays_pinned(tmp_path):
    constraints = tmp_path / "constraint.txt"
    constraints.write_text(IMAGE_CONSTRAINTS)
    kept = subprocess.run(["grep", "-iE", _arg("IMAGE_STACK"), str(constraints)],
                          capture_output=True, text=True, check=True, timeout=60).stdout.split()
    assert [line.split("==")[0] for line in kept] == [
        "torch", "torchvision", "pytorch-triton", "transformer_engine", "transformer_engine_cu12",
        "apex", "flash_attn", "nvidia-cudnn-frontend", "numpy"]
    # The install runs under the narrowed pins and is checked against the stack it started with.
    assert ('grep -iE "${IMAGE_STACK}" /etc/pip/constraint.txt > /opt/megatron-cpt/image-stack.txt'
            in DOCKERFILE)
    assert "PIP_CONSTRAINT=/opt/megatron-cpt/image-stack.txt pip install" in DOCKERFILE
    assert "diff /tmp/stack-before.txt /tmp/stack-after.txt" in DOCKERFILE
