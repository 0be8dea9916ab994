"""`python -m cotdistill` runs the CLI."""

from cotdistill.cli import main

main()
