# CPU image that runs the demo; the GPU image on vLLM's OpenAI server image comes with issue 5.
FROM python:3.11-slim
RUN useradd --create-home --uid 1000 kvcomp
WORKDIR /app
COPY --chown=kvcomp:kvcomp . /app
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/* \
    && su kvcomp -c "make install"
USER kvcomp
CMD ["make", "demo"]
