#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, for tests/cluster (pytest -m slurm).
#
#   bash .ci/slurm/start.sh     # prints one line: how long it took
#   bash .ci/slurm/stop.sh
#
# Debian 12's Slurm (22.05) with accounting (MariaDB + slurmdbd), munge, CPU
# binding (task/affinity), one core and 1 GiB per CPU by default, and two
# partitions on the one node: `debug` (default) and `urgent`, whose jobs
# preempt debug jobs, which are requeued (PreemptMode=REQUEUE).
# Idempotent: packages are installed when missing, a daemon already running is
# left alone. Quiet unless something fails; a failure is one line naming the
# daemon and its log, and exit 1.
#
# Configuration: /etc/slurm (the clients' default, so sinfo/sbatch/sacct need
# no SLURM_CONF); state, logs, pid files and the database: $SLURM_CI_DIR
# (default /tmp/slurm-ci). A slurm.conf not written by this script is never
# overwritten. SLURM_CI_FAKE_GPUS=N gives the node N fake GPUs (gres "gpu",
# plain files as devices) so that GPU requests are accepted on a CPU machine.
# Root only (it installs packages and starts daemons).
set -uo pipefail

D=${SLURM_CI_DIR:-/tmp/slurm-ci}
ETC=/etc/slurm
MARK="# written by .ci/slurm/start.sh"
HOST=$(hostname -s)
FAKE_GPUS=${SLURM_CI_FAKE_GPUS:-0}
start=$(date +%s%3N)

die() { echo "slurm-ci: $*" >&2; exit 1; }
alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
wait_for() {  # wait_for SECONDS CMD...: true once CMD succeeds
  local until=$(( $(date +%s) + $1 )); shift
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -ge "$until" ] && return 1
    sleep 0.2
  done
}

[ "$(id -u)" -eq 0 ] || die "start.sh must run as root (it installs packages and starts daemons)"
mkdir -p "$D"/{log,run,state/ctld,state/d} "$ETC" || die "cannot create $D"
if [ -f "$ETC/slurm.conf" ] && ! grep -qF "$MARK" "$ETC/slurm.conf"; then
  die "$ETC/slurm.conf exists and was not written by this script; not touching it"
fi

# -- packages -------------------------------------------------------------------
need=()
for b in munged slurmctld slurmd slurmdbd sbatch mariadbd; do
  command -v "$b" >/dev/null 2>&1 || need+=("$b")
done
if [ "${#need[@]}" -gt 0 ]; then
  { apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
      munge slurm-client slurmctld slurmd slurmdbd mariadb-server; } >"$D/log/apt.log" 2>&1 \
    || die "apt-get install of munge/slurm/mariadb failed (missing: ${need[*]}); see $D/log/apt.log"
fi

# -- munge ------------------------------------------------------------------------
if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
  if [ ! -s /etc/munge/munge.key ]; then
    mkdir -p /etc/munge
    dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none || die "munge: cannot write /etc/munge/munge.key"
    chown munge:munge /etc/munge/munge.key && chmod 400 /etc/munge/munge.key
  fi
  mkdir -p /run/munge /var/log/munge && chown munge:munge /run/munge /var/log/munge
  # munged insists on owning its log (and a folder only it can write): its default one
  runuser -u munge -- /usr/sbin/munged >"$D/log/munged.out" 2>&1 \
    || die "munged did not start: $(tail -1 "$D/log/munged.out"); see /var/log/munge/munged.log"
  wait_for 10 sh -c 'munge -n | unmunge' || die "munged does not answer (munge -n | unmunge); see /var/log/munge/munged.log"
fi

# -- configuration ------------------------------------------------------------------
hw=$(slurmd -C 2>/dev/null | head -1)
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[ -n "$mem" ] || die "slurmd -C did not report the node's memory"
mem=$(( mem - 512 ))  # leave the daemons some room
topo=$(grep -o 'Boards=[0-9]* SocketsPerBoard=[0-9]* CoresPerSocket=[0-9]* ThreadsPerCore=[0-9]*' <<<"$hw")
gres_line="" node_gres="" gres_types=""
if [ "$FAKE_GPUS" -gt 0 ]; then
  gres_types="GresTypes=gpu"
  node_gres="Gres=gpu:$FAKE_GPUS"
  gres_line="NodeName=$HOST Name=gpu File=$D/fake-gpu[0-$((FAKE_GPUS - 1))]"
  for i in $(seq 0 $((FAKE_GPUS - 1))); do : >"$D/fake-gpu$i"; done
fi

write() {  # write PATH MODE: stdin to PATH when it differs; returns 0 when changed
  local tmp; tmp=$(mktemp)
  cat >"$tmp"
  if cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  install -m "$2" "$tmp" "$1" && rm -f "$tmp"
}

