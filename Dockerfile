# CPU image that runs the demo; the GPU image on vLLM's OpenAI server image comes with issue 5.
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 kvcomp
WORKDIR /app
# torch 2.13.0+cpu comes from the PyTorch CPU wheel index.
ENV PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu
COPY --chown=kvcomp:kvcomp . /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/* \
    && su kvcomp -c "make install"
USER kvcomp
CMD ["make", "demo"]
