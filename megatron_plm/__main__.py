import sys

from megatron_plm.cli import main

if __name__ == "__main__":  # the guard megatron-core's checkpoint writer needs (it starts processes)
    sys.exit(main())
