#!/usr/bin/env bash
# ncalm on a Cloud TPU VM slice: create it (queued resources), set it up, run, watch, delete.
#
#   launch/tpu.sh up      FLAGS [--check_fit]     create, wait for ACTIVE, copy the code, set up
#   launch/tpu.sh setup   FLAGS                   copy the code and set up again (after an edit)
#   launch/tpu.sh run     FLAGS [-- NCALM_FLAGS]  start ncalm.main on every worker, in the background
#   launch/tpu.sh babysit FLAGS [-- NCALM_FLAGS]  up, run, and on preemption recreate and rerun
#   launch/tpu.sh logs    --name --zone [--worker=I | --collect=DIR]
#   launch/tpu.sh status  --name --zone
#   launch/tpu.sh down    --name --zone           delete the slice
#
#   e.g. launch/tpu.sh babysit --name=nca --zone=us-east5-a --accelerator=v5p-32 --spot \
#          --workdir=gs://my-bucket/nca_164m --config=configs/nca_164m.py --check_fit
#
# FLAGS are --name, --zone, --accelerator and --workdir (and --config for run and babysit):
#   --name=NAME              the queued resource and its TPU VM (lowercase letters, digits, -)
#   --zone=ZONE              a zone that offers the accelerator, e.g. us-east5-a
#   --project=PROJECT        default: gcloud's configured project
#   --accelerator=TYPE       v4-N, v5p-N, v5litepod-N or v6e-N, e.g. v5p-32
#   --runtime_version=V      default: v4 tpu-ubuntu2204-base, v5p v2-alpha-tpuv5,
#                            v5litepod v2-alpha-tpuv5-lite, v6e v2-alpha-tpuv6e
#   --spot                   spot (preemptible) capacity
#   --reserved               reserved capacity (your reservation); neither: on-demand
#   --workdir=DIR            checkpoints and metrics; every worker must see the same one:
#                              gs://BUCKET/PATH: gcsfuse mounts the bucket at /gcs/BUCKET on
#                                each worker; ncalm.main gets --workdir=/gcs/BUCKET/PATH
#                              /mnt/ncalm-nfs/PATH with --nfs
#                              an absolute local path: single-host slices only, not babysit
#   --nfs=SERVER:/EXPORT     an NFS share (e.g. Filestore) mounted at /mnt/ncalm-nfs on each worker
#   --config=FILE[:VARIANT]  the ncalm config, relative to the repository root
#   --check_fit              up, babysit: first `python3 -m ncalm.dryrun --require_fit` here, so a
#                            config that does not fit the slice stops before anything is created
#   --keep                   keep the slice when up or babysit fails, and when babysit ends
#   --timeout=SECONDS        give up waiting for ACTIVE after this long (default 0: no limit)
#   --poll=SECONDS           between state checks, waiting and babysitting (default 60)
#   --max_restarts=N         babysit: recreations before it gives up (default 10)
#   --worker=I               logs: the worker whose log to stream (default 0)
#   --collect=DIR            logs: copy each worker's log to DIR/worker_I.log instead
#   --dry_run                print the commands and run none; needs no gcloud (what it would
#                            look up is assumed, on lines starting with #)
#   --help
# After `--`: more flags for ncalm.main (the --config.* ones go to the --check_fit dry run too).
#
# On each worker: the code in ~/ncalm (this checkout: tracked and untracked files, not ignored
# ones), the venv ~/ncalm-venv, the log ~/ncalm-run.log and, once ncalm.main has ended, its
# exit status in ~/ncalm-run.exit (launch/worker.sh). babysit polls the slice and that file:
#   0: finished: the slice is deleted (unless --keep) and babysit exits 0;
#   2 (refused) or 3 (non-finite loss): babysit stops with that status, a rerun would too;
#   any other status, or the slice SUSPENDED, FAILED or gone (preempted): delete it, create
#   it again, set it up and rerun the same command, which resumes from the workdir's latest
#   checkpoint; after --max_restarts recreations babysit gives up (exit 1).
# If up or babysit fails once the slice exists, it is deleted unless --keep.
# Exit status: 0 done; 2 bad input (nothing created); 1 failed, or babysit gave up.
# Paths are relative to the repository root. More: launch/README.md.
set -euo pipefail

