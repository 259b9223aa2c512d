"""``python -m mlplab.cli``: the ``mlplab`` command."""

from mlplab.cli import main

main()
