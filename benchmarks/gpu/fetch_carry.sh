#!/usr/bin/env bash
# Fills what benchmarks/gpu/check.sh carries to the GPU machine (run here, where pip reaches
# PyPI): .whl/ with the wheels the GPU machine lacks (CPython 3.12, x86-64) and .testdata/
# with the published NCA test vectors. Both folders are git-ignored.
#
#   benchmarks/gpu/fetch_carry.sh [PATH/TO/nca_published_vectors.npz]
set -euo pipefail
cd "$(dirname "$0")/../.."
for d in .whl .testdata; do
  grep -qx "/$d/" .git/info/exclude 2>/dev/null || echo "/$d/" >>.git/info/exclude
done
mkdir -p .whl .testdata
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)
for spec in grain==0.2.18 ml_collections==1.1.0 array_record==0.8.6 \
    tensorflow-datasets==4.9.10 tensorboardX==2.6.5 dm-tree==0.1.10 immutabledict==4.3.1 \
    simple-parsing==0.1.9 docstring-parser==0.18.0 tensorflow-metadata==1.21.0 \
    googleapis-common-protos==1.76.0 termcolor==3.3.0 toml==0.10.2 portpicker==1.6.0 \
    protobuf==7.36.2; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp "${platforms[@]}" -d .whl "$spec"
done
# promise has no wheel on PyPI, only a source archive: build its pure-Python wheel here.
compgen -G ".whl/promise-2.3-*.whl" >/dev/null ||
  python3 -m pip wheel -q --no-deps --no-build-isolation -w .whl promise==2.3
cp "${1:-../shared/testdata/nca_published_vectors.npz}" .testdata/
du -sh .whl .testdata
