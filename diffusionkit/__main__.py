"""``python -m diffusionkit``: the command line (see :mod:`diffusionkit.cli`)."""

from diffusionkit.cli import main

raise SystemExit(main())
