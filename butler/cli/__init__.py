"""Command-line interfaces: ``butler`` (and the pieces ``mirror`` shares with it).

Importing this package sets up the process for a command, before numpy is loaded: numpy's
OpenBLAS otherwise starts a thread per core that polls for work, about 0.1 s of CPU per
``mirror pull`` and 3 % of a core while ``butler serve`` idles (measured on the bench
machine). The commands do no linear algebra that would gain from those threads; a
variable set by the user is kept.
"""

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
