# medlens web service and batch worker: `docker build -t medlens .` (or `podman build`).
#
# Two stages: `build` installs medlens and its serve extra (FastAPI, SQLAlchemy, psycopg,
# zxcvbn, ...) into a virtual environment; `runtime` copies only that environment onto a slim
# Python image and runs as an unprivileged user (uid 10001), never as root.
#
# torch: the default build uses the default package index (PyPI), whose Linux wheels bundle CUDA
# libraries (several GB). For a CPU-only image (~1 GB smaller) build with
#   --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
# (not the default because that index is unreachable from this project's offline CI).
#
# Models are not baked in: mount bundle folders at /models (read-only) and pass --bundle.
# State lives in /data (the workspace) and in PostgreSQL (DATABASE_URL): see compose.yaml.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
ARG TORCH_INDEX_URL=""
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
# torch first, from the CPU index when one is given, so the project install reuses it.
RUN python -m venv /opt/medlens \
    && if [ -n "${TORCH_INDEX_URL}" ]; then \
      /opt/medlens/bin/pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.3" "torchvision>=0.18"; \
    fi
COPY pyproject.toml README.md LICENSE ./
COPY src ./src
RUN /opt/medlens/bin/pip install ".[serve]"

FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="medlens" \
      org.opencontainers.image.description="Decision support for image review: web service and batch worker" \
      org.opencontainers.image.licenses="Apache-2.0"
ENV PATH=/opt/medlens/bin:${PATH} \
    HF_HUB_OFFLINE=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
RUN groupadd --system --gid 10001 medlens \
    && useradd --system --uid 10001 --gid medlens --home-dir /data --shell /usr/sbin/nologin medlens \
    && mkdir -p /data/workspace /models \
    && chown -R medlens:medlens /data
COPY --from=build /opt/medlens /opt/medlens
USER 10001:10001
WORKDIR /data
VOLUME ["/data"]
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s --start-period=180s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/api/v1/health', timeout=4)"]
ENTRYPOINT ["medlens"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000", "--bundle", "/models/bundle", "--workspace", "/data/workspace"]
