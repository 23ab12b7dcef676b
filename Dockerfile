# megatron_plm on an NGC PyTorch container: CUDA torch, Transformer Engine and apex come
# with the base image and are kept (NGC's PIP_CONSTRAINT pins them; --no-build-isolation
# builds our extensions against the container's torch).
#
#   docker build -t megatron-plm .
#   docker run --gpus all --ipc=host --rm megatron-plm megatron-plm env
ARG BASE_IMAGE=nvcr.io/nvidia/pytorch:25.04-py3
FROM ${BASE_IMAGE}

WORKDIR /workspace/megatron_plm
COPY . .
RUN python -m pip install --no-build-isolation -e ".[test]" \
 && python -c "import torch, megatron.core, megatron_plm; assert torch.cuda is not None; print(torch.__version__, megatron.core.__version__)"

CMD ["megatron-plm", "env"]
