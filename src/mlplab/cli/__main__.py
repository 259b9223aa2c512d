"""``python -m mlplab.cli``: the ``mlplab`` command."""

import sys

from mlplab.cli import main

# the name its help and errors show, as for the console script (Lightning's launchers re-run `python -m` by the module's spec)
sys.argv[0] = "mlplab"
main()
