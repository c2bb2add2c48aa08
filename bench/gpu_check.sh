#!/usr/bin/env bash
# GPU check (one NVIDIA GPU, under 5 minutes): the benchmark table on the GPU, plus sweeper's
# samples/s against a bare bf16 loop over the same warm cache (target: at least 0.9x) and peak
# GPU memory. It needs only the GPU image's torch/torchvision/transformers, plus what it lacks
# carried as wheels in .whl/ (optuna, mlflow-skinny, pydantic, vaderSentiment, ...) and the default
# study's model in .gpu/minilm (see BENCHMARKS.md for how both are prepared). MLflow records to a
# file store there: its SQL store needs packages the image lacks and the carry limit leaves no room.
#
#   bash bench/gpu_check.sh            # writes $OUT/gpu_bench.json when OUT is set
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false MLFLOW_ALLOW_FILE_STORE=true
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, transformers, optuna, mlflow; print('torch', torch.__version__, 'transformers', transformers.__version__, 'optuna', optuna.__version__, 'mlflow', mlflow.__version__)"
spec=studies/vader-minilm.toml
[ -f .gpu/vader-minilm-gpu.toml ] && spec=.gpu/vader-minilm-gpu.toml
python3 bench/bench_trials.py --spec "$spec" --device cuda --epochs 3 --tracking-uri "file:///tmp/sweeper-bench-mlruns" --json "${OUT:-/tmp}/gpu_bench.json"
