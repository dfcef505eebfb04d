#!/usr/bin/env bash
# slurm_local.sh - a single-node SLURM cluster on localhost, for tests, CI and trying sweeps on a laptop.
#
#   bash launch/slurm_local.sh up              install what is missing (apt-get), configure, start, wait for the node
#   bash launch/slurm_local.sh down            cancel jobs and stop the daemons this script started
#   bash launch/slurm_local.sh down --purge    ... and delete the state folder and the accounting database
#   bash launch/slurm_local.sh status          daemons, sinfo, squeue
#
# Debian/Ubuntu, root (or passwordless sudo). No systemd and no cgroups needed: proctrack/linuxproc +
# task/none. Accounting goes through slurmdbd + MariaDB so `sacct` (which submitit polls) knows job states.
# AuthInfo=cred_expire keeps the delay before a requeued job may start again short.
# Idempotent: `up` on a running cluster only restarts daemons when the generated config changed.
#
# Settings (environment, defaults in brackets):
#   USJEPA_SLURM_DIR          state, spool, logs, pid files               [/tmp/usjepa-slurm]
#   USJEPA_SLURM_CONF_DIR     where slurm.conf / slurmdbd.conf are written [/etc/slurm]
#   USJEPA_SLURM_PARTITION    name of the one partition                   [debug]
#   USJEPA_SLURM_CPUS         CPUs to advertise; more than the real count oversubscribes,
#                             so small test jobs run side by side        [max(real, 8)]
#   USJEPA_SLURM_ACCOUNTING   1: slurmdbd + MariaDB; 0: no accounting     [1]
#   USJEPA_SLURM_CRED_EXPIRE  seconds (also the minimum requeue delay)    [10]
#   USJEPA_SLURM_WAIT         seconds to wait for each daemon             [120]
set -euo pipefail

ACTION=${1:-up}
PURGE=0
[[ ${2:-} == --purge ]] && PURGE=1
STATE=${USJEPA_SLURM_DIR:-/tmp/usjepa-slurm}
CONF_DIR=${USJEPA_SLURM_CONF_DIR:-/etc/slurm}
PARTITION=${USJEPA_SLURM_PARTITION:-debug}
ACCOUNTING=${USJEPA_SLURM_ACCOUNTING:-1}
CRED_EXPIRE=${USJEPA_SLURM_CRED_EXPIRE:-10}
WAIT_S=${USJEPA_SLURM_WAIT:-120}
DB_USER=slurm
DB_PASS=usjepa-local
DB_NAME=slurm_acct_db
export SLURM_CONF=$CONF_DIR/slurm.conf

say() { printf '[slurm_local %(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
fail() { say "error: $*"; exit 1; }

if [[ $EUID -ne 0 ]]; then
  command -v sudo >/dev/null 2>&1 || fail "run as root (or install sudo): the daemons and apt-get need it"
  exec sudo -E bash "$0" "$@"
fi
command -v apt-get >/dev/null 2>&1 || fail "needs a Debian/Ubuntu system with apt-get"

# retry_until SECONDS WHAT CMD... : run CMD every half second until it succeeds
retry_until() {
  local limit=$1 what=$2
  shift 2
  local deadline=$((SECONDS + limit))
  while ! "$@" >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail "gave up after ${limit}s waiting for $what (logs: $STATE/log)"
    sleep 0.5
  done
}

# running PIDFILE COMM : the pid in PIDFILE is a live (non-zombie) process whose name starts with COMM
running() {
  local pid
  pid=$(cat "$1" 2>/dev/null) || return 1
  [[ -n $pid && -r /proc/$pid/stat ]] || return 1
  [[ $(cut -d' ' -f3 "/proc/$pid/stat" 2>/dev/null) != Z ]] || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == "$2"* ]]
}

# stop PIDFILE COMM : TERM that one pid, KILL it after 30 s
stop() {
  running "$1" "$2" || return 0
  local pid
  pid=$(cat "$1")
  say "stopping $2 ($pid)"
  kill -TERM "$pid" 2>/dev/null || true
  for _ in $(seq 60); do
    running "$1" "$2" || return 0
    sleep 0.5
  done
  say "$2 ignored TERM; killing it"
  kill -KILL "$pid" 2>/dev/null || true
}

