"""``python -m mmcore`` (and ``torchrun -m mmcore``) runs the CLI."""

from mmcore.cli import main

main()
