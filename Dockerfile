# syntax=docker/dockerfile:1
# One image for every role: `fluxgate api | worker | beat | migrate | simulate-upstream`.
# The base is pinned by version; to pin its bytes too, append the digest that
# `docker buildx imagetools inspect python:3.11.14-slim-bookworm` prints (`...@sha256:...`).

FROM python:3.11.14-slim-bookworm AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/fluxgate
# Optional extras: `docker build --build-arg EXTRAS=otel .` for tracing.
ARG EXTRAS=""
# The dependencies first, from pyproject.toml and constraints.txt alone: a change to the code
# reuses this layer.
COPY pyproject.toml constraints.txt scripts/image_requirements.py ./
RUN python image_requirements.py "$EXTRAS" > requirements.txt \
    && /opt/fluxgate/bin/pip install -c constraints.txt -r requirements.txt
# Then the package itself, nothing more; `pip check` fails the build if a dependency is missing.
COPY README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
RUN /opt/fluxgate/bin/pip install --no-deps . \
    && /opt/fluxgate/bin/pip check

FROM python:3.11.14-slim-bookworm AS runtime
# tini runs as PID 1: it passes SIGTERM on to fluxgate (which then drains) and reaps orphans.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*
# Logs as one JSON object a line, for whatever collects the containers' output.
ENV PATH=/opt/fluxgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLUXGATE_LOG_FORMAT=json
RUN useradd --system --uid 10001 --create-home --home-dir /home/fluxgate fluxgate
COPY --from=build /opt/fluxgate /opt/fluxgate
# By number, so Kubernetes' runAsNonRoot can see it is not root.
USER 10001
WORKDIR /home/fluxgate
EXPOSE 8000
# The API's liveness; compose gives the other roles checks of their own (a heartbeat file).
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["tini", "--", "fluxgate"]
# Two API processes: a container cannot see its CPU quota, so the per-core default would count
# the host's cores (and open a database pool for each).
CMD ["api", "--host", "0.0.0.0", "--port", "8000", "--workers", "2"]
