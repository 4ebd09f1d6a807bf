"""``python -m rdcnet`` (and ``torchrun -m rdcnet``) runs the command line."""

import sys

from .cli import main

sys.exit(main())
