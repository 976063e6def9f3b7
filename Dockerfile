# syntax=docker/dockerfile:1
# eca-serve image. Two variants, chosen with a build argument (docs/deploy.md):
#   docker build -t eca-serve:gpu .                        # CUDA 13 runtime + onnxruntime-gpu (default)
#   docker build -t eca-serve:cpu --build-arg VARIANT=cpu .
# The image serves with ONNX Runtime and holds no torch (the base install of pyproject.toml). The
# TorchScript and eager backends need the torch extra, opt-in:
#   docker build -t eca-serve:gpu-torch --build-arg TORCH_BACKENDS=1 .
# torch from the package registry is the CUDA 13.x build (torch.version.cuda == "13.2"), so the GPU base
# image is CUDA 13.2 with cuDNN; the host needs an NVIDIA driver for CUDA 13 (>= 580) and the
# NVIDIA Container Toolkit. With TORCH_BACKENDS=1 the CPU variant gets the registry's torch too: PyPI
# has no CPU-only Linux wheel of torch/torchvision, and that build runs on CPU.
# Engines carried: ONNX Runtime always (CPU wheel, or onnxruntime-gpu in the GPU variant). OpenVINO is
# opt-in for the CPU variant, for x86 hosts with AVX-512/AMX where it runs BF16/INT8 on the matrix units
# (README "Engines"; +180 MiB installed, no GPU use here):
#   docker build -t eca-serve:cpu-openvino --build-arg VARIANT=cpu --build-arg OPENVINO=1 .
ARG VARIANT=gpu
ARG TORCH_BACKENDS=0
ARG OPENVINO=0
ARG CUDA_IMAGE=nvidia/cuda:13.2.1-cudnn-runtime-ubuntu24.04
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---- interpreter and per-variant defaults -------------------------------------------------------
FROM ${CUDA_IMAGE} AS python-gpu
# Ubuntu 24.04's python3 is 3.12; pip runs inside a venv (the system python is externally managed).
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV ORT_PACKAGE=onnxruntime-gpu \
    ECA_SERVE_DEVICE=cuda

FROM ${PYTHON_IMAGE} AS python-cpu
ENV ORT_PACKAGE=onnxruntime \
    ECA_SERVE_DEVICE=cpu

# A build stage of this file, not an image: nothing to tag.
# hadolint ignore=DL3006
FROM python-${VARIANT} AS python
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH

# ---- builder: dependencies first (cached while pyproject.toml is unchanged), then the code -------
FROM python AS builder
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN python3 -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md ./
ARG TORCH_BACKENDS
ARG OPENVINO
# An empty package stands in for the code, so this layer depends on pyproject.toml alone. Remove it
# and setuptools' build/ afterwards: the stub is newer than the real files and would be kept.
RUN mkdir eca_serve && touch eca_serve/__init__.py \
    && extras="" \
    && if [ "$TORCH_BACKENDS" = 1 ]; then extras="torch"; fi \
    && if [ "$OPENVINO" = 1 ]; then extras="${extras:+$extras,}openvino"; fi \
    && if [ -n "$extras" ]; then pip install "./[$extras]"; else pip install .; fi \
    && pip uninstall -y eca-serve \
    && rm -rf eca_serve build eca_serve.egg-info
# GPU variant: the same ONNX Runtime release with the CUDA execution provider (it uses the base
# image's CUDA and cuDNN libraries). Both wheels ship the `onnxruntime` module, so swap, never mix.
RUN if [ "$ORT_PACKAGE" != onnxruntime ]; then \
        version="$(pip show onnxruntime | sed -n 's/^Version: //p')" \
        && pip uninstall -y onnxruntime \
        && pip install "${ORT_PACKAGE}==${version}"; \
    fi
COPY eca_serve ./eca_serve
RUN pip install --no-deps . \
    && python -c "import eca_serve; print('eca-serve', eca_serve.__version__)" \
    && eca-serve serve --help > /dev/null

# ---- runtime -------------------------------------------------------------------------------------
FROM python AS runtime
RUN groupadd --system --gid 10001 eca \
    && useradd --system --uid 10001 --gid eca --home-dir /opt/eca-serve --no-create-home --shell /usr/sbin/nologin eca
COPY --from=builder /opt/venv /opt/venv
WORKDIR /opt/eca-serve
# The shipped model repository, read-only for the server user. To serve your own, mount a folder of
# <name>/<version>/config.json entries over it (docker run -v "$PWD/models:/opt/eca-serve/models:ro")
# or point ECA_SERVE_MODEL_REPOSITORY elsewhere (KServe: /mnt/models).
COPY models ./models
ENV ECA_SERVE_MODEL_REPOSITORY=/opt/eca-serve/models \
    ECA_SERVE_HOST=0.0.0.0 \
    ECA_SERVE_PORT=8000 \
    ECA_SERVE_GRPC_PORT=8001 \
    ECA_SERVE_GRACE_PERIOD_S=30
USER 10001:10001
# HTTP, then the Open Inference Protocol over gRPC (8001 as Triton; grpc.health.v1 there too).
EXPOSE 8000 8001
# SIGTERM drains: readiness 503 at once, in-flight requests finish within ECA_SERVE_GRACE_PERIOD_S,
# exit 0. Give the container at least that long to stop (docker stop -t 45, stop_grace_period: 45s).
STOPSIGNAL SIGTERM
# Models load and warm up before readiness turns 200; urlopen raises (exit 1) on 503.
HEALTHCHECK --interval=10s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/v2/health/ready' % os.environ.get('ECA_SERVE_PORT', '8000'), timeout=4)"]
CMD ["eca-serve", "serve"]
