# GPU ingestion worker: CUDA runtime + PyTorch CUDA build + splade-es.
#   docker build -f docker/gpu-worker.Dockerfile -t splade-es-gpu .
#   docker run --gpus all -e SPLADE_ES_URL=... -e SPLADE_ES_API_KEY=... \
#     -v /data:/data splade-es-gpu encode --model naver/splade-v3 --input /data/docs.jsonl --output /data/out.jsonl
FROM nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04

ENV PIP_NO_CACHE_DIR=1 PYTHONUNBUFFERED=1 VIRTUAL_ENV=/opt/venv PATH=/opt/venv/bin:$PATH
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/* \
 && python3 -m venv /opt/venv
# The CUDA build of torch first, so the package's plain `torch` requirement is already met.
RUN pip install torch --index-url https://download.pytorch.org/whl/cu128
COPY pyproject.toml README.md /src/
COPY splade_es /src/splade_es
# The serve extra too, so the same image runs `splade-es serve` (docker/serve-gpu.yml).
RUN pip install "/src[serve]"
USER 1000:1000
ENTRYPOINT ["splade-es"]
