#!/usr/bin/env bash
# A head and two worker nodes (own raylet, object store and ports each) plus an S3 endpoint (moto)
# on this machine. stdout is only `export` lines:   eval "$(cluster/local/up.sh)"
# Settings (env): MLC_DIST_CLUSTER_DIR, MLC_DIST_BUCKET, MLC_DIST_*_PORT; see README.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_python.sh"
exec "$PYTHON" "$HERE/localcluster.py" up
