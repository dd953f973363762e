#!/usr/bin/env bash
# Prepare what benchmarks/gpu.py needs on the GPU machine, which reaches no network:
# benchmarks/.gpu-kit/ (git-ignored) gets
#   whl/         the wheels of the packages splade_es imports that the GPU image lacks
#                (the image has torch, transformers, sentence-transformers, numpy, scipy,
#                tokenizers, rich, click, aiohttp, requests, urllib3, certifi, anyio, ...)
#   splade-tiny/ a copy of the checkpoint (links do not travel, ../shared does not either)
#   scifact/     a copy of the SciFact BEIR folder (nDCG@10 and the documents)
# and prints its size: what travels with `carry` must stay under 64 MiB with the tree.
#
#   bash benchmarks/gpu_kit.sh [MODEL_DIR] [BEIR_DIR]
#
# Versions are the ones the test suite runs with; --no-deps because each name is listed.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
kit="$here/.gpu-kit"
model="${1:-$here/../../shared/models/splade-tiny}"
data="${2:-$here/../../shared/data/scifact}"
python="${PYTHON:-python3}"

wheels=(
  elasticsearch==9.5.1 elastic-transport==9.4.2 sniffio==1.3.1
  opensearch-py==3.2.0 events==0.5
  tenacity==9.2.1 zstandard==0.25.0
  ir-measures==0.4.3 pytrec-eval-terrier==0.5.11
  starlette==1.10.0
)
mkdir -p "$kit/whl"
"$python" -m pip download --quiet --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --abi cp312 \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
  -d "$kit/whl" "${wheels[@]}"
# A checkpoint and a BEIR folder are copied, not linked: a link would travel as a link.
rm -rf "$kit/splade-tiny" "$kit/scifact"
if [ -d "$model" ]; then cp -rL "$model" "$kit/splade-tiny"; chmod -R u+w "$kit/splade-tiny"; fi
if [ -d "$data" ]; then cp -rL "$data" "$kit/scifact"; chmod -R u+w "$kit/scifact"; fi
ls -1 "$kit/whl"
du -sh "$kit"/*
du -sh "$kit"
