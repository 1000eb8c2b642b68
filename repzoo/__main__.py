"""``python -m repzoo ...``: the ``repzoo`` command (``torchrun --nproc_per_node N -m repzoo train ...``)."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
