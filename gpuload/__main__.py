"""``python -m gpuload``: the same as the ``gpuload`` command."""

import sys

from gpuload.cli import main

sys.exit(main())
