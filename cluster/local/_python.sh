# Sourced by up.sh, down.sh and node.sh: the interpreter of the environment that has Ray
# (MLC_DIST_PYTHON, else the python beside the `ray` on PATH, as in an activated venv).
if [ -n "${MLC_DIST_PYTHON:-}" ]; then
  PYTHON="$MLC_DIST_PYTHON"
elif command -v ray >/dev/null 2>&1; then
  PYTHON="$(dirname "$(command -v ray)")/python"
else
  echo "local-cluster: no 'ray' on PATH; activate the project's venv or set MLC_DIST_PYTHON" >&2
  exit 1
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
