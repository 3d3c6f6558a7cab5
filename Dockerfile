# syntax=docker/dockerfile:1
# ehc container image: `docker build -t endpoint-health-checker:0.1.0 .`
#
# Stage 1 builds wheels for ehc and every dependency (all of them ship manylinux wheels, so no
# compiler is needed even here). Stage 2 installs them into a clean slim image from a bind mount,
# so neither the wheels nor pip's cache end up in a layer.

ARG PYTHON_VERSION=3.11

FROM python:${PYTHON_VERSION}-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY ehc ./ehc
RUN python -m pip wheel --no-cache-dir --disable-pip-version-check --wheel-dir /wheels .

FROM python:${PYTHON_VERSION}-slim
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="endpoint-health-checker" \
      org.opencontainers.image.description="ehc: actively probes opted-in pods and flips their readiness within seconds" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN --mount=type=bind,from=build,source=/wheels,target=/wheels \
    python -m pip install --no-cache-dir --no-index --find-links=/wheels ehc \
    && python -m pip uninstall --yes pip setuptools wheel \
    && groupadd --system --gid 65532 ehc \
    && useradd --system --uid 65532 --gid 65532 --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ehc
# Numeric, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
USER 65532:65532
EXPOSE 9090
# No HEALTHCHECK: Kubernetes probes /healthz and /readyz on the metrics port.
ENTRYPOINT ["ehc", "run"]
