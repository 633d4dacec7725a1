"""Scripts that run jobs or the time model and print or draw what they found (analysis/README.md lists them).
Run each from the repository root as a module, `python -m analysis.NAME ...`; they start jobs through
analysis/jobs.py and take every figure from dsi_mpi.reporting."""
