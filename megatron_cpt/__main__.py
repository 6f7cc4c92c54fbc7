import sys

from megatron_cpt.cli import main

if __name__ == "__main__":
    sys.exit(main())
