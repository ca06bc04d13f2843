#!/bin/bash
# Pre-launch check on the login node: validate a recipe (parallelism, batch sizes, per-GPU memory) with overrides.
#   launchers/validate.sh RECIPE [key=value ...]
set -euo pipefail
if [[ $# -lt 1 ]]; then
  echo "usage: $0 RECIPE [key=value ...]" >&2
  exit 2
fi
recipe="$1"
shift
set_args=()
for override in "$@"; do
  set_args+=(--set "${override}")
done
exec "${PYTHON:-python}" -m nemotron_plugins.cli.main recipes validate "${recipe}" "${set_args[@]}"
