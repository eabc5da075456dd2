#!/usr/bin/env bash
# Runs on each TPU worker, from the code launch/tpu.sh copied to ~/ncalm:
#
#   bash ~/ncalm/launch/worker.sh setup [--bucket=BUCKET | --nfs=SERVER:/EXPORT]
#   bash ~/ncalm/launch/worker.sh start NCALM_MAIN_FLAGS...
#
# setup  mounts the workdir's storage (gs://BUCKET with gcsfuse at /gcs/BUCKET, or the NFS
#        share at /mnt/ncalm-nfs), installs Python 3.11 if it is missing (ncalm needs 3.11;
#        the TPU VM images have 3.10) and makes the venv ~/ncalm-venv with jax[tpu] and
#        ncalm (pip install -e ~/ncalm).
# start  starts `python -m ncalm.main NCALM_MAIN_FLAGS` from ~/ncalm in the background,
#        detached from the ssh session; its output is appended to ~/ncalm-run.log, and when
#        it ends its exit status is written to ~/ncalm-run.exit (removed first), which
#        launch/tpu.sh babysit and status read. It refuses while the last one still runs.
set -euo pipefail

VENV=~/ncalm-venv
EXIT_FILE=~/ncalm-run.exit
PID_FILE=~/ncalm-run.pid

apt_install() {   # the VM's boot-time package updates may hold the lock for a while
  sudo apt-get -o DPkg::Lock::Timeout=600 update -q
  sudo apt-get -o DPkg::Lock::Timeout=600 install -y -q "$@"
}

mount_bucket() {
  local bucket=$1 dir=/gcs/$1
  if ! command -v gcsfuse >/dev/null; then   # cloud.google.com/storage/docs/cloud-storage-fuse/install
    echo "deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-$(lsb_release -cs) main" \
      | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
    curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg \
      | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
    apt_install gcsfuse
  fi
  sudo mkdir -p "$dir"
  sudo chown "$(id -un)" "$dir"
  # orbax writes a checkpoint to a temporary folder, then renames it: gcsfuse renames a
  # folder only if it holds fewer objects than --rename-dir-limit (default 0).
  mountpoint -q "$dir" || gcsfuse --implicit-dirs --rename-dir-limit=100000 "$bucket" "$dir"
}

mount_nfs() {
  command -v mount.nfs >/dev/null || apt_install nfs-common
  sudo mkdir -p /mnt/ncalm-nfs
  mountpoint -q /mnt/ncalm-nfs || sudo mount -t nfs "$1" /mnt/ncalm-nfs
}

setup() {
  case ${1:-} in
    --bucket=*) mount_bucket "${1#*=}" ;;
    --nfs=*) mount_nfs "${1#*=}" ;;
    '') ;;
    *) echo "worker.sh setup: unknown argument $1" >&2; exit 2 ;;
  esac
  python3.11 -c 'import ensurepip' 2>/dev/null || apt_install python3.11 python3.11-venv
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q -U pip
  "$VENV/bin/pip" install -q -U "jax[tpu]" -e ~/ncalm
}

start() {
  if [[ -f $PID_FILE ]] && kill -0 "$(cat "$PID_FILE")" 2>/dev/null; then
    echo "worker.sh start: ncalm.main is running already on $(hostname) (process $(cat "$PID_FILE")): wait for it or stop it first" >&2
    exit 2
  fi
  rm -f "$EXIT_FILE"
  setsid nohup bash "$0" run "$@" >>~/ncalm-run.log 2>&1 </dev/null &
  echo "$!" >"$PID_FILE"
}

run() {   # (start's background job)
  local status=0
  cd ~/ncalm
  echo "== $(date -u '+%F %T UTC') on $(hostname): python -m ncalm.main $*"
  "$VENV/bin/python" -m ncalm.main "$@" || status=$?
  echo "== $(date -u '+%F %T UTC'): exit status $status"
  echo "$status" >"$EXIT_FILE.tmp"
  mv "$EXIT_FILE.tmp" "$EXIT_FILE"
}

case ${1:-} in
  setup | start | run) "$@" ;;
  *) echo "usage: worker.sh setup [--bucket=BUCKET | --nfs=SERVER:/EXPORT] | start FLAGS..." >&2
     exit 2 ;;
esac
