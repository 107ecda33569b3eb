"""``python -m vadpipe`` runs the command line."""

from vadpipe.cli import main

main()
