#!/usr/bin/env bash
# The family workflow on TEM-1 beta-lactamase (see README.md here). Usage:
#   examples/family/run.sh prepare                 # corpora: plain, and with 80%-identity clusters
#   examples/family/run.sh prepare-domain          # a Pfam-style domain alignment (Stockholm) and its corpus
#   examples/family/run.sh VARIANT [overrides...]  # train one variant, then score it on the assay
# VARIANT: mlm | mlm-unweighted | mlm-finetune | clm | clm-unweighted | clm-cropped | clm-finetune | clm-domain | clm-domain-cropped
# (the fine-tuned ones start from the quickstart's pretrained tiny CLM, outputs/tiny_clm: run `make quickstart`
# first; the MLM takes its body, as in the CLM -> MLM transfer).
# Each run's log, wall time and scores land in outputs/family/<variant>/ (or outputs/family/$RUN_NAME/).
set -euo pipefail
cd "$(dirname "$0")/../.."
PY=${PYTHON:-.venv/bin/python}
DATA=${MEGATRON_PLM_SHARED_DATA:-data}  # the checkout's shipped data, or a copy of the same layout
A3M=$DATA/family/BLAT_ECOLX_ColabFold_2202.a3m
OUT=outputs/family
mkdir -p $OUT
# TEM-1, the assay's wild type: --crop-to-target cuts the homologs to the part of it the family covers
awk '/^>/ {keep = /^>BLAT_ECOLX_Stiffler_2015/} keep' $DATA/dms/wildtype.fasta > $OUT/tem1.fasta

variant=${1:?usage: run.sh prepare | VARIANT [dotted.key=value ...]}
shift
if [ "$variant" = prepare ]; then  # rebuilds the corpora each time it runs (they derive from the alignment alone)
    $PY -m megatron_plm msa-weights $A3M --output-prefix $OUT/blat80
    $PY -m megatron_plm preprocess --input $A3M --output-prefix $OUT/blat --source-label blat --no-progress --overwrite
    $PY -m megatron_plm preprocess --input $A3M --output-prefix $OUT/blat_w --source-label blat --no-progress \
        --clusters $OUT/blat80.clusters.tsv --overwrite
    # each homolog cut to what aligns to TEM-1's covered region (the residues the assay is scored on)
    $PY -m megatron_plm preprocess --input $A3M --output-prefix $OUT/blat_crop_w --source-label blat --no-progress \
        --clusters $OUT/blat80.clusters.tsv --crop-to-target $OUT/tem1.fasta --overwrite
    exit 0
fi
if [ "$variant" = prepare-domain ]; then  # a Pfam-style domain alignment (Stockholm, TEM-1 left out) and its corpus
    $PY examples/family/domain_alignment.py $A3M $OUT/blat_domain.sto
    $PY -m megatron_plm msa-weights $OUT/blat_domain.sto --output-prefix $OUT/dom80
    $PY -m megatron_plm preprocess --input $OUT/blat_domain.sto --output-prefix $OUT/dom_w --source-label blat_domain \
        --no-progress --clusters $OUT/dom80.clusters.tsv --overwrite
    $PY -m megatron_plm preprocess --input $OUT/blat_domain.sto --output-prefix $OUT/dom_crop_w --source-label blat_domain \
        --no-progress --clusters $OUT/dom80.clusters.tsv --crop-to-target $OUT/tem1.fasta --overwrite
    exit 0
fi
MSA=$A3M
case $variant in
    mlm)            args=(--config examples/family/mlm.yaml) ;;
    mlm-unweighted) args=(--config examples/family/mlm.yaml "data.sources=[{prefix: $OUT/blat}]") ;;
    mlm-finetune)   args=(--config examples/family/mlm.yaml checkpoint.init_from=outputs/tiny_clm) ;;  # its body
    clm)            args=(--config examples/family/clm.yaml) ;;
    clm-unweighted) args=(--config examples/family/clm.yaml "data.sources=[{prefix: $OUT/blat}]") ;;
    clm-cropped)    args=(--config examples/family/clm.yaml "data.sources=[{prefix: $OUT/blat_crop_w}]") ;;
    clm-finetune)   args=(--config examples/family/clm.yaml checkpoint.init_from=outputs/tiny_clm model.hidden_size=64) ;;
    clm-domain)     args=(--config examples/family/clm.yaml "data.sources=[{prefix: $OUT/dom_w}]"); MSA=$OUT/blat_domain.sto ;;
    clm-domain-cropped) args=(--config examples/family/clm.yaml "data.sources=[{prefix: $OUT/dom_crop_w}]"); MSA=$OUT/blat_domain.sto ;;
    *) echo "unknown variant $variant" >&2; exit 2 ;;
esac
dir=$OUT/${RUN_NAME:-$variant}  # RUN_NAME=... keeps variants of one recipe (overrides) apart
rm -rf $dir && mkdir -p $dir
start=$(date +%s)
$PY -m megatron_plm train "${args[@]}" checkpoint.save=$dir/checkpoint name=family-$variant "$@" | tee $dir/train.log
echo "train wall time: $(( $(date +%s) - start )) s" | tee -a $dir/train.log
$PY -m megatron_plm evaluate dms --model $dir/checkpoint --assays $DATA/dms --assay BLAT_ECOLX_Stiffler_2015 \
    --msa $MSA --profile-prior --output $dir/scores.csv | tee $dir/dms.txt
# the same, scoring only the residues the alignment covers (the table counts the mutants left out)
$PY -m megatron_plm evaluate dms --model $dir/checkpoint --assays $DATA/dms --assay BLAT_ECOLX_Stiffler_2015 \
    --msa $MSA --region covered --profile-prior --no-progress | tee -a $dir/dms.txt
