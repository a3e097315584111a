# The maxllm_gate gateway: `docker build -t maxllm_gate .`, then see docker-compose.yml.
# BASE_IMAGE: any Debian-like image with Python >= 3.10 and pip on PATH, e.g. a local one
# where no registry is reachable (scripts/docker_check.sh makes one with debootstrap).
ARG BASE_IMAGE=python:3.11-slim
FROM ${BASE_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /app
COPY pyproject.toml README.md constraints.txt ./
COPY src ./src
RUN pip install -c constraints.txt '.[server,redis]' \
    && useradd --system --uid 10001 --no-create-home gate

USER gate
ENV HOST=0.0.0.0 \
    PORT=8000
EXPOSE 8000

# Liveness; /ready also says whether the scheduler runs and a key is usable.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s \
    CMD python -c "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health' % os.environ.get('PORT', '8000'), timeout=2)"

# SIGTERM drains the requests in flight (up to SHUTDOWN_TIMEOUT seconds) before exiting.
STOPSIGNAL SIGTERM
CMD ["maxllm_gate-server"]
