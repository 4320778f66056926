"""`python -m aot_cli` runs the same CLI as `aot` (needed for `accelerate launch -m aot_cli`)."""

from aot_cli.cli import main

main()
