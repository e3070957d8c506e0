# petseg as a Grand-Challenge algorithm image (autoPET contract). Built by build.sh; two targets:
#   exec (the last stage, so the default): `process.py` segments the case in /input into /output and exits.
#   invoke: the same runtime serving app.py on port 4743, LABEL org.grand-challenge.api-method="invoke".
# Only petseg/, process.py, model/ (and app.py for invoke) are copied in; .dockerignore keeps the rest out.
# The base image's CUDA build of torch is reused: the virtual environment sees the base's site-packages,
# requirements.txt holds no torch, the install is constrained to the torch already present, and the build
# fails if anything (monai's dependencies included) put a torch or CUDA wheel into the environment.

FROM pytorch/pytorch:2.13.0-cuda12.6-cudnn9-runtime AS runtime

ARG PETSEG_VERSION=unknown
LABEL org.opencontainers.image.title="petseg" \
      org.opencontainers.image.description="Whole-body PET/CT lesion segmentation (autoPET), Grand-Challenge algorithm" \
      org.opencontainers.image.version="${PETSEG_VERSION}"

ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_INPUT=1

SHELL ["/bin/bash", "-o", "pipefail", "-c"]

# The algorithm runs as the non-root `user` (uid/gid 1001; numeric in USER so that no host has to resolve
# the name). /output belongs to it so that a fresh docker volume mounted there (a new volume takes the
# mount point's owner) is writable; /input is mounted read-only.
RUN groupadd --gid 1001 user \
    && useradd --uid 1001 --gid 1001 --create-home --no-log-init --shell /bin/bash user \
    && mkdir -p /opt/app /input /output \
    && chown 1001:1001 /output

COPY requirements.txt /tmp/petseg-requirements.txt
RUN python -m venv --system-site-packages /opt/venv \
    && base_torch="$(python -c 'from importlib.metadata import version; print(version("torch"))')" \
    && echo "torch==${base_torch}" > /tmp/torch-constraint.txt \
    && /opt/venv/bin/python -m pip install --no-cache-dir \
        --requirement /tmp/petseg-requirements.txt --constraint /tmp/torch-constraint.txt \
    && if /opt/venv/bin/python -m pip list --local --format=freeze | grep -iE '^(torch|triton|nvidia-)'; then \
        echo "error: the requirements installed a second torch/CUDA stack (listed above)" >&2; exit 1; fi \
    && venv_torch="$(/opt/venv/bin/python -c 'from importlib.metadata import version; print(version("torch"))')" \
    && if [ "${venv_torch}" != "${base_torch}" ]; then \
        echo "error: torch ${venv_torch} in the environment, ${base_torch} in the base image" >&2; exit 1; fi \
    && rm /tmp/petseg-requirements.txt /tmp/torch-constraint.txt

ENV VIRTUAL_ENV=/opt/venv \
    PATH="/opt/venv/bin:${PATH}"

# torch.compile's caches (`process.py --compile`, off by default) live in the image, not in /tmp: what is
# compiled into them while the image is built or committed is reused by every job, and a job's additions
# stay inside its container. The folder belongs to the algorithm's user so that the cache can be written.
ENV TORCHINDUCTOR_CACHE_DIR=/opt/app/compile-cache/inductor \
    TRITON_CACHE_DIR=/opt/app/compile-cache/triton
RUN mkdir -p /opt/app/compile-cache/inductor /opt/app/compile-cache/triton \
    && chown -R 1001:1001 /opt/app/compile-cache

WORKDIR /opt/app
COPY petseg/ /opt/app/petseg/
COPY process.py /opt/app/process.py
COPY model/ /opt/app/model/
# Fail the build, not the first job, if the runtime stack does not import, or if evaluation or phantom code
# got into the image (.dockerignore keeps them out).
RUN python -c "import torch, monai, SimpleITK, petseg.inference.pipeline; print('torch', torch.__version__, 'monai', monai.__version__)" \
    && python /opt/app/process.py --help > /dev/null \
    && test ! -e /opt/app/petseg/evaluation && test ! -e /opt/app/petseg/synthetic

USER 1001:1001


FROM runtime AS invoke
COPY app.py /opt/app/app.py
# The server's dependencies (FastAPI, uvicorn) come from requirements.txt; fail the build if they do not import.
RUN python /opt/app/app.py --help > /dev/null
LABEL org.grand-challenge.api-method="invoke"
EXPOSE 4743
ENTRYPOINT ["/opt/venv/bin/python", "/opt/app/app.py"]
CMD ["--input", "/input", "--output", "/output", "--port", "4743"]


FROM runtime AS exec
ENTRYPOINT ["/opt/venv/bin/python", "/opt/app/process.py"]
