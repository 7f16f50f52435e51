#!/usr/bin/env bash
# A local Ray head for `mlc-dist submit`: dashboard (Jobs API) and GCS bound to 127.0.0.1 only.
set -euo pipefail
PORT="${RAY_PORT:-6380}"
DASHBOARD_PORT="${RAY_DASHBOARD_PORT:-8265}"
ray start --head --node-ip-address=127.0.0.1 --port="$PORT" \
  --dashboard-host=127.0.0.1 --dashboard-port="$DASHBOARD_PORT" \
  --num-cpus="${RAY_NUM_CPUS:-$(nproc)}" --disable-usage-stats "$@"
echo "submit with: mlc-dist submit jobs/quickstart_smoke.yaml --address http://127.0.0.1:$DASHBOARD_PORT --follow"
