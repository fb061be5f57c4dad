# convserve images (see deploy/README.md):
#
#   docker build -t convserve:cpu .                                   # service, CPU (default target)
#   docker build -t convserve:gpu --build-arg VARIANT=gpu .           # service, CUDA (onnxruntime-gpu)
#   docker build -t convserve-train --target train .                  # training.train / torchrun, with torch
#
# podman/buildah build the same file (add `--format docker` to keep the HEALTHCHECK). The base
# image is the only image pulled; PYTHON_IMAGE names another one (e.g. built without a registry by
# deploy/debian-python-image.sh). Plain Dockerfile syntax, no `# syntax=` frontend to download.
#
# Every install pins versions through constraints.txt with the same pip command form as the
# Makefile's PIP_INSTALL (`pip install --quiet -c constraints.txt ...`), so `make test` in CI
# resolves exactly what these images install (tests/deploy/test_dockerfile.py checks that).

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE} AS base
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH
# One fixed non-root identity for every image, so Kubernetes' runAsUser and file ownership agree.
RUN groupadd --system --gid 10001 convserve \
    && useradd --system --uid 10001 --gid convserve --home-dir /home/convserve --create-home \
        --shell /usr/sbin/nologin convserve
WORKDIR /src

# ---------------------------------------------------------------------------------------------
# The service's virtual environment with its dependencies only. No torch: the service only needs
# ONNX Runtime. A stage of its own, cached until pyproject.toml or constraints.txt change, and
# copied whole into the image: a change to service/ leaves that layer as it was.
FROM base AS service-deps
# cpu | gpu. gpu adds the CUDA 13 + cuDNN runtime libraries as PyPI wheels (onnxruntime-gpu's
# `cuda` and `cudnn` extras, pinned in constraints.txt); the driver (libcuda) comes from the
# NVIDIA container runtime on the host, so the base image stays the same small Python image.
ARG VARIANT=cpu
COPY pyproject.toml constraints.txt README.md ./
# The dependencies get a layer of their own, cached until pyproject.toml or constraints.txt
# change: with no service/ folder yet, '.[service]' installs them and an empty convserve.
# VARIANT is checked first so a typo fails the build instead of silently building a CPU image.
# cpu keeps the onnxruntime-gpu wheel that CI tests but deletes its CUDA and TensorRT provider
# libraries (285 MB): ORT loads them only for those providers, which cannot run without the
# gpu variant's CUDA wheels anyway; `rm` without -f fails the build if the wheel's layout changes.
RUN case "${VARIANT}" in \
        cpu) gpu_requirements="" \
            unused_libraries="libonnxruntime_providers_cuda.so libonnxruntime_providers_tensorrt.so" ;; \
        gpu) gpu_requirements="onnxruntime-gpu[cuda,cudnn]" unused_libraries="" ;; \
        *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
    && python -m venv /opt/venv \
    && pip install --quiet -c constraints.txt '.[service]' ${gpu_requirements:+"$gpu_requirements"} \
    && capi="$(python -I -c 'import onnxruntime, os; print(os.path.dirname(onnxruntime.__file__))')/capi" \
    && for library in ${unused_libraries}; do rm "${capi}/${library}"; done

# ---------------------------------------------------------------------------------------------
# The package itself (its dependencies are all in place), then set aside in /opt/package: the
# image copies it over the dependencies' venv in a small layer of its own. `python -I`
# (isolated: the working directory is not on sys.path) imports the installed package.
FROM service-deps AS service-build
COPY service/ service/
RUN pip install --quiet --no-deps --force-reinstall . \
    && python -I -c "import service, onnxruntime; print('onnxruntime', onnxruntime.__version__, onnxruntime.get_available_providers())" \
    && site="$(python -I -c 'import sysconfig; print(sysconfig.get_path("purelib"))')" \
    && mkdir /opt/package \
    && cp -a "${site}/service" "${site}"/convserve-*.dist-info /opt/package/

# ---------------------------------------------------------------------------------------------
# Training image: torch + torchvision (their PyPI wheels carry CUDA), for `python -m
# training.train` on one node or `torchrun` across nodes (deploy/k8s/training/).
FROM base AS train
COPY pyproject.toml constraints.txt README.md ./
COPY service/ service/
COPY training/ training/
RUN python -m venv /opt/venv \
    && pip install --quiet -c constraints.txt '.[train]' \
    && python -I -c "import torch, training; print('torch', torch.__version__)"
WORKDIR /workspace
RUN chown convserve:convserve /workspace
USER 10001:10001
# torchrun reads its rendezvous settings from PET_* variables (set by the Kubeflow training
# operator), so `torchrun -m training.train ...` needs no host-specific flags.
CMD ["python", "-m", "training.train", "--help"]

# ---------------------------------------------------------------------------------------------
# Service runtime (default target): the venv, the default model, nothing else.
FROM base AS service
ARG VARIANT=cpu
LABEL org.opencontainers.image.title="convserve" \
      org.opencontainers.image.description="CNN image classification over HTTP (ONNX Runtime, ${VARIANT})" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=service-deps /opt/venv /opt/venv
COPY --from=service-build /opt/package/ /opt/venv/lib/python3.11/site-packages/
# The default model is baked in; mount another repository over /models (or point
# CONVSERVE_MODEL_REPOSITORY elsewhere) to serve other models. Files stay root-owned: the
# service only reads them. No VOLUME: that would copy /models into an anonymous volume per
# container and hide later image updates.
COPY models/ /models/
# pip's CUDA wheels put their libraries under site-packages/nvidia; ONNX Runtime's CUDA provider
# finds them through LD_LIBRARY_PATH (the paths do not exist in the CPU image, which is harmless).
# ORT_DISABLE_TELEMETRY: ONNX Runtime's telemetry client stays off for anything in the image
# (`python -m service` sets it too, service/__init__.py).
ENV CONVSERVE_HOST=0.0.0.0 \
    CONVSERVE_PORT=8000 \
    ORT_DISABLE_TELEMETRY=1 \
    CONVSERVE_MODEL_REPOSITORY=/models \
    LD_LIBRARY_PATH=/opt/venv/lib/python3.11/site-packages/nvidia/cu13/lib:/opt/venv/lib/python3.11/site-packages/nvidia/cudnn/lib
WORKDIR /home/convserve
USER 10001:10001
EXPOSE 8000
# The slim image has no curl: the stdlib client probes liveness on whatever address and port are
# configured (the loopback of the listening family for 0.0.0.0 and ::, else the host itself).
HEALTHCHECK --interval=15s --timeout=3s --start-period=30s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; h = os.environ.get('CONVSERVE_HOST', '0.0.0.0'); h = {'0.0.0.0': '127.0.0.1', '::': '::1'}.get(h, h); h = '[' + h + ']' if ':' in h else h; urllib.request.urlopen('http://' + h + ':' + os.environ.get('CONVSERVE_PORT', '8000') + '/health/live', timeout=2)"]
STOPSIGNAL SIGTERM
CMD ["python", "-m", "service"]
