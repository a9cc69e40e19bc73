#!/usr/bin/env bash
# Installs the peers pool-bench's scenario 12 runs beside pool: Python's
# multiprocessing (with numpy), Dask and Ray in a virtual environment beside this
# script (benchmarks/peers/.venv, ignored by git), and Open MPI from Debian's packages.
# None of them is needed to build or test pool; a peer that is missing is skipped.
#
#   benchmarks/peers/install.sh          # as root for Open MPI (apt-get)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)

python3 -m venv "$here/.venv"
"$here/.venv/bin/pip" install --quiet --upgrade pip
"$here/.venv/bin/pip" install --quiet numpy "dask[distributed]" ray
echo "installed numpy, Dask and Ray in $here/.venv"

if command -v mpicc >/dev/null && command -v mpirun >/dev/null; then
    echo "Open MPI: already installed"
elif [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    apt-get install -y -q openmpi-bin libopenmpi-dev >/dev/null
    echo "installed Open MPI (openmpi-bin, libopenmpi-dev)"
else
    echo "Open MPI: not installed; as root on Debian: apt-get install openmpi-bin libopenmpi-dev" >&2
fi
