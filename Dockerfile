# Runtime image for H100 clusters: NVIDIA's PyTorch container brings CUDA, NCCL, Transformer Engine
# (FP8) and apex; megatron-cpt adds megatron-core and the HF/data stack on top.
#   docker build -t megatron-cpt .
#   srun --container-image=megatron-cpt ... megatron-cpt train examples/llama3_8b_cpt_8xh100_fp8.yaml
FROM nvcr.io/nvidia/pytorch:25.09-py3

WORKDIR /opt/megatron-cpt
COPY setup.py README.md ./
COPY megatron_cpt ./megatron_cpt
COPY launch ./launch
COPY conversion ./conversion
COPY examples ./examples
# The container's torch, TE and apex stay. megatron-core is pinned to the version the test suite
# runs with (0.16.1, the newest for Python 3.11 CI), so the image trains with tested code.
ARG MEGATRON_CORE_VERSION=0.16.1
RUN pip install --no-cache-dir "megatron-core==${MEGATRON_CORE_VERSION}" \
    && pip install --no-cache-dir -e . \
    && python -c "import megatron_cpt, megatron.core as m; assert m.__version__ == '${MEGATRON_CORE_VERSION}', m.__version__"

# The job's environment (CUDA_DEVICE_MAX_CONNECTIONS, NCCL_NVLS_ENABLE, ...) comes from the batch
# script that `megatron-cpt launch slurm` writes, passed with --container-env; an image value here
# would win over the job's under pyxis otherwise.
ENV PYTHONUNBUFFERED=1
ENTRYPOINT ["megatron-cpt"]
