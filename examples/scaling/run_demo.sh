#!/usr/bin/env bash
# The scaling-law demonstration (not run in CI; ~25 minutes on 2 CPU cores):
#  1. preprocess MMseqs2's UniProtKB example DB (20,000 sequences, 6.5 MB: not shipped; it is read from
#     $MEGATRON_PLM_SHARED_DATA/corpus/, default ../shared/data/corpus/) and the shipped UniRef90 sample (~12M residues);
#  2. an IsoFLOP sweep of tiny CLMs (3 budgets x 5 sizes, each under one epoch), fitted and plotted;
#  3. at equal compute, MLM from scratch vs 20% CLM then 80% MLM from the CLM body (valid MLM loss).
# Results land in examples/scaling/ (runs.csv, fit.json, fit.txt, isoflop.png, transfer.json).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
OUT=outputs/scaling
DB=${MEGATRON_PLM_SHARED_DATA:-../shared/data}/corpus/uniprotkb_mmseqs2_example_DB.fasta.gz
mkdir -p $OUT
if [ ! -f $OUT/corpus.idx ]; then
    [ -f "$DB" ] || { echo "run_demo.sh: $DB not found: set MEGATRON_PLM_SHARED_DATA (see the script's header)" >&2; exit 2; }
    $PY tools/preprocess_data.py --input "$DB" \
        data/uniref90_esm2_pretraining_sample_10k.fasta.gz --output-prefix $OUT/corpus \
        --dedup --workers 2 --no-progress
fi
# Sizes from 3k to 100k non-embedding parameters: at these budgets the optimum is that small.
$PY -m megatron_plm scaling sweep --base examples/scaling/base_clm.yaml --budgets 1e11 3e11 1e12 \
    --sizes 1x16x1 1x32x1 2x32x1 1x64x2 2x64x2 --out $OUT/sweep --run
cp $OUT/sweep/runs.csv examples/scaling/runs.csv
$PY -m megatron_plm scaling fit examples/scaling/runs.csv --objective clm --bootstrap 200 \
    --output examples/scaling/fit.json --plot examples/scaling/isoflop.png | tee examples/scaling/fit.txt

# Equal compute, 2x128 model (396,544 non-embedding parameters): 1,535 steps of 2,048 tokens either way,
# C = 6 N D = 7.48e12 FLOPs (8.65e12 with attention, as the trainer reports it).
common=(data.sources="[{prefix: $OUT/corpus}]" data.seq_length=128 data.split_weights="[0.96, 0.02, 0.02]"
        data.cluster_sampling=false model.num_layers=2 model.hidden_size=128 model.num_attention_heads=4
        training.global_batch_size=16 training.micro_batch_size=16 training.eval_interval=0 training.eval_iters=16
        optimizer.lr=0.003 optimizer.min_lr=0.0003 optimizer.warmup_iters=5 logging.log_interval=500)
rm -rf $OUT/transfer && mkdir -p $OUT/transfer
$PY -m megatron_plm train --config examples/configs/tiny_mlm.yaml "${common[@]}" name=mlm-scratch \
    training.train_iters=1535 checkpoint.save=null checkpoint.init_from=null data.packed=false \
    logging.metrics_file=$OUT/transfer/mlm_scratch.jsonl > $OUT/transfer/mlm_scratch.log
$PY -m megatron_plm train --config examples/configs/tiny_clm.yaml "${common[@]}" name=clm-20pct \
    training.train_iters=307 checkpoint.save=$OUT/transfer/clm checkpoint.init_from=null \
    logging.metrics_file=$OUT/transfer/clm.jsonl > $OUT/transfer/clm.log
$PY -m megatron_plm train --config examples/configs/tiny_mlm.yaml "${common[@]}" name=mlm-after-clm \
    training.train_iters=1228 checkpoint.save=null checkpoint.init_from=$OUT/transfer/clm data.packed=false \
    logging.metrics_file=$OUT/transfer/mlm_after_clm.jsonl > $OUT/transfer/mlm_after_clm.log
$PY - "$OUT/transfer" <<'PY' | tee examples/scaling/transfer.json
import json, sys, pathlib
d = pathlib.Path(sys.argv[1])
last = lambda f: [json.loads(l) for l in (d / f).read_text().splitlines() if '"validation"' in l][-1]
out = {"model": "2 layers x 128 (396,544 non-embedding parameters)", "flops_6ND": 6 * 396544 * 1535 * 2048,
       "mlm_from_scratch": {"steps": 1535, "valid_mlm_loss": last("mlm_scratch.jsonl")["loss"]},
       "clm_20pct_then_mlm": {"clm_steps": 307, "mlm_steps": 1228, "valid_mlm_loss": last("mlm_after_clm.jsonl")["loss"]}}
print(json.dumps(out, indent=2))
PY
