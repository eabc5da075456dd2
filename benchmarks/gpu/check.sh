#!/usr/bin/env bash
# ncalm on one GPU: the prepared check (issue 19). Run from the repository root:
#
#   benchmarks/gpu/check.sh            # on the GPU machine: every part, about 5 min on one H200
#   benchmarks/gpu/check.sh --smoke    # every part on the CPU backend at tiny shapes
#
# Writes $OUT/gpu_check.json and $OUT/gpu_check.md (OUT defaults to /tmp/ncalm_gpu_check;
# --out=DIR overrides) after every part; check.py's docstring lists the parts. Exit 0:
# every part ran; 1: a part failed (its entry holds the traceback); 2: refused (no GPU
# visible without --smoke, a package or the test vectors missing: the message says which).
#
# The GPU machine (python3 3.12) has jax with the CUDA plugin, flax, optax and orbax-checkpoint,
# but not these; they travel as wheels in .whl/ (git-ignored), installed here into a
# private folder when they are missing, nothing from the network:
#   grain==0.2.18  ml_collections==1.1.0  array_record==0.8.6  tensorflow-datasets==4.9.10
#   tensorboardX==2.6.5  dm-tree==0.1.10  immutabledict==4.3.1  promise==2.3
#   simple-parsing==0.1.9  docstring-parser==0.18.0  tensorflow-metadata==1.21.0
#   googleapis-common-protos==1.76.0  termcolor==3.3.0  toml==0.10.2  portpicker==1.6.0
#   protobuf==7.36.2 (tensorflow-metadata's generated files need protobuf >= 6.31.1)
# The published NCA test vectors travel in .testdata/ (../shared does not travel).
# benchmarks/gpu/fetch_carry.sh fills both, here, where pip reaches PyPI. Then, with the
# device tool: run(command="benchmarks/gpu/check.sh", carry=[".whl", ".testdata"]).
set -euo pipefail
cd "$(dirname "$0")/../.."
needed='import grain, ml_collections, tensorflow_datasets, tensorboardX, array_record'
wheels="${NCALM_WHEELS:-.whl}"   # where the carried wheels are
if compgen -G "$wheels/*.whl" >/dev/null && ! python3 -c "$needed" 2>/dev/null; then
  site="${TMPDIR:-/tmp}/ncalm_gpu_site"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target "$site" "$wheels"/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [[ -z "${NCALM_VECTORS:-}" && -f .testdata/nca_published_vectors.npz ]]; then
  export NCALM_VECTORS="$PWD/.testdata/nca_published_vectors.npz"
fi
export XLA_PYTHON_CLIENT_MEM_FRACTION="${XLA_PYTHON_CLIENT_MEM_FRACTION:-0.92}"
export PYTHONUNBUFFERED=1
exec python3 benchmarks/gpu/check.py "$@"
