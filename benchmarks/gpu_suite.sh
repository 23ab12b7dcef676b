#!/usr/bin/env bash
# What only a GPU can show, in one command that fits a lent GPU's few minutes: install what the machine
# lacks from carried wheels, build the CUDA extensions, then -- each part under its own time limit and all
# of them under one budget -- the kernel parity tests, `megatron-plm env --check-kernels`, the throughput
# tables (ours against transformers) of the ESM-2 650M-shape MLM (packed and one protein per sample) and
# the 1B CLM, and the step profiles measured with CUDA events. A part that fails or runs out of time is
# recorded and the rest still run.
#
# Writes two files to OUT_DIR (default $OUT, else outputs/gpu_suite): results.md, each part's command,
# exit status, seconds and tables (what goes into benchmarks/RESULTS.md; each part's section is written
# the moment it ends, and the benchmarks print each row as they measure it, so a part cut by its limit
# keeps what it measured), and suite.log, everything the parts printed, the compilers' output included.
# Exits 0 only when every part passed.
#
# Usage (any folder; paths are the repository's):
#     tools/offline_wheels.sh wheels                         # once, on a machine with internet
#     PY312/bin/python tools/prebuild_extensions.py build prebuilt   # optional: see tools/gpu_rehearsal.sh
#     benchmarks/gpu_suite.sh [--budget SECONDS] [--wheels DIR] [--prebuilt DIR] [OUT_DIR]
#     benchmarks/gpu_suite.sh --dry-run [OUT_DIR]            # the same parts on CPU, tiny shapes
#
# The interpreter: $PYTHON if set, else the checkout's .venv (what `make setup` made), else python3.
# Extensions: the prebuilt ones in --prebuilt DIR (default prebuilt/) when they were built for this
# Python, this torch and these sources (DIR/manifest.txt) and import; otherwise they are compiled here,
# in parallel, for this GPU's architecture only. A kernel that fails to build fails the build part with
# the compiler's message.
#
# --dry-run rehearses every part end to end on a machine without a GPU: tiny models, one timed step,
# the step profile priced instead of measured, the GPU parity tests skipping, the runtime device-strict
# (tensors placed and checked as on a GPU); it checks that the wheels folder holds a Python 3.12 wheel of
# each package and that the prebuilt extensions (if any) match (without installing either) and builds
# nothing, so that it leaves this machine's environment as it was.
set -uo pipefail

dry_run=0
budget=""
wheels=wheels
prebuilt=prebuilt
out=""
while (($#)); do
  case $1 in
    --dry-run) dry_run=1 ;;
    --budget) budget=${2:?--budget needs SECONDS}; shift ;;
    --wheels) wheels=${2:?--wheels needs DIR}; shift ;;
    --prebuilt) prebuilt=${2:?--prebuilt needs DIR}; shift ;;
    -h | --help) sed -n '2,33p' "$0"; exit 0 ;;
    -*) echo "gpu_suite.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    *) out=$1 ;;
  esac
  shift
