"""`python -m cartback` runs the command line."""

from cartback.cli import main

main()
