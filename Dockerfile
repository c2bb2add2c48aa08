# sweeper GPU worker: PyTorch with CUDA from the official image, sweeper and its dependencies on top.
#   docker build -t sweeper-worker .   (docker compose builds it as the `worker` service)
FROM pytorch/pytorch:2.9.1-cuda12.8-cudnn9-runtime

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONUNBUFFERED=1

WORKDIR /app

# Pin the image's CUDA builds of torch and torchvision so that resolving sweeper's dependencies
# never swaps them for other wheels from PyPI.
RUN python -c "from importlib.metadata import version; print('\n'.join(f'{p}=={version(p)}' for p in ('torch', 'torchvision')))" \
    > /etc/pip-constraints.txt
ENV PIP_CONSTRAINT=/etc/pip-constraints.txt

# Dependencies first, in their own layer, so that editing the code does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
    > /tmp/requirements.txt \
    && pip install -r /tmp/requirements.txt

COPY . .
RUN pip install . && python -c "import sweeper"

# An unprivileged user who may write in /app (reports/) and /cache, the mount point of the
# frozen-feature, Hugging Face and torch caches.
RUN useradd --create-home --uid 1000 sweeper && mkdir -p /cache && chown sweeper /cache /app
USER sweeper

CMD ["python", "-m", "sweeper", "worker", "studies/vader-minilm.toml"]
