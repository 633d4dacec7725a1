import sys

from dsi_mpi.cli import main

sys.exit(main())
