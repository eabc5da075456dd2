# shellcheck shell=bash
# Helpers sourced by launch/tpu.sh and launch/gpu.sh (set PROG and DRY_RUN first).
#
#   run CMD ARGS...   prints "+ CMD ARGS" (one shell-quoted line) on stdout, then runs it
#                     unless DRY_RUN=1; also inside $(...), whose capture gets only CMD's output
#   note TEXT         prints "# TEXT" there too: what a dry run assumes instead of looking up
#   die TEXT          "PROG: error: TEXT" on stderr, exit 2 (bad input: nothing was started)
#   fail TEXT         the same with exit 1 (something failed on the way)
#   say TEXT          "PROG: TEXT" on stderr (progress)
#   need CMD HOW      die unless CMD is on PATH (skipped in a dry run); HOW says how to get it
#   required VAR...   die unless each flag's variable is set (--work_dir is WORK_DIR)
#   whole VAR...      die unless each flag's value is a whole number
#   usage             prints the script's header comment (its --help)

exec 3>&1   # the script's stdout, for run and note inside $(...)

die() { echo "$PROG: error: $*" >&2; exit 2; }
fail() { echo "$PROG: error: $*" >&2; exit 1; }
say() { echo "$PROG: $*" >&2; }
note() { echo "# $*" >&3; }

# One shell word per argument: bare when it holds only safe characters, else with the
# value (of --flag=value) or the whole word in single quotes.
quote() {
  local words=() arg flag
  for arg in "$@"; do
    flag=''
    if [[ ! $arg =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
      if [[ $arg =~ ^--?[A-Za-z0-9_.-]+= ]]; then
        flag=${BASH_REMATCH[0]} arg=${arg#"$flag"}
      fi
      arg="'${arg//\'/\'\\\'\'}'"
    fi
    words+=("$flag$arg")
  done
  echo "${words[*]}"
}

run() {
  echo "+ $(quote "$@")" >&3
  [[ $DRY_RUN == 1 ]] || "$@"
}

need() {
  [[ $DRY_RUN == 1 ]] || command -v "$1" >/dev/null || die "$1 not found on PATH: $2"
}

required() {
  local var
  for var in "$@"; do
    [[ -n ${!var} ]] || die "--${var,,}=$var is required (see --help)"
  done
}

whole() {
  local var
  for var in "$@"; do
    [[ ${!var} =~ ^[0-9]+$ ]] || die "--${var,,}=${!var}: give a whole number (see --help)"
  done
}

usage() {
  local line
  while IFS= read -r line && [[ $line == '#'* ]]; do
    line=${line#\#}
    [[ $line == '!'* ]] || echo "${line# }"
  done < "$0"
}