PROG=tpu.sh
DRY_RUN=0
here=${BASH_SOURCE[0]%/*}
[[ $here != "${BASH_SOURCE[0]}" ]] || here=.
# shellcheck source=common.sh
source "$here/common.sh"

NFS_MOUNT=/mnt/ncalm-nfs
LOCK=.ncalm.lock   # ncalm/workdir.py LOCK_NAME: left behind by a run whose host was preempted
declare -A RUNTIME=([v4]=tpu-ubuntu2204-base [v5p]=v2-alpha-tpuv5
                    [v5litepod]=v2-alpha-tpuv5-lite [v6e]=v2-alpha-tpuv6e)
export CLOUDSDK_CORE_DISABLE_PROMPTS=1   # no gcloud prompt may wait: babysit runs unattended

# ------------------------------------------------------------------ flags

SUB=${1:-}
case $SUB in
  up | setup | run | babysit | logs | status | down) shift ;;
  -h | --help) usage; exit 0 ;;
  *) die "the first argument is the subcommand: up, setup, run, babysit, logs, status or down (see --help)" ;;
esac

NAME='' ZONE='' PROJECT='' ACCELERATOR='' RUNTIME_VERSION='' WORKDIR='' NFS='' CONFIG=''
COLLECT='' TIMEOUT=0 POLL=60 MAX_RESTARTS=10 WORKER=0 SPOT=0 RESERVED=0 CHECK_FIT=0 KEEP=0
EXTRA=()
while (($#)); do
  case $1 in
    --name=*) NAME=${1#*=} ;;
    --zone=*) ZONE=${1#*=} ;;
    --project=*) PROJECT=${1#*=} ;;
    --accelerator=*) ACCELERATOR=${1#*=} ;;
    --runtime_version=*) RUNTIME_VERSION=${1#*=} ;;
    --workdir=*) WORKDIR=${1#*=} ;;
    --nfs=*) NFS=${1#*=} ;;
    --config=*) CONFIG=${1#*=} ;;
    --timeout=*) TIMEOUT=${1#*=} ;;
    --poll=*) POLL=${1#*=} ;;
    --max_restarts=*) MAX_RESTARTS=${1#*=} ;;
    --worker=*) WORKER=${1#*=} ;;
    --collect=*) COLLECT=${1#*=} ;;
    --spot) SPOT=1 ;;
    --reserved) RESERVED=1 ;;
    --check_fit) CHECK_FIT=1 ;;
    --keep) KEEP=1 ;;
    --dry_run) DRY_RUN=1 ;;
    -h | --help) usage; exit 0 ;;
    --) shift; EXTRA=("$@"); break ;;
    *) die "unknown argument $1 (flags are --flag=VALUE or --switch; see --help)" ;;
  esac
  shift
done

required NAME ZONE
[[ $NAME =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name=$NAME: use lowercase letters, digits and hyphens, starting with a letter"
whole TIMEOUT POLL MAX_RESTARTS WORKER
((SPOT + RESERVED < 2)) || die "--spot --reserved: choose one of them (neither: on-demand)"
LOC=(--zone="$ZONE")
[[ -z $PROJECT ]] || LOC+=(--project="$PROJECT")
cd "$here/.."

WORKERS=''   # workers (hosts) of the slice, from the accelerator type
if [[ -n $ACCELERATOR ]]; then
  [[ $ACCELERATOR =~ ^(v4|v5p|v5litepod|v6e)-([0-9]+)$ ]] \
    || die "--accelerator=$ACCELERATOR: give a TPU type such as v4-32, v5p-32, v5litepod-16 or v6e-16"
  generation=${BASH_REMATCH[1]} size=${BASH_REMATCH[2]}
  RUNTIME_VERSION=${RUNTIME_VERSION:-${RUNTIME[$generation]}}
  case $generation in   # a host has 4 chips, or up to 8 on a single-host v5e/v6e slice
    v4 | v5p) chips=$((size / 2)) single=4 ;;   # these types count TensorCores, 2 per chip
    *) chips=$size single=8 ;;
  esac
  WORKERS=$((chips <= single ? 1 : chips / 4))
fi

BUCKET='' RUN_WORKDIR=''   # the bucket to mount; the workdir as the workers see it
case $SUB in
  up | setup | run | babysit)
    required ACCELERATOR WORKDIR
    if [[ $WORKDIR == gs://* ]]; then
      [[ -z $NFS ]] || die "--nfs with --workdir=gs://...: choose one of them for the workdir"
      [[ $WORKDIR =~ ^gs://([^/]+)/(.*[^/]) ]] \
        || die "--workdir=$WORKDIR: give a folder in the bucket, gs://BUCKET/PATH"
      BUCKET=${BASH_REMATCH[1]} RUN_WORKDIR=/gcs/${BASH_REMATCH[1]}/${BASH_REMATCH[2]}
    else
      RUN_WORKDIR=$WORKDIR
      [[ $WORKDIR == /* ]] || die "--workdir=$WORKDIR: give gs://BUCKET/PATH or an absolute path"
      if [[ -n $NFS ]]; then
        [[ $NFS =~ ^[^:/]+:/ ]] || die "--nfs=$NFS: give SERVER:/EXPORT, e.g. --nfs=10.0.0.2:/share"
        [[ $WORKDIR == "$NFS_MOUNT"/?* ]] \
          || die "--workdir=$WORKDIR: with --nfs the workdir is under $NFS_MOUNT/, where every worker mounts $NFS"
      elif ((WORKERS > 1)); then
        die "--workdir=$WORKDIR: each of the $WORKERS workers of a $ACCELERATOR slice has its own disk; give --workdir=gs://BUCKET/PATH (gcsfuse on every worker), or --nfs=SERVER:/EXPORT and --workdir=$NFS_MOUNT/PATH"
      elif [[ $SUB == babysit ]]; then
        die "--workdir=$WORKDIR: babysit recreates the slice, and a local workdir (its checkpoints) goes with it; give --workdir=gs://BUCKET/PATH, or --nfs=SERVER:/EXPORT and --workdir=$NFS_MOUNT/PATH"
      fi
    fi ;;
esac
if [[ $SUB == run || $SUB == babysit || $CHECK_FIT == 1 ]]; then
  required CONFIG
  [[ -f ${CONFIG%%:*} ]] || die "--config=$CONFIG: no such file; give it relative to the repository root, as the workers see it"
fi
need gcloud "install the Google Cloud CLI (https://cloud.google.com/sdk/docs/install), then gcloud auth login"

# ------------------------------------------------------------------ steps

slice_state() {   # ACTIVE, WAITING_FOR_RESOURCES, SUSPENDED, ...; '' if there is no such
  local out name state   # slice; '?' if gcloud failed (its error is on stderr)
  out=$(run gcloud compute tpus queued-resources list "${LOC[@]}" \
    --format='value(name.basename(),state.state)') || { echo '?'; return; }
  while IFS=$'\t' read -r name state; do
    if [[ $name == "$NAME" ]]; then echo "$state"; fi
  done <<<"$out"
}

exit_status() {   # ncalm.main's exit status on worker 0; '' while it runs (or if ssh fails)
  local out
  out=$(run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 \
    --command='cat ~/ncalm-run.exit 2>/dev/null || true' 2>/dev/null) || true
  out=${out//$'\r'/}   # (a terminal ssh ends lines with \r\n)
  out=${out##*$'\n'}
  [[ ! $out =~ ^[0-9]+$ ]] || echo "$out"
}

check_fit() {   # python3 -m ncalm.dryrun --require_fit for this accelerator, if it knows it
  local target=${ACCELERATOR/#v5litepod-/v5e-} known arg overrides=()
  known=$(python3 -c 'from ncalm import perf; print(*perf.TARGETS)') \
    || die "--check_fit: python3 here cannot import ncalm; pip install -e . in this checkout, or drop --check_fit"
  if [[ " $known " != *" $target "* ]]; then
    say "warning: --check_fit skipped: ncalm.dryrun has no target $target (it has: $known)"
    return
  fi
  for arg in "${EXTRA[@]}"; do
    if [[ $arg == --config.* ]]; then overrides+=("$arg"); fi
  done
  run python3 -m ncalm.dryrun --config="$CONFIG" "${overrides[@]}" --targets="$target" \
    --nolower --require_fit \
    || die "--check_fit: $CONFIG does not fit $ACCELERATOR (the error above names a mesh that does: give it after --); nothing was created"
}

read_state() {   # STATE=$(slice_state), where a gcloud failure ends the command
  STATE=$(slice_state)
  [[ $STATE != '?' ]] || die "--zone=$ZONE: gcloud could not list the queued resources there (its error is above); check the zone's name, --project and gcloud auth login"
}

check_new_name() {
  read_state
  [[ -z $STATE ]] || die "--name=$NAME: a queued resource $NAME exists already in $ZONE ($STATE); give another --name, or delete it: launch/tpu.sh down --name=$NAME --zone=$ZONE"
}

check_zone() {
  local types
  types=$(run gcloud compute tpus tpu-vm accelerator-types list "${LOC[@]}" --format='value(type)') \
    || die "--zone=$ZONE: gcloud could not list the zone's TPU types (its error is above); check the zone's name and the project"
  if [[ $DRY_RUN == 1 ]]; then
    note "dry run: assuming $ZONE offers $ACCELERATOR"
  elif ! grep -qx -e "$ACCELERATOR" <<<"$types"; then
    die "--accelerator=$ACCELERATOR: zone $ZONE does not offer it; give a --zone that does (gcloud compute tpus tpu-vm accelerator-types list --zone=ZONE) or another --accelerator"
  fi
}

check_bucket() {
  [[ -n $BUCKET ]] || return 0
  run gcloud storage buckets describe "gs://$BUCKET" --format='value(name)' >/dev/null \
    || die "--workdir=$WORKDIR: bucket gs://$BUCKET is missing or not readable (the error above); create it in the slice's region (gcloud storage buckets create gs://$BUCKET --location=REGION) or fix the name"
}

create() {
  local how=()
  if ((SPOT)); then how+=(--spot); fi
  if ((RESERVED)); then how+=(--reserved); fi
  if [[ -n $BUCKET ]]; then how+=(--scopes=https://www.googleapis.com/auth/cloud-platform); fi
  run gcloud compute tpus queued-resources create "$NAME" "${LOC[@]}" --node-id="$NAME" \
    --accelerator-type="$ACCELERATOR" --runtime-version="$RUNTIME_VERSION" "${how[@]}"
  OURS=1
}

wait_active() {
  local start=$SECONDS state
  while :; do
    state=$(slice_state)
    if [[ $DRY_RUN == 1 ]]; then
      note "dry run: assuming $NAME becomes ACTIVE (checked every $POLL s)"
      return
    fi
    case $state in
      ACTIVE) return ;;
      FAILED | SUSPENDING | SUSPENDED | DELETING | '')
        fail "slice $NAME is ${state:-gone} instead of ACTIVE; why: gcloud compute tpus queued-resources describe $NAME --zone=$ZONE" ;;
    esac   # or '?': gcloud failed this time; ask again
    ((TIMEOUT == 0 || SECONDS - start < TIMEOUT)) \
      || fail "--timeout=$TIMEOUT: $NAME is still $state; try another --zone, --reserved or a longer --timeout"
    say "waiting for $NAME to become ACTIVE: $state after $((SECONDS - start)) s"
    sleep "$POLL"
  done
}

TARBALL=${TMPDIR:-/tmp}/ncalm-$NAME.tar.gz
pack_code() {   # this checkout as git sees it: tracked and untracked files, not ignored ones
  local files=(git ls-files -z --cached --others --exclude-standard)
  local pack=(tar -czf "$TARBALL" --null --ignore-failed-read -T -)
  echo "+ $(quote "${files[@]}") | $(quote "${pack[@]}")" >&3
  [[ $DRY_RUN == 1 ]] || "${files[@]}" | "${pack[@]}"
}

setup_workers() {   # copy the packed code to every worker, then launch/worker.sh setup there
  local storage='' unpack='rm -rf ~/ncalm && mkdir ~/ncalm && tar -xzf /tmp/ncalm.tar.gz -C ~/ncalm'
  if [[ -n $BUCKET ]]; then storage=" $(quote --bucket="$BUCKET")"; fi
  if [[ -n $NFS ]]; then storage=" $(quote --nfs="$NFS")"; fi
  run gcloud compute tpus tpu-vm scp "$TARBALL" "$NAME:/tmp/ncalm.tar.gz" "${LOC[@]}" --worker=all
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all \
    --command="$unpack && bash ~/ncalm/launch/worker.sh setup$storage"
}

start_run() {   # the same command on every worker, in the background
  local flags
  flags=$(quote --config="$CONFIG" --workdir="$RUN_WORKDIR" --distributed "${EXTRA[@]}")
  run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=all \
    --command="bash ~/ncalm/launch/worker.sh start $flags"
}

delete_slice() {
  run gcloud compute tpus queued-resources delete "$NAME" "${LOC[@]}" --force --quiet && OURS=0
}

up_slice() {   # after check_new_name
  check_zone
  check_bucket
  pack_code
  create
  wait_active
  setup_workers
}

# A slice this command created (or babysits) is deleted when it exits, unless --keep.
OURS=0
on_exit() {
  local status=$?
  if ((OURS && !KEEP)); then
    say "deleting the slice $NAME (--keep keeps it)"
    delete_slice || say "could not delete $NAME; see launch/tpu.sh status --name=$NAME --zone=$ZONE"
  elif ((OURS)); then
    say "--keep: $NAME is left as it is, billed while it exists; delete it with launch/tpu.sh down --name=$NAME --zone=$ZONE"
  fi
  exit "$status"
}
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

babysit() {
  local state code why restarts=0
  read_state
  case $STATE in
    '') up_slice ;;
    ACTIVE) say "$NAME exists and is ACTIVE: running on it as it is (set up by up)"
      pack_code ;;   # for the restarts
    *) die "--name=$NAME: the slice exists and is $STATE; delete it first: launch/tpu.sh down --name=$NAME --zone=$ZONE" ;;
  esac
  OURS=1
  start_run
  while :; do
    [[ $DRY_RUN == 1 ]] || sleep "$POLL"
    state=$(slice_state)
    if [[ $DRY_RUN == 1 ]]; then state=ACTIVE; fi
    if [[ $state == '?' ]]; then
      continue   # gcloud failed this time (its error is above): not a preemption
    elif [[ $state == ACTIVE ]]; then
      code=$(exit_status)
      if [[ $DRY_RUN == 1 ]]; then
        note "dry run: assuming ncalm.main finished (exit status 0); until it has, these two checks repeat every $POLL s"
        code=0
      fi
      case $code in
        '') continue ;;
        0) say "ncalm.main finished"; exit 0 ;;
      esac
      run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 \
        --command='tail -n 20 ~/ncalm-run.log' >&2 || true
      if [[ $code == 2 || $code == 3 ]]; then
        say "error: ncalm.main exited with status $code (2: refused, 3: non-finite loss; the end of its log is above): not rerun, it would end the same way"
        exit "$code"
      fi
      why="ncalm.main exited with status $code"
    else
      why="the slice is ${state:-gone} (preempted?)"
    fi
    ((restarts < MAX_RESTARTS)) \
      || fail "$why after $restarts restarts: giving up (--max_restarts=$MAX_RESTARTS); the workdir keeps the latest checkpoint, babysit again to resume"
    restarts=$((restarts + 1))
    say "$why: restart $restarts of $MAX_RESTARTS: delete the slice, create it again, set it up, rerun"
    if [[ -n $state ]]; then delete_slice; fi
    create
    wait_active
    setup_workers   # the code packed at the start: the same run, whatever is edited here
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker=0 \
      --command="rm -f $(quote "$RUN_WORKDIR/$LOCK")"   # its owner died with the old slice
    start_run
  done
}

logs() {
  local n i
  if [[ -z $COLLECT ]]; then
    run gcloud compute tpus tpu-vm ssh "$NAME" "${LOC[@]}" --worker="$WORKER" \
      --command='tail -n 100 -F ~/ncalm-run.log'
    return
  fi
  n=$(run gcloud compute tpus tpu-vm describe "$NAME" "${LOC[@]}" \
    --format='value(networkEndpoints.len())')
  if [[ $DRY_RUN == 1 ]]; then
    n=${WORKERS:-1}
    note "dry run: assuming $n worker(s): one per 4 chips of --accelerator on a multi-host slice, else 1"
  fi
  run mkdir -p "$COLLECT"
  for ((i = 0; i < n; i++)); do
    run gcloud compute tpus tpu-vm scp "$NAME:ncalm-run.log" "$COLLECT/worker_$i.log" "${LOC[@]}" \
      --worker="$i" || say "worker $i: no log copied"
  done
}

status() {
  local code
  read_state
  if [[ $DRY_RUN == 1 ]]; then
    note "dry run: when the slice is ACTIVE, also:"
    exit_status
    return
  fi
  echo "slice $NAME in $ZONE: ${STATE:-none}"
  [[ $STATE == ACTIVE ]] || return 0
  code=$(exit_status)
  if [[ -n $code ]]; then
    echo "ncalm.main on worker 0: ended with exit status $code"
  else
    echo "ncalm.main on worker 0: running, or not started"
  fi
}

# ------------------------------------------------------------------ main

case $SUB in
  up)
    if ((CHECK_FIT)); then check_fit; fi
    check_new_name
    up_slice
    OURS=0
    say "$NAME is ready; start the run with: launch/tpu.sh run ... --config=CONFIG" ;;
  setup)
    pack_code
    setup_workers ;;
  run)
    start_run
    say "started; follow it with launch/tpu.sh logs --name=$NAME --zone=$ZONE, or status" ;;
  babysit)
    if ((CHECK_FIT)); then check_fit; fi
    babysit ;;
  logs) logs ;;
  status) status ;;
  down) delete_slice ;;
esac
