#!/usr/bin/env python
"""FASTA/JSONL protein corpora -> megatron-core .bin/.idx (+ per-sequence metadata).

Same flags as ``megatron-plm preprocess``; see ``--help``. Example:

    python tools/preprocess_data.py --input 'uniref50/*.fasta.gz' --output-prefix data/uniref50 \\
        --source-label uniref50 --clusters uniref50_clusters.tsv --workers 8
"""

import sys

from megatron_plm.cli import main

if __name__ == "__main__":
    sys.exit(main(["preprocess", *sys.argv[1:]]))