ensure_packages() {
  local want=(munge slurmctld slurmd slurm-client) need=()
  [[ $ACCOUNTING == 1 ]] && want+=(slurmdbd mariadb-server)
  for p in "${want[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || need+=("$p")
  done
  ((${#need[@]})) || return 0
  say "apt-get install ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
}

ensure_munge() {
  install -d -o munge -g munge -m 0755 /run/munge
  if [[ ! -s /etc/munge/munge.key ]]; then
    mungekey --create --keyfile=/etc/munge/munge.key >/dev/null 2>&1 ||
      head -c 1024 /dev/urandom >/etc/munge/munge.key
  fi
  chown munge:munge /etc/munge/munge.key
  chmod 0400 /etc/munge/munge.key
  munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && return 0
  say "starting munged"
  runuser -u munge -- /usr/sbin/munged
  touch "$STATE/ours-munged"
  retry_until 30 munged bash -c 'munge -n | unmunge'
}

ensure_mariadb() {
  if ! mysqladmin ping --silent >/dev/null 2>&1; then
    say "starting mariadb"
    /etc/init.d/mariadb start >/dev/null
    touch "$STATE/ours-mariadb"
    retry_until 60 mariadb mysqladmin ping --silent
  fi
  mysql -e "CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
            GRANT ALL ON $DB_NAME.* TO '$DB_USER'@'localhost'; FLUSH PRIVILEGES;"
}

# render_configs SLURM_CONF DBD_CONF : write candidate configs for this host
render_configs() {
  local host probe field cpus mem node_line overrides=""
  host=$(hostname -s)
  probe=$(slurmd -C | head -1)   # NodeName=h CPUs=2 Boards=1 SocketsPerBoard=1 CoresPerSocket=2 ThreadsPerCore=1 RealMemory=N
  field() { grep -o " $1=[0-9]*" <<<"$probe" | cut -d= -f2; }
  cpus=$(field CPUs)
  mem=$(($(field RealMemory) * 95 / 100))   # a little headroom, or the node drains for "Low RealMemory"
  local advertise=${USJEPA_SLURM_CPUS:-$((cpus > 8 ? cpus : 8))}
  if [[ $advertise == "$cpus" ]]; then
    node_line="NodeName=$host NodeAddr=127.0.0.1 CPUs=$cpus Boards=$(field Boards) SocketsPerBoard=$(field SocketsPerBoard)"
    node_line+=" CoresPerSocket=$(field CoresPerSocket) ThreadsPerCore=$(field ThreadsPerCore) RealMemory=$mem State=UNKNOWN"
  else
    node_line="NodeName=$host NodeAddr=127.0.0.1 CPUs=$advertise RealMemory=$mem State=UNKNOWN"
    overrides="SlurmdParameters=config_overrides"
  fi
  local storage="AccountingStorageType=accounting_storage/none"
  if [[ $ACCOUNTING == 1 ]]; then
    storage=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost'
  fi
  cat >"$1" <<EOF
# written by launch/slurm_local.sh: one node on localhost, no systemd, no cgroups
ClusterName=usjepa-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=cred_expire=$CRED_EXPIRE
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
$storage
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=5,bf_interval=5
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=1024
ReturnToService=2
$overrides
StateSaveLocation=$STATE/state
SlurmdSpoolDir=$STATE/spool
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$node_line
PartitionName=$PARTITION Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
  cat >"$2" <<EOF
# written by launch/slurm_local.sh
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
LogFile=$STATE/log/slurmdbd.log
PidFile=$STATE/slurmdbd.pid
EOF
}

ctld_answers() { timeout 15 scontrol ping 2>/dev/null | grep -q "is UP"; }
node_state() { sinfo -h -n "$(hostname -s)" -o %T 2>/dev/null | head -1; }
node_usable() { [[ $(node_state) =~ ^(idle|mixed|allocated|completing)$ ]]; }

stop_slurm() {
  if running "$STATE/slurmctld.pid" slurmctld && ctld_answers; then
    local ids
    ids=$(squeue -h -o %A 2>/dev/null | sort -u | xargs)
    if [[ -n $ids ]]; then
      say "cancelling jobs: $ids"
      # shellcheck disable=SC2086
      scancel $ids 2>/dev/null || true
      for _ in $(seq 60); do
        [[ -z $(squeue -h -o %A 2>/dev/null) ]] && break
        sleep 0.5
      done
    fi
    scontrol shutdown >/dev/null 2>&1 || true
  fi
  stop "$STATE/slurmd.pid" slurmd
  stop "$STATE/slurmctld.pid" slurmctld
  stop "$STATE/slurmdbd.pid" slurmdbd
}

cmd_up() {
  local start=$SECONDS
  ensure_packages
  mkdir -p "$STATE/state" "$STATE/spool" "$STATE/log" "$CONF_DIR"
  ensure_munge
  local cand=$STATE/slurm.conf.candidate dbd=$STATE/slurmdbd.conf.candidate
  render_configs "$cand" "$dbd"
  local changed=0
  cmp -s "$cand" "$CONF_DIR/slurm.conf" || changed=1
  if [[ $ACCOUNTING == 1 ]] && ! cmp -s "$dbd" "$CONF_DIR/slurmdbd.conf"; then changed=1; fi
  if ((changed)); then
    say "writing $CONF_DIR/slurm.conf (new or changed)"
    stop_slurm
    install -m 0644 "$cand" "$CONF_DIR/slurm.conf"
    [[ $ACCOUNTING == 1 ]] && install -m 0600 "$dbd" "$CONF_DIR/slurmdbd.conf"
  fi
  rm -f "$cand" "$dbd"
  if [[ $ACCOUNTING == 1 ]]; then
    ensure_mariadb
    if ! running "$STATE/slurmdbd.pid" slurmdbd; then
      say "starting slurmdbd"
      slurmdbd
      retry_until "$WAIT_S" slurmdbd sacctmgr -n list cluster
    fi
  fi
  if ! running "$STATE/slurmctld.pid" slurmctld; then
    say "starting slurmctld"
    slurmctld
    retry_until "$WAIT_S" slurmctld ctld_answers
  fi
  if ! running "$STATE/slurmd.pid" slurmd; then
    say "starting slurmd"
    slurmd
  fi
  local deadline=$((SECONDS + WAIT_S)) st
  until node_usable; do
    st=$(node_state)
    if [[ $st == *drain* || $st == down* ]]; then
      scontrol update nodename="$(hostname -s)" state=resume >/dev/null 2>&1 || true
    fi
    ((SECONDS < deadline)) || { sinfo -R >&2; fail "node not usable after ${WAIT_S}s (state: ${st:-unknown})"; }
    sleep 0.5
  done
  say "up in $((SECONDS - start))s: $(sinfo -h -o '%P %a %D nodes %T %c cpus %m MB')"
}

cmd_down() {
  stop_slurm
  if [[ -e $STATE/ours-mariadb ]] && mysqladmin ping --silent >/dev/null 2>&1; then
    ((PURGE)) && { mysql -e "DROP DATABASE IF EXISTS $DB_NAME;" || true; }
    say "stopping mariadb"
    /etc/init.d/mariadb stop >/dev/null || true
  fi
  rm -f "$STATE/ours-mariadb"
  if [[ -e $STATE/ours-munged ]]; then stop /run/munge/munged.pid munged; fi
  rm -f "$STATE/ours-munged"
  if ((PURGE)); then
    say "removing $STATE"
    rm -rf "$STATE"
  fi
  say "down"
}

cmd_status() {
  local entry name pidfile
  for entry in munged:/run/munge/munged.pid slurmdbd:$STATE/slurmdbd.pid \
    slurmctld:$STATE/slurmctld.pid slurmd:$STATE/slurmd.pid; do
    name=${entry%%:*}
    pidfile=${entry#*:}
    if running "$pidfile" "$name"; then echo "$name: running ($(cat "$pidfile"))"; else echo "$name: stopped"; fi
  done
  if running "$STATE/slurmctld.pid" slurmctld && ctld_answers; then
    sinfo
    squeue
  else
    echo "slurmctld is not answering"
  fi
}

case $ACTION in
  up) cmd_up ;;
  down) cmd_down ;;
  status) cmd_status ;;
  *) fail "usage: bash launch/slurm_local.sh up | down [--purge] | status" ;;
esac
