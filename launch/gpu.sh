#!/usr/bin/env bash
# ncalm on one host with several NVIDIA GPUs: one process that uses every GPU it sees.
#
#   launch/gpu.sh --config=configs/nca_164m.py --workdir=/data/runs/nca_164m
#   launch/gpu.sh --venv=.venv --setup --config=... --workdir=... -- --config.mesh.fsdp=8
#
# Flags:
#   --config=FILE[:VARIANT]  the ncalm config, relative to the repository root
#   --workdir=DIR            checkpoints and metrics, relative to the repository root unless
#                            absolute; an existing workdir is resumed
#   --venv=DIR               run DIR/bin/python (default: python3 from PATH)
#   --setup                  first make or update the venv --venv with jax[cuda12] and ncalm
#   --dry_run                print the commands and run none
#   --help
# After `--`: more flags for ncalm.main. CUDA_VISIBLE_DEVICES chooses the GPUs.
# Exit status: ncalm.main's (0 finished, 2 refused, 75 stopped by SIGTERM after saving: the
# same command resumes; README "What happens when things go wrong"), or 2 for bad input.
set -euo pipefail

PROG=gpu.sh
DRY_RUN=0
here=${BASH_SOURCE[0]%/*}
[[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=common.sh
source "$here/common.sh"

CONFIG='' WORKDIR='' VENV='' SETUP=0 EXTRA=()
while (($#)); do
  case $1 in
    --config=*) CONFIG=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --venv=*) VENV=${1#*=} ;;
    --setup) SETUP=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (flags are --flag=VALUE or --switch; see --help)" ;;
  esac
  shift
done

required CONFIG WORKDIR
((!SETUP)) || [[ -n $VENV ]] || die "--setup makes a virtual environment: give it --venv=DIR (e.g. --venv=.venv)"
cd "$here/.."
[[ -f ${CONFIG%%:*} ]] || die "--config=$CONFIG: no such file; give it relative to the repository root"
need nvidia-smi "launch/gpu.sh is for a host with NVIDIA GPUs and their driver"

python=python3
if [[ -n $VENV ]]; then python=$VENV/bin/python; fi
if [[ -n $VENV && ! -x $python ]] && ((!SETUP && !DRY_RUN)); then
  die "--venv=$VENV: there is no $python; add --setup to make the venv"
fi
if ((SETUP)); then
  run python3 -m venv "$VENV"
  run "$VENV/bin/pip" install -U pip
  run "$VENV/bin/pip" install -U "jax[cuda12]" -e .
fi
run "$python" -m ncalm.main --config="$CONFIG" --workdir="$WORKDIR" "${EXTRA[@]}"
