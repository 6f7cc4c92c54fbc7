# Runtime image for H100 clusters: NVIDIA's PyTorch container brings CUDA, NCCL, torch, Transformer
# Engine (FP8) and apex; megatron-cpt adds megatron-core and the HF/data stack on top.
#   docker build -t megatron-cpt .
#   enroot import -o megatron-cpt.sqsh dockerd://megatron-cpt     # the image pyxis runs
#   megatron-cpt launch slurm RECIPE --container-image "$PWD/megatron-cpt.sqsh" ...   (docs/LAUNCH.md)
#
# Base image and megatron-core: nvcr.io/nvidia/pytorch:25.09-py3 is the "LTS" image that
# megatron-core 0.16.1 is tested in (Megatron-LM at tag core_v0.16.1: docker/.ngc_version.lts; its
# CI image docker/Dockerfile.ci.dev installs on top of the image's own torch and Transformer Engine,
# which its pyproject leaves out for that image). So megatron-core is pinned to 0.16.1, the version
# of the CPU test suite, and the image's torch (2.9.0a0+50eac811a6.nv25.09, from NVIDIA's PyTorch
# release notes and the image itself) and TE (2.7) stay as they are. TE 2.7's fused cross entropy
# gets a loss mask that varies per token wrong (TE PR #2139, fixed in 2.8): fine-tuning recipes
# train with megatron-core's unfused loss under it (model/backend.py, docs/TRAINING.md).
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /opt/megatron-cpt
COPY setup.py README.md ./
COPY megatron_cpt ./megatron_cpt
COPY launch ./launch
COPY conversion ./conversion
COPY examples ./examples

ARG MEGATRON_CORE_VERSION=0.16.1
# The image's CUDA stack, which nothing may replace: its pins (package names, extended regex).
ARG IMAGE_STACK="^(torch|torchvision|torchaudio|triton|pytorch-triton|transformer[-_]engine[-_a-z0-9]*|apex|flash[-_]attn[-_a-z0-9]*|nvidia[-_][-_a-z0-9]*|cuda[-_]python|numpy)(==| @)"
# NGC images pin every package they ship through PIP_CONSTRAINT=/etc/pip/constraint.txt (NVIDIA's
# release notes, from 25.03), and Megatron-LM's own image for 0.16.1 clears it (ENV PIP_CONSTRAINT="").
# What was checked, without Docker (none is available where this file is maintained): the
# requirements of megatron-core 0.16.1's wheel (torch>=2.6.0, numpy, packaging>=24.2), of
# transformers 5 (tokenizers>=0.23.1, safetensors>=0.8.0, huggingface-hub>=2.4.0, regex, ...) and
# of setup.py, read from their metadata; that pip takes an installed pre-release such as the
# image's torch 2.9.0a0 for torch>=2.6 (PEP 440); and that the constraint file's contents for 25.09
# could not be obtained. Image pins older than transformers 5 needs (safetensors, tokenizers, the
# hub client) would make a plain `pip install` fail. So the build checks it here instead: it keeps
# only the image's pins of its CUDA stack, lets the rest resolve, and fails unless every package
# of that stack is the same version after the install as before.
RUN grep -iE "${IMAGE_STACK}" /etc/pip/constraint.txt > /opt/megatron-cpt/image-stack.txt \
    && pip list --format=freeze | grep -iE "${IMAGE_STACK}" > /tmp/stack-before.txt \
    && PIP_CONSTRAINT=/opt/megatron-cpt/image-stack.txt pip install --no-cache-dir \
        "megatron-core==${MEGATRON_CORE_VERSION}" -e . \
    && pip list --format=freeze | grep -iE "${IMAGE_STACK}" > /tmp/stack-after.txt \
    && diff /tmp/stack-before.txt /tmp/stack-after.txt \
    && python -c "import megatron_cpt, megatron.core as m; assert m.__version__ == '${MEGATRON_CORE_VERSION}', m.__version__"

# The job's environment (CUDA_DEVICE_MAX_CONNECTIONS, NCCL_NVLS_ENABLE, ...) comes from the batch
# script that `megatron-cpt launch slurm` writes, passed with --container-env; an image value here
# would win over the job's under pyxis otherwise.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["megatron-cpt"]
