# syntax=docker/dockerfile:1
# phantom-token's container image: docs/deploy.md. Build from the repository root:
#   docker build -t phantom-token:0.1.0 .
#   docker build --build-arg EXTRAS=grpc -t phantom-token:0.1.0-grpc .   # with `authz --grpc-listen`
#   docker build --build-arg EXTRAS=grpc,otel ...                         # and OpenTelemetry tracing
# Pin the base image by digest for reproducible builds:
#   docker build --build-arg PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:<digest> .
ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# ---------------------------------------------------------------------------------------------------- builder
# gcc compiles the hot path with mypyc (setup.py); the wheel and every dependency's wheel land in /wheels, then
# one virtualenv is installed from them alone and copied into the runtime image (same base, same paths).
FROM ${PYTHON_IMAGE} AS builder
ARG EXTRAS=""
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1 \
    PYTHONDONTWRITEBYTECODE=1
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends gcc libc6-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY pyproject.toml setup.py README.md ./
COPY src ./src
# With both grpc and otel: xds-protos carries an older copy of opentelemetry.proto, so opentelemetry-proto's own
# modules are written again last (docs/tracing.md, "Install").
RUN python -m pip wheel --wheel-dir /wheels ".${EXTRAS:+[$EXTRAS]}" \
 && python -m venv /opt/phantom-token \
 && /opt/phantom-token/bin/pip install --no-index --find-links /wheels \
      "phantom-token${EXTRAS:+[$EXTRAS]}" \
 && case ",$EXTRAS," in *,otel,*) /opt/phantom-token/bin/pip install --no-index --find-links /wheels \
      --force-reinstall --no-deps opentelemetry-proto ;; esac \
 && version="$(/opt/phantom-token/bin/phantom-token --version)" \
 && echo "$version" && echo "$version" | grep -q 'compiled (mypyc)'
COPY deploy/docker/phantom-token.yml /opt/phantom-token/etc/phantom-token.yml

# ---------------------------------------------------------------------------------------------------- runtime
# No compiler, no build tools: the virtualenv and the default configuration only. Runs as a fixed non-root UID,
# writes nothing (works with a read-only root filesystem).
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="phantom-token" \
      org.opencontainers.image.description="The phantom token pattern for API gateways: swap opaque access tokens for JWTs" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.documentation="docs/deploy.md"
RUN groupadd --system --gid 10001 phantom \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin phantom
COPY --from=builder /opt/phantom-token /opt/phantom-token
COPY --from=builder /opt/phantom-token/etc/phantom-token.yml /etc/phantom-token/phantom-token.yml
# DL3064 takes PHANTOM_TOKEN_CONFIG for a secret ("TOKEN"): it is the path of the configuration file
# hadolint ignore=DL3064
ENV PATH=/opt/phantom-token/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PHANTOM_TOKEN_CONFIG=/etc/phantom-token/phantom-token.yml
USER 10001:10001
WORKDIR /
# 3000: serve/authz; 9901: the admin listener (/healthz, /readyz, /metrics): keep it off the public network
EXPOSE 3000 9901
# The admin listener's /healthz (the default configuration binds it on 9901; change both together). No curl in
# the image: the virtualenv's Python asks.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:9901/healthz', timeout=2).status != 200)"]
# SIGTERM drains in-flight requests (at most 30 s) and exits 0: give `docker stop` more than that (-t 35)
STOPSIGNAL SIGTERM
ENTRYPOINT ["phantom-token"]
CMD ["serve"]
