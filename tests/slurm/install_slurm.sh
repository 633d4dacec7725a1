#!/usr/bin/env bash
# usage: tests/slurm/install_slurm.sh
# Installs the Debian SLURM and munge packages that tests/slurm needs (root, apt). Idempotent: does
# nothing when sbatch, slurmctld, slurmd and munged are already on PATH, and runs `apt-get update`
# only when the package index does not know slurm-wlm yet. The tests start the daemons themselves.
set -euo pipefail
PATH="$PATH:/usr/sbin:/sbin"
have_all() {
    for tool in sbatch slurmctld slurmd munged; do
        command -v "$tool" >/dev/null 2>&1 || return 1
    done
}
if have_all; then
    echo "install_slurm: SLURM and munge already installed"
    exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "install_slurm: needs root (apt-get) to install slurm-wlm and munge" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! apt-cache show slurm-wlm >/dev/null 2>&1; then
    apt-get update
fi
apt-get install -y --no-install-recommends slurm-wlm munge slurmctld slurmd slurm-client
have_all || { echo "install_slurm: installed, but sbatch/slurmctld/slurmd/munged still missing" >&2; exit 1; }
echo "install_slurm: done"
