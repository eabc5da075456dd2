#!/usr/bin/env bash
# Which CPU-scale NCA families does a small model learn *in context*? (docs/transfer.md)
# Each arm trains the same small model on one family; the loss per frame index
# (eval/loss_frame/NN) falls with the frame only if the model infers the rule from the
# frames before. Usage: bash experiments/rule_search.sh OUT_DIR [ARM ...]
set -euo pipefail
out=${1:?usage: rule_search.sh OUT_DIR [ARM ...]}; shift || true
common=(--config=configs/nca_164m.py:cpu --config.seq_len=512 --config.global_batch=8
        --config.train_steps=600 --config.checkpoint_every=300
        --config.evals.heldout.every=300 --config.evals.probe.every=300
        --config.data.nca.grid=8)
declare -A arms=(
  [s2_p1]="--config.data.nca.num_states=2 --config.data.nca.perceive_channels=1 --config.data.band=0.1,1.0"
  [s2_p4]="--config.data.nca.num_states=2 --config.data.band=0.15,1.0"
  [s4_p1]="--config.data.nca.num_states=4 --config.data.nca.perceive_channels=1 --config.data.band=0.12,1.0"
  [s4_p4]="--config.data.nca.num_states=4 --config.data.band=0.3,1.0"
  # 16x16: a pattern translating around the torus needs 16 frames to come back, more than
  # the 7 frames a 512-token window holds, so copying a cycle cannot explain a falling loss.
  [s2_p1_g16]="--config.data.nca.grid=16 --config.data.nca.num_states=2 --config.data.nca.perceive_channels=1 --config.data.band=0.1,1.0"
)
names=("$@"); [ ${#names[@]} -eq 0 ] && names=(s2_p1 s2_p4 s4_p1 s4_p4)
for name in "${names[@]}"; do
  # shellcheck disable=SC2086
  python -m ncalm.main "${common[@]}" ${arms[$name]} --workdir="$out/$name" \
      > "$out/$name.log" 2>&1 || echo "$name failed: see $out/$name.log"
done
