#!/usr/bin/env bash
# The CPU comparison of configs/experiments/code_controls.py, as docs/transfer.md reports it:
#   1. the stage-2 learning-rate screen, the same for scratch and NCA (seed 0; 1e-3, 3e-3,
#      1e-2; the statistics control comes with the nca arm),
#   2. the whole experiment (every arm, control and seed) at scratch's best rate, in the
#      screen's workdir of that rate (its seed-0 runs are reused, not run again).
# Resumable: rerun the same command and finished runs are skipped. Needs the corpora of the
# config's docstring in /tmp/ncalm_data. About 2.5 hours on 2 CPU cores.
#
#   experiments/code_controls.sh ROOT      (run from the repository root)
set -euo pipefail

root=${1:?usage: experiments/code_controls.sh ROOT (folder for the workdirs)}
config=configs/experiments/code_controls.py:cpu
rates=(0.001 0.003 0.01)

for lr in "${rates[@]}"; do
  python -m ncalm.experiment --config="$config" --config.seeds=0 --config.arms=scratch,nca \
      --config.stage2.optim.lr="$lr" --workdir="$root/code_controls_lr$lr"
done

best=$(python - "$root" "${rates[@]}" <<'EOF'
import csv, os, sys
root, rates = sys.argv[1], sys.argv[2:]
final = {}
for lr in rates:
  with open(os.path.join(root, f'code_controls_lr{lr}', 'comparison.csv')) as f:
    final[lr] = next(float(r['final_loss_mean']) for r in csv.DictReader(f)
                     if r['arm'] == 'scratch')
print(min(final, key=final.get))
EOF
)
echo "scratch's best stage-2 learning rate: $best"
python -m ncalm.experiment --config="$config" --config.stage2.optim.lr="$best" \
    --workdir="$root/code_controls_lr$best"
