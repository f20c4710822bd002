#!/usr/bin/env bash
# Stop the one-node cluster of .ci/slurm/start.sh: cancel every job, then stop
# slurmd, slurmctld, slurmdbd, MariaDB and munge, in that order, by their pid
# files. Idempotent and quiet; a daemon that will not stop is one line naming
# it and its log (exit 1). Packages, configuration and the database stay, so
# the next start.sh takes seconds.
set -uo pipefail

D=${SLURM_CI_DIR:-/tmp/slurm-ci}
failed=0

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

# Jobs first, while slurmctld and slurmd can still end them.
if alive "$D/run/slurmctld.pid" && command -v scancel >/dev/null 2>&1; then
  scancel --me >/dev/null 2>&1
  for _ in $(seq 1 100); do  # up to 20 s for their processes to go (KillWait is 30 s at most)
    [ -z "$(squeue -h --me -o %i 2>/dev/null)" ] && break
    sleep 0.2
  done
fi

signal() {  # signal PIDFILE: SIGTERM to the daemon, if it runs
  alive "$1" && kill "$(cat "$1")" 2>/dev/null
}
stop() {  # stop NAME PIDFILE LOG: SIGTERM, then wait for it to go (SIGKILL after 20 s)
  local pidfile=$2 pid
  alive "$pidfile" || { rm -f "$pidfile"; return 0; }
  pid=$(cat "$pidfile")
  kill "$pid" 2>/dev/null
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || { rm -f "$pidfile"; return 0; }
    sleep 0.2
  done
  kill -9 "$pid" 2>/dev/null
  echo "slurm-ci: $1 (pid $pid) did not stop within 20 s of SIGTERM and was killed; see $3" >&2
  failed=1
}

stop slurmd "$D/run/slurmd.pid" "$D/log/slurmd.log"
stop slurmctld "$D/run/slurmctld.pid" "$D/log/slurmctld.log"
stop slurmdbd "$D/run/slurmdbd.pid" "$D/log/slurmdbd.log"
# nothing needs the database or munge any more: both at once (each takes ~2 s to go)
signal /run/mysqld/mariadbd.pid
stop munged /run/munge/munged.pid /var/log/munge/munged.log
stop mariadbd /run/mysqld/mariadbd.pid "$D/log/mariadb.log"
exit "$failed"
