"""Gantt charts, a comparison table and distributions from results files (see dsi_mpi/reporting/plots.py).

usage: python analysis/plot_results.py RESULTS.h5 --out DIR       (gantt of the first prompt, table, distributions)
       python analysis/plot_results.py gantt RESULTS.h5 --out DIR [--prompt I] [--algorithm A]
       python analysis/plot_results.py table RESULTS.h5 [RESULTS2.h5 ...] --out PREFIX
       python analysis/plot_results.py distributions RESULTS.h5 [RESULTS2.h5 ...] --out DIR
"""

from __future__ import annotations

import sys

from dsi_mpi.reporting.plots import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
