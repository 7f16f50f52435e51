#!/usr/bin/env bash
# Stops exactly what up.sh started (by the sessions it recorded) and removes its state folder.
# Never `ray stop`: that ends every Ray cluster of the machine.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$PYTHON" "$HERE/localcluster.py" down
