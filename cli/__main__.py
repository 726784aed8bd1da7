"""`python -m cli` runs the same command as the installed `batchpress` script."""
from cli.main import main

main()
