#!/usr/bin/env bash
# What only a GPU can show, in one command: the kernel parity tests, the measured step profile and the
# throughput tables (ours against transformers) of the MLM 650M and CLM 1B recipes, one file per part in
# OUT_DIR. A part that fails is recorded in its file and the rest still run.
#
# Usage (repository root, package installed with `pip install --no-build-isolation -e .`; on a machine
# with no internet, install megatron-core and biopython first from the wheels tools/offline_wheels.sh
# fetched):
#     benchmarks/gpu_suite.sh OUT_DIR
set -uo pipefail

out=${1:?usage: benchmarks/gpu_suite.sh OUT_DIR}
python=${PYTHON:-python3}
mkdir -p "$out"
$python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA GPU visible')" || exit 1

corpus=outputs/sample/uniref90_sample
if [ ! -f "$corpus.idx" ]; then
  $python tools/preprocess_data.py --input data/uniref90_esm2_pretraining_sample_10k.fasta.gz \
    --output-prefix "$corpus" --source-label uniref90 \
    --clusters data/uniref90_esm2_pretraining_sample_10k.clusters50.tsv.gz --workers 4 || exit 1
fi
sources="data.sources=[{prefix: $corpus}]"

part() {  # part NAME COMMAND...: run, keep its output in OUT_DIR/NAME.txt, note a failure and go on
  local name=$1
  shift
  echo "== $name: $*"
  local started=$SECONDS
  "$@" >"$out/$name.txt" 2>&1
  local status=$?
  echo "exit $status after $((SECONDS - started)) s" >>"$out/$name.txt"
  tail -n 25 "$out/$name.txt"
}

part device $python -c "import torch, megatron.core as m; print(torch.cuda.get_device_name(), 'torch', torch.__version__, \
'cuda', torch.version.cuda, 'megatron-core', m.__version__); from megatron_plm.kernels import rotary, bias_gelu; \
print('kernels built:', rotary.kernel_available(), bias_gelu.kernel_available())"
part kernel_parity $python -m pytest -q -m gpu tests/kernels -p no:cacheprovider
mlm=(--config examples/configs/recipes/esm2_650m.yaml "$sources" data.packed=true model.attention_backend=varlen)
clm=(--config examples/configs/recipes/clm_1b.yaml "$sources")
part profile_esm2_650m $python benchmarks/step_profile.py "${mlm[@]}"
part profile_clm_1b $python benchmarks/step_profile.py "${clm[@]}"
# Two microbatches of 8 per step: the transformers baseline takes a step's batch in one piece.
part throughput_esm2_650m $python benchmarks/train_throughput.py "${mlm[@]}" training.global_batch_size=16
part throughput_clm_1b $python benchmarks/train_throughput.py "${clm[@]}" training.global_batch_size=16
