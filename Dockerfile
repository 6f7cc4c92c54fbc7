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
# The container's torch, TE and apex stay; megatron-core >= 0.16 on its Python 3.12.
RUN pip install --no-cache-dir -e . && python -c "import megatron_cpt, megatron.core"

ENV CUDA_DEVICE_MAX_CONNECTIONS=1 \
    NCCL_NVLS_ENABLE=0 \
    PYTHONUNBUFFERED=1
ENTRYPOINT ["megatron-cpt"]