changed=0
write "$ETC/slurm.conf" 644 <<EOF && changed=1
$MARK (tests/cluster); rerun it rather than editing this file
ClusterName=ci
SlurmctldHost=$HOST
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# Requeued jobs wait cred_expire seconds before they start again (default 120).
AuthInfo=cred_expire=10
MpiDefault=none
StateSaveLocation=$D/state/ctld
SlurmdSpoolDir=$D/state/d
SlurmctldPidFile=$D/run/slurmctld.pid
SlurmdPidFile=$D/run/slurmd.pid
SlurmctldLogFile=$D/log/slurmctld.log
SlurmdLogFile=$D/log/slurmd.log
# No cgroups in a container: processes tracked by parent id, CPUs bound by affinity.
ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
SchedulerType=sched/backfill
# Look at pending jobs every 2 s (defaults 60 s / 30 s): a requeued job starts soon after it may
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MailProg=/bin/true
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=$HOST
AccountingStorageEnforce=associations,limits,qos
JobAcctGatherType=jobacct_gather/linux
JobCompType=jobcomp/none
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
SlurmdParameters=config_overrides
$gres_types
NodeName=$HOST CPUs=$(nproc) $topo RealMemory=$mem $node_gres State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP PriorityTier=1 PreemptMode=REQUEUE
PartitionName=urgent Nodes=ALL MaxTime=INFINITE State=UP PriorityTier=10 PreemptMode=OFF
EOF
write "$ETC/gres.conf" 644 <<<"$gres_line" && changed=1
write "$ETC/slurmdbd.conf" 600 <<EOF && changed=1
$MARK
AuthType=auth/munge
DbdHost=$HOST
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=slurm
StoragePass=slurm-ci
StorageLoc=slurm_acct_db
LogFile=$D/log/slurmdbd.log
PidFile=$D/run/slurmdbd.pid
EOF

# -- MariaDB (accounting storage; no networking, the default socket) ------------------
MYPID=/run/mysqld/mariadbd.pid  # mariadbd runs as mysql: its pid file and log must be its own
if ! alive "$MYPID"; then
  if [ ! -d "$D/mysql/mysql" ]; then
    mkdir -p "$D/mysql" && chown mysql:mysql "$D/mysql"
    mariadb-install-db --user=mysql --datadir="$D/mysql" >"$D/log/mariadb-install.log" 2>&1 \
      || die "mariadb-install-db failed; see $D/log/mariadb-install.log"
  fi
  mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
  touch "$D/log/mariadb.log" && chown mysql:mysql "$D/log/mariadb.log"
  mariadbd --user=mysql --datadir="$D/mysql" --skip-networking --pid-file="$MYPID" \
    --log-error="$D/log/mariadb.log" >/dev/null 2>&1 &
  wait_for 30 mariadb-admin ping || die "mariadbd does not answer (mariadb-admin ping); see $D/log/mariadb.log"
  mariadb -e "CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurm-ci';
              GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';" >>"$D/log/mariadb.log" 2>&1 \
    || die "mariadbd: cannot create the slurm database user; see $D/log/mariadb.log"
fi

# -- slurmdbd, then the cluster's accounting entry -----------------------------------
restart() {  # restart NAME: stop a running daemon whose configuration changed (started again below)
  local pid
  alive "$D/run/$1.pid" || return 0
  pid=$(cat "$D/run/$1.pid")
  kill "$pid" 2>/dev/null
  wait_for 20 sh -c "! kill -0 $pid" || die "$1 (pid $pid) did not stop for a configuration change; see $D/log/$1.log"
}
[ "$changed" -eq 1 ] && { restart slurmd; restart slurmctld; restart slurmdbd; }
if ! alive "$D/run/slurmdbd.pid"; then
  slurmdbd >>"$D/log/slurmdbd.log" 2>&1 || die "slurmdbd did not start; see $D/log/slurmdbd.log"
fi
wait_for 30 sacctmgr -n show cluster || die "slurmdbd does not answer (sacctmgr show cluster); see $D/log/slurmdbd.log"
if [ -z "$(sacctmgr -n -P show cluster ci format=cluster 2>/dev/null)" ]; then
  sacctmgr -i add cluster ci >>"$D/log/slurmdbd.log" 2>&1 || die "slurmdbd: cannot add cluster ci; see $D/log/slurmdbd.log"
fi

# -- slurmctld, slurmd ----------------------------------------------------------------
if ! alive "$D/run/slurmctld.pid"; then
  slurmctld >>"$D/log/slurmctld.log" 2>&1 || die "slurmctld did not start; see $D/log/slurmctld.log"
fi
wait_for 30 scontrol ping || die "slurmctld does not answer (scontrol ping); see $D/log/slurmctld.log"
if ! alive "$D/run/slurmd.pid"; then
  slurmd >>"$D/log/slurmd.log" 2>&1 || die "slurmd did not start; see $D/log/slurmd.log"
fi
state() { sinfo -h -n "$HOST" -o %T 2>/dev/null | sort -u | head -1; }
up="sinfo -h -n $HOST -o %T | grep -qxE 'idle|mixed|allocated'"  # up; busy when jobs of a run before are still there
if ! wait_for 30 sh -c "$up"; then
  # a node left down or drained by an earlier run: resume it once
  scontrol update nodename="$HOST" state=resume >/dev/null 2>&1
  wait_for 15 sh -c "$up" \
    || die "slurmd: node $HOST is '$(state)', not idle; see $D/log/slurmd.log and $D/log/slurmctld.log"
fi
ms=$(( $(date +%s%3N) - start ))
printf 'slurm-ci: cluster up in %d.%d s (node %s %s, %s CPUs, partitions debug (default) and urgent, logs in %s/log)\n' \
  $((ms / 1000)) $((ms % 1000 / 100)) "$HOST" "$(state)" "$(nproc)" "$D"
