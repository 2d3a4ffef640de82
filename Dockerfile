# The kiln operator image: `kiln run` (Kopf) as a non-root user, nothing else.
# Build from the repository root:
#   docker build -t ghcr.io/kiln-dev/kiln:0.1.0 .
# The chart (charts/kiln) runs it with `run --liveness=http://0.0.0.0:8080/healthz`;
# /metrics is on 8081 (KILN_METRICS_PORT).
ARG PYTHON_IMAGE=python:3.11-slim

# --- build: kiln's wheel, then a virtualenv with it and its dependencies -----------------------
FROM ${PYTHON_IMAGE} AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
RUN python -m pip wheel --no-cache-dir --no-deps --wheel-dir /dist . \
    && python -m venv /opt/kiln \
    && /opt/kiln/bin/python -m pip install --no-cache-dir /dist/kiln-*.whl \
    && /opt/kiln/bin/python -m pip uninstall --yes --quiet pip setuptools

# --- runtime: the virtualenv on the same Python, a user without a shell --------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/kiln/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
RUN groupadd --system --gid 10001 kiln \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /tmp \
       --shell /usr/sbin/nologin kiln
COPY --from=build /opt/kiln /opt/kiln
USER 10001:10001
EXPOSE 8080 8081
ENTRYPOINT ["kiln"]
CMD ["run"]