done
out=${out:-${OUT:-outputs/gpu_suite}}
# Each part's limit is its GPU-run figure times `scale`: a CPU rehearsal does less work but more slowly.
scale=$((dry_run ? 8 : 1))
budget=${budget:-$((dry_run ? 3000 : 240))}
mkdir -p "$out" && out=$(cd "$out" && pwd) || exit 2  # before the cd below: OUT_DIR is the caller's path
repo=$(cd "$(dirname "$0")/.." && pwd)
cd "$repo" || exit 2
case $wheels in /*) ;; *) wheels=$repo/$wheels ;; esac
case $prebuilt in /*) ;; *) prebuilt=$repo/$prebuilt ;; esac
if [ -n "${PYTHON:-}" ]; then
  python=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
  python=$repo/.venv/bin/python
else
  python=python3
fi
if ! $python -c "import torch" 2>/dev/null; then
  echo "gpu_suite.sh: $python has no torch; run 'make setup' or set PYTHON=/path/to/python" >&2
  exit 2
fi
# Tables reach results.md as they are printed, also from a part its time limit stops.
export PYTHONUNBUFFERED=1
# Rehearsing on the CPU: tensors placed and checked as on a GPU (megatron_plm/runtime/cpu.py).
((dry_run)) && export MEGATRON_PLM_DEVICE_STRICT=1
results=$out/results.md
log=$out/suite.log
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
deadline=$((SECONDS + budget))
failed=0
summary=()

if ((!dry_run)); then
  $python -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 'gpu_suite.sh: no CUDA GPU visible \
(use --dry-run to rehearse on CPU)')" || exit 1
fi

{
  echo "# benchmarks/gpu_suite.sh$( ((dry_run)) && echo ' --dry-run (CPU rehearsal: no figure here is a GPU measurement)')"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)," \
    "budget ${budget} s; $($python -c 'import platform, torch; print(f"Python {platform.python_version()}, torch {torch.__version__}")')"
} >"$results"
: >"$log"

# part NAME LIMIT COMMAND...: run COMMAND for at most LIMIT seconds (less if the suite's budget is nearly
# spent), its stdout into results.md and both streams into suite.log; note the outcome and go on.
part() {
  local name=$1 limit=$(($2 * scale))
  shift 2
  local left=$((deadline - SECONDS))
  if ((left < 15)); then
    record "$name" "skipped: the suite's budget of ${budget} s is spent" 0 "$*"
    failed=1
    return
  fi
  ((limit > left)) && limit=$left
  echo "== $name (limit ${limit} s): $*" | tee -a "$log"
  local started=$SECONDS
  timeout --kill-after=10 "$limit" "$@" >"$scratch/stdout" 2>"$scratch/stderr"
  local status=$? seconds=$((SECONDS - started))
  cat "$scratch/stdout" "$scratch/stderr" >>"$log"
  local outcome="ok"
  if ((status == 124 || status == 137)); then
    outcome="TIMED OUT after ${limit} s"
  elif ((status != 0)); then
    outcome="FAILED (exit $status; see suite.log)"
  fi
  record "$name" "$outcome" "$seconds" "$*" "$scratch/stdout"
  tail -n 30 "$scratch/stdout"
  if ((status != 0)); then
    failed=1
    tail -n 15 "$scratch/stderr"
  fi
  echo "-- $name: $outcome (${seconds} s)"
}

# record NAME OUTCOME SECONDS COMMAND [STDOUT_FILE]: one section of results.md and a summary row.
record() {
  summary+=("$(printf '| %s | %s | %s |' "$1" "$2" "$3")")
  {
    echo
    echo "## $1: $2 (${3} s)"
    echo
    echo "\`$4\`"
    if [ -n "${5:-}" ] && [ -s "$5" ]; then
      echo
      echo '```'
      cat "$5"
      echo '```'
    fi
  } >>"$results"
}

skip() {  # skip NAME WHY: a part this run leaves out, and why
  record "$1" "skipped: $2" 0 "-"
}

# -- what the machine lacks, from the carried wheels ----------------------------------------------------
platform_tags=()
for tag in manylinux1_x86_64 manylinux2014_x86_64 manylinux_2_17_x86_64 manylinux_2_24_x86_64 \
  manylinux_2_27_x86_64 manylinux_2_28_x86_64; do
  platform_tags+=(--platform "$tag")
done
if [ ! -d "$wheels" ]; then
  if $python -c "import megatron.core, Bio" 2>/dev/null; then
    skip install "no $wheels/, and $python already has megatron-core and biopython"
  elif ((dry_run)); then
    skip install "no $wheels/ here (tools/offline_wheels.sh $wheels fetches it); a real run needs it"
  else
    record install "FAILED: no $wheels/ (fetch it with tools/offline_wheels.sh $wheels where pip has internet)" 0 "-"
    failed=1
  fi
elif ((dry_run)); then  # resolve the same requirements for the GPU machine's Python, without installing
  part install 60 $python -m pip install --dry-run --quiet --no-index --no-deps --find-links "$wheels" \
    --target "$scratch/site" --only-binary=:all: --python-version 3.12 --implementation cp "${platform_tags[@]}" \
    -r tools/gpu_wheels.txt
else
  site=$scratch/site
  part install 60 $python -m pip install --quiet --no-index --no-deps --no-compile --no-cache-dir --find-links "$wheels" \
    --target "$site" -r tools/gpu_wheels.txt
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
du -sh "$wheels" 2>/dev/null | tee -a "$log"

# -- the CUDA extensions: the carried prebuilt ones when they match, else compiled for this GPU only ------
if ((dry_run)); then
  if [ -f "$prebuilt/manifest.txt" ]; then
    part prebuilt 10 $python tools/prebuild_extensions.py check "$prebuilt" --python-version 3.12 --torch-version 2.11.0
  else
    skip build "the dry run leaves this environment as it is; tests/kernels/test_build.py compiles the kernels wherever nvcc is"
  fi
else
  arch=$($python -c "import torch; print('%d%d' % torch.cuda.get_device_capability(0))")
  part build 150 bash -c "$python tools/prebuild_extensions.py install '$prebuilt' || \
MEGATRON_PLM_REQUIRE_EXTENSIONS=1 MEGATRON_PLM_CUDA_ARCHS=$arch $python setup.py build_ext --inplace --parallel 16"
fi
export PYTHONPATH="$repo${PYTHONPATH:+:$PYTHONPATH}"

# -- the device, then the kernels: parity grid and the self-check table (which also prints `env`) ------
if ((dry_run)); then
  skip device "no GPU (dry run)"
else
  part device 30 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,power.limit --format=csv
fi
# On CPU only the GPU tests' selection is rehearsed (they skip); the rest of tests/kernels runs in the test suite.
# On the GPU all of tests/kernels runs: the parity grids (ours and PyTorch's varlen flash attention against
# the references), and the CPU tests too, which there meet megatron-core's GPU placement.
# The dry run also traces the GPU-only branches on fake CUDA tensors under this interpreter's torch.
parity_selection=()
((dry_run)) && parity_selection=(-m "gpu or fake_cuda")
part kernel_parity 60 $python -m pytest -q -p no:cacheprovider "${parity_selection[@]}" tests/kernels
part check_kernels 45 $python -m megatron_plm env --check-kernels

# -- throughput and step profiles of the two recipes -----------------------------------------------------
corpus=$scratch/uniref90_sample
part corpus 60 $python tools/preprocess_data.py --input data/uniref90_esm2_pretraining_sample_10k.fasta.gz \
  --output-prefix "$corpus" --source-label uniref90 \
  --clusters data/uniref90_esm2_pretraining_sample_10k.clusters50.tsv.gz --workers 4
sources="data.sources=[{prefix: $corpus}]"
# Weights initialised on the GPU, each rank its shard (a billion fp32 weights take ~10 s on the host).
mlm=(--config examples/configs/recipes/esm2_650m.yaml "$sources" model.cpu_initialization=false)
clm=(--config examples/configs/recipes/clm_1b.yaml "$sources" model.cpu_initialization=false)
steps=(--warmup 3 --steps 10)
# Two microbatches of 8 per step: the transformers baseline takes a step's batch in one piece.
shape=(training.global_batch_size=16)
layers=()
profile=()  # the recipes' global batch: the optimizer's time is shared by its microbatches, as in a real run
if ((dry_run)); then  # the recipes at a size a CPU runs in seconds; fp32 (the CPU's bf16 is emulated)
  steps=(--warmup 1 --steps 1)
  shape=(model.num_layers=2 model.hidden_size=64 model.num_attention_heads=4 data.seq_length=128
    training.micro_batch_size=2 training.global_batch_size=4 training.precision=fp32)
  layers=(--layers 1)
  profile=("${shape[@]}")
fi
part throughput_esm2_650m_packed 90 $python benchmarks/train_throughput.py "${steps[@]}" --backends varlen,sdpa \
  "${mlm[@]}" data.packed=true "${shape[@]}"
part throughput_clm_1b 90 $python benchmarks/train_throughput.py "${steps[@]}" --backends varlen "${clm[@]}" "${shape[@]}"
part throughput_esm2_650m_single 75 $python benchmarks/train_throughput.py "${steps[@]}" --backends varlen \
  "${mlm[@]}" data.packed=false "${shape[@]}"
part profile_esm2_650m 60 $python benchmarks/step_profile.py "${layers[@]}" "${mlm[@]}" data.packed=true \
  model.attention_backend=varlen "${profile[@]}"
part profile_clm_1b 60 $python benchmarks/step_profile.py "${layers[@]}" "${clm[@]}" "${profile[@]}"

{
  echo
  echo "## Summary ($((SECONDS)) s of the ${budget} s budget)"
  echo
  echo "| part | outcome | seconds |"
  echo "| --- | --- | --- |"
  printf '%s\n' "${summary[@]}"
} >>"$results"
echo "gpu_suite.sh: $( ((failed)) && echo 'some parts failed' || echo 'every part passed') in ${SECONDS} s; tables in $results"
exit $failed
