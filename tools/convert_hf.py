#!/usr/bin/env python
"""Convert between our checkpoints and HuggingFace transformers directories.

python tools/convert_hf.py export CHECKPOINT OUT_DIR [--dtype bf16]   (= megatron-plm export-hf)
python tools/convert_hf.py import HF_DIR CHECKPOINT                    (= megatron-plm import-hf)
"""

import sys

from megatron_plm.cli import main

if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] not in ("export", "import"):
        sys.exit(__doc__)
    sys.exit(main([f"{sys.argv[1]}-hf", *sys.argv[2:]]))
