"""`python -m scl_cli.cli`: what torchrun starts on every rank."""

from scl_cli.cli import main

main()
