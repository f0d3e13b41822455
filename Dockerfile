# syntax=docker/dockerfile:1
# One image for every role: `fluxgate api | worker | beat | migrate | simulate-upstream`.

FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/fluxgate
# Dependencies first, so code changes do not reinstall them.
COPY pyproject.toml constraints.txt README.md ./
COPY app ./app
COPY worker ./worker
COPY migrations ./migrations
# Optional extras: `docker build --build-arg EXTRAS=otel .` for tracing.
ARG EXTRAS=""
RUN /opt/fluxgate/bin/pip install -c constraints.txt ".${EXTRAS:+[$EXTRAS]}"

FROM python:3.11-slim AS runtime
# Logs as one JSON object a line, for whatever collects the containers' output.
ENV PATH=/opt/fluxgate/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    FLUXGATE_LOG_FORMAT=json
RUN useradd --system --uid 10001 --create-home --home-dir /home/fluxgate fluxgate
COPY --from=build /opt/fluxgate /opt/fluxgate
USER fluxgate
WORKDIR /home/fluxgate
EXPOSE 8000
# The API's liveness; compose turns it off for the roles that serve no HTTP.
HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
    CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8000/healthz', timeout=2).status != 200)"]
ENTRYPOINT ["fluxgate"]
CMD ["api", "--host", "0.0.0.0", "--port", "8000"]
