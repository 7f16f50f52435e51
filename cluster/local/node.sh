#!/usr/bin/env bash
# Node-loss drill:  node.sh kill worker1   SIGKILLs every process of that node (a lost machine);
#                   node.sh start worker1  starts it again on its ports (prints its new node id).
# node.sh env prints up.sh's exports again.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$PYTHON" "$HERE/localcluster.py" "$@"
