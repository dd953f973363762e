# splade-es serve on CPU: the query-translation proxy in front of a cluster.
#   docker build -f docker/serve.Dockerfile -t splade-es-serve .
# Run it beside an engine with docker/serve.yml (see there), or on its own:
#   docker run -p 127.0.0.1:9280:9280 -v /models/splade-v3:/model:ro \
#     -e SPLADE_ES_URL=https://cluster:9200 -e SPLADE_ES_API_KEY=... splade-es-serve
FROM python:3.12-slim

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH \
    SPLADE_ES_MODEL=/model SPLADE_ES_LISTEN=0.0.0.0:9280
RUN python -m venv /opt/venv \
 && pip install torch --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md /src/
COPY splade_es /src/splade_es
RUN pip install "/src[serve]"
USER 1000:1000
EXPOSE 9280
HEALTHCHECK --interval=10s --retries=30 CMD \
  python -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:9280/_splade/health')"
ENTRYPOINT ["splade-es", "serve"]
