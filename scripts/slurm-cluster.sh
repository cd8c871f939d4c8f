#!/usr/bin/env bash
# A real single-node SLURM cluster (with slurmdbd + MariaDB accounting) for tests and CI.
#
# Usage: scripts/slurm-cluster.sh {install|up|down|status|restart}
#
#   install  apt-get install the packages (no-op when already installed)
#   up       install if needed, write configs, start munged, mariadbd, slurmdbd, slurmctld, slurmd
#            (in that order, each waited for), record their PIDs; no-op when already up and healthy
#   down     cancel all jobs, wait for an empty queue, stop the recorded daemons in reverse order
#   status   show each recorded daemon, sinfo and squeue (exit 0 only when the cluster is healthy)
#   restart  down, then up
#
# State (configs, logs, PIDs, slurm state): ${JIT_SLURM_DIR:-/tmp/jit-slurm}.
# slurm.conf and slurmdbd.conf are also installed into /etc/slurm so every process finds them
# without SLURM_CONF. Why each setting: the comment beside it.
# Daemons are only ever stopped by the PIDs recorded here (never by process name).
set -euo pipefail

STATE_DIR=${JIT_SLURM_DIR:-/tmp/jit-slurm}
LOG_DIR=$STATE_DIR/log
PID_DIR=$STATE_DIR/pids
RUN_DIR=$STATE_DIR/run
SLURM_STATE=$STATE_DIR/state
SLURM_SPOOL=$STATE_DIR/spool
ETC_SLURM=/etc/slurm
CLUSTER_NAME=ci
DB_NAME=slurm_acct_db
DB_USER=slurm
DB_PASS=jitslurm
READY_TIMEOUT=${JIT_SLURM_READY_TIMEOUT:-60}

PKGS=(slurmctld slurmd slurm-client munge slurmdbd mariadb-server)
DAEMONS=(munged mariadbd slurmdbd slurmctld slurmd)  # start order; names equal /proc/PID/comm

log() { printf 'slurm-cluster: %s\n' "$*"; }
warn() { printf 'slurm-cluster: %s\n' "$*" >&2; }
die() { printf 'slurm-cluster: ERROR: %s\n' "$*" >&2; exit 1; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

[[ $(id -u) == 0 ]] || die "must run as root (it installs packages and writes /etc/slurm)"

# ---------------------------------------------------------------------------------------------
# install
# ---------------------------------------------------------------------------------------------
packages_installed() {
  local p s
  for p in "${PKGS[@]}"; do
    s=$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null) || return 1
    [[ $s == installed ]] || return 1
  done
}

cmd_install() {
  if packages_installed; then
    log "packages already installed (${PKGS[*]})"
    return 0
  fi
  mkdir -p "$LOG_DIR"
  local t0 apt_log=$LOG_DIR/apt.log
  t0=$(now)
  export DEBIAN_FRONTEND=noninteractive
  : >"$apt_log"
  if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
    apt-get update -qq >>"$apt_log" 2>&1 || { tail -n 20 "$apt_log" >&2; die "apt-get update failed"; }
  fi
  if ! apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >>"$apt_log" 2>&1; then
    log "install failed; retrying after apt-get update"
    apt-get update -qq >>"$apt_log" 2>&1 || true
    apt-get install -y -qq --no-install-recommends "${PKGS[@]}" >>"$apt_log" 2>&1 \
      || { tail -n 30 "$apt_log" >&2; die "apt-get install failed (full log: $apt_log)"; }
  fi
  log "installed ${PKGS[*]} in $(elapsed "$t0")s"
}

# ---------------------------------------------------------------------------------------------
# PIDs: recorded in $PID_DIR/<daemon>.pid; a PID counts only if that process is alive (not a
# zombie) and its /proc comm is the daemon's name, so a recycled PID is never touched.
# ---------------------------------------------------------------------------------------------
own_pidfile() {  # where the daemon itself writes its PID
  case $1 in
    munged) echo /run/munge/munged.pid ;;
    mariadbd) echo /run/mysqld/mysqld.pid ;;
    *) echo "$RUN_DIR/$1.pid" ;;
  esac
}

daemon_log() {
  case $1 in
    munged) echo /var/log/munge/munged.log ;;
    mariadbd) echo "$LOG_DIR/mariadb.log" ;;
    *) echo "$LOG_DIR/$1.log" ;;
  esac
}

pid_alive() {  # PID exists and is not a zombie (PID 1 here does not reap orphans)
  local stat
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  [[ ${stat%% *} != Z ]]
}

pid_is() {  # pid_is PID NAME: PID is a live process named NAME
  [[ $1 =~ ^[0-9]+$ ]] || return 1
  [[ $(cat "/proc/$1/comm" 2>/dev/null) == "$2" ]] && pid_alive "$1"
}

read_pid() { if [[ -r $1 ]]; then tr -dc '0-9' <"$1" 2>/dev/null || true; fi; }

recorded_pid() {  # the recorded PID if that daemon is alive, else nothing
  local pid
  pid=$(read_pid "$PID_DIR/$1.pid")
  if [[ -n $pid ]] && pid_is "$pid" "$1"; then echo "$pid"; fi
}

live_pid() {  # recorded PID, or the daemon's own pid file (adopts a daemon we did not record)
  local pid
  pid=$(recorded_pid "$1")
  if [[ -z $pid ]]; then
    pid=$(read_pid "$(own_pidfile "$1")")
    [[ -n $pid ]] && pid_is "$pid" "$1" || pid=
  fi
  echo "$pid"
}

record_pid() {  # record_pid NAME [fallback PID]
  local name=$1 pid
  pid=$(read_pid "$(own_pidfile "$name")")
  if [[ -z $pid ]] || ! pid_is "$pid" "$name"; then pid=${2:-}; fi
  if [[ -z $pid ]] || ! pid_is "$pid" "$name"; then
    fail_daemon "$name" "started but its PID could not be found"
  fi
  echo "$pid" >"$PID_DIR/$name.pid"
}

# ---------------------------------------------------------------------------------------------
# readiness checks
# ---------------------------------------------------------------------------------------------
tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

node_state() { timeout 5 sinfo -h -o %t 2>/dev/null | head -n 1 | tr -d ' ' || true; }

ready() {
  case $1 in
    munged) munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1 ;;
    mariadbd) mariadb-admin --connect-timeout=2 ping >/dev/null 2>&1 ;;
    slurmdbd) tcp_open 6819 ;;
    slurmctld) [[ $(timeout 5 scontrol ping 2>/dev/null) == *'is UP'* ]] ;;
    slurmd) [[ $(node_state) =~ ^(idle|mix|alloc|comp)$ ]] ;;
  esac
}

fail_daemon() {  # fail_daemon NAME MESSAGE: error with the daemon's log tail
  local logf
  logf=$(daemon_log "$1")
  warn "ERROR: $1 $2"
  if [[ -r $logf ]]; then
    warn "---- last lines of $logf ----"
    tail -n 25 "$logf" >&2 || true
    warn "----"
  fi
  exit 1
}

wait_ready() {  # wait_ready NAME [PID]: wait for the readiness check; fail early if PID dies
  local name=$1 pid=${2:-} deadline=$((SECONDS + READY_TIMEOUT)) resumed=0 st
  while ! ready "$name"; do
    # (by PID only: a just-launched child may not have exec'd its daemon yet, its name is still bash)
    if [[ -n $pid ]] && ! pid_alive "$pid" && [[ -z $(live_pid "$name") ]]; then
      fail_daemon "$name" "exited during start-up"
    fi
    if [[ $name == slurmd && $resumed == 0 ]]; then
      st=$(node_state)
      # a responding node left down/drained by an earlier session: put it back in service
      if [[ $st =~ ^(down|drain|drng|fail)$ ]]; then
        scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true
        resumed=1
      fi
    fi
    ((SECONDS < deadline)) || fail_daemon "$name" "not ready after ${READY_TIMEOUT}s"
    sleep 0.2
  done
}

# ---------------------------------------------------------------------------------------------
# configuration
# ---------------------------------------------------------------------------------------------
node_line() {
  local line
  line=$(slurmd -C 2>/dev/null | grep '^NodeName=') || die "'slurmd -C' failed"
  sed -E 's/^NodeName=[^ ]+/NodeName=localhost NodeAddr=127.0.0.1/' <<<"$line"
}

# Job IDs must never go backwards while the accounting DB keeps old jobs: for a job that is still
# pending (not yet in accounting) `sacct -j ID` returns the *old* job with that ID, e.g. COMPLETED,
# and submitit then caches the new job as finished and never polls it again. slurmctld always
# cold-starts on fresh state (see start_slurmctld), so it takes its first ID from FirstJobId: the
# highest job ID in the DB + 1. While slurmctld runs, the value in slurm.conf is kept as is, so the
# file does not change under the running daemons.
first_job_id() {
  local max prev
  prev=$(sed -n 's/^FirstJobId=\([0-9]*\)$/\1/p' "$STATE_DIR/slurm.conf" 2>/dev/null || true)
  prev=${prev##*$'\n'}
  if [[ -n $(live_pid slurmctld) && -n $prev ]]; then
    echo "$prev"
    return 0
  fi
  max=$(mariadb -N -B -e "SELECT COALESCE(MAX(id_job), 0) FROM $DB_NAME.${CLUSTER_NAME}_job_table" 2>/dev/null) || max=0
  [[ $max =~ ^[0-9]+$ ]] || max=0
  echo $((max + 1))
}

write_configs() {  # needs mariadbd up (first_job_id)
  local node
  node=$(node_line)
  mkdir -p "$SLURM_STATE" "$SLURM_SPOOL" "$ETC_SLURM"
  cat >"$STATE_DIR/slurm.conf.new" <<EOF
# Written by scripts/slurm-cluster.sh (jit-vco): single-node test cluster. Do not edit by hand.
ClusterName=$CLUSTER_NAME
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
SlurmctldPort=6817
SlurmdPort=6818
AuthType=auth/munge
CredType=cred/munge
AuthInfo=cred_expire=10
MpiDefault=none
SwitchType=switch/none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=task=5
JobCompType=jobcomp/none
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
KillWait=5
SchedulerParameters=sched_interval=2,bf_interval=2
ReturnToService=2
MinJobAge=300
StateSaveLocation=$SLURM_STATE
SlurmdSpoolDir=$SLURM_SPOOL
SlurmctldPidFile=$RUN_DIR/slurmctld.pid
SlurmdPidFile=$RUN_DIR/slurmd.pid
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
  echo "FirstJobId=$(first_job_id)" >>"$STATE_DIR/slurm.conf.new"
  mv "$STATE_DIR/slurm.conf.new" "$STATE_DIR/slurm.conf"
  install -m 0644 "$STATE_DIR/slurm.conf" "$ETC_SLURM/slurm.conf"

  (
    umask 077
    cat >"$STATE_DIR/slurmdbd.conf" <<EOF
# Written by scripts/slurm-cluster.sh (jit-vco). Do not edit by hand.
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageUser=$DB_USER
StoragePass=$DB_PASS
StorageLoc=$DB_NAME
PidFile=$RUN_DIR/slurmdbd.pid
LogFile=$LOG_DIR/slurmdbd.log
EOF
  )
  chmod 0600 "$STATE_DIR/slurmdbd.conf"
  install -m 0600 -o root -g root "$STATE_DIR/slurmdbd.conf" "$ETC_SLURM/slurmdbd.conf"
}

wipe_slurm_state() {
  rm -rf "${SLURM_STATE:?}"
  mkdir -p "$SLURM_STATE"
}

# ---------------------------------------------------------------------------------------------
# daemons
# ---------------------------------------------------------------------------------------------
# All daemons start in their own session with stdin/stdout/stderr off the caller's terminal/pipes
# (so a caller capturing output, e.g. subprocess.run, does not hang on the inherited pipe), and
# without fd 9, the lock: a daemon that inherited it would hold the lock for its whole life.
launch() {  # launch LOGFILE CMD...
  local logf=$1
  shift
  setsid "$@" </dev/null >>"$logf" 2>&1 9>&-
}

start_munged() {
  install -d -o munge -g munge -m 0755 /run/munge
  launch "$LOG_DIR/munged.stderr" runuser -u munge -- /usr/sbin/munged --force \
    || fail_daemon munged "failed to start"
}

setup_db() {
  mariadb --connect-timeout=5 <<SQL >>"$LOG_DIR/mariadb.log" 2>&1 || fail_daemon mariadbd "accounting database setup failed"
CREATE DATABASE IF NOT EXISTS $DB_NAME;
CREATE USER IF NOT EXISTS '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
ALTER USER '$DB_USER'@'localhost' IDENTIFIED BY '$DB_PASS';
GRANT ALL PRIVILEGES ON $DB_NAME.* TO '$DB_USER'@'localhost';
FLUSH PRIVILEGES;
SQL
}

start_mariadbd() {
  install -d -o mysql -g mysql -m 0755 /run/mysqld
  if [[ ! -d /var/lib/mysql/mysql ]]; then
    log "initialising the MariaDB data directory"
    mariadb-install-db --user=mysql --datadir=/var/lib/mysql >>"$LOG_DIR/mariadb.log" 2>&1 \
      || fail_daemon mariadbd "mariadb-install-db failed"
  fi
  # mariadbd does not fork: run it in the background; its errors go to our log file
  setsid /usr/sbin/mariadbd --user=mysql --bind-address=127.0.0.1 --pid-file=/run/mysqld/mysqld.pid \
    </dev/null >>"$LOG_DIR/mariadb.log" 2>&1 9>&- &
  STARTED_PID=$!
}

start_slurmdbd() {
  tcp_open 6819 && die "port 6819 is in use by a process this script did not start (stop it first)"
  launch "$LOG_DIR/slurmdbd.log" /usr/sbin/slurmdbd || fail_daemon slurmdbd "failed to start"
}

start_slurmctld() {
  tcp_open 6817 && die "port 6817 is in use by a process this script did not start (stop it first)"
  # Always a fresh state: `down` empties the queue first, state left by a crashed or older session
  # (other hardware, other config) is disposable, and job IDs continue from FirstJobId.
  wipe_slurm_state
  launch "$LOG_DIR/slurmctld.log" /usr/sbin/slurmctld || fail_daemon slurmctld "failed to start"
}

start_slurmd() {
  tcp_open 6818 && die "port 6818 is in use by a process this script did not start (stop it first)"
  launch "$LOG_DIR/slurmd.log" /usr/sbin/slurmd -N localhost || fail_daemon slurmd "failed to start"
}

ensure_daemon() {  # start NAME unless already alive, wait until ready, record its PID
  local name=$1 pid t0
  t0=$(now)
  pid=$(live_pid "$name")
  if [[ -n $pid ]]; then
    wait_ready "$name" "$pid"
    echo "$pid" >"$PID_DIR/$name.pid"
    log "$name already running (pid $pid)"
    return 0
  fi
  rm -f "$PID_DIR/$name.pid"
  STARTED_PID=
  "start_$name"
  wait_ready "$name" "$STARTED_PID"
  record_pid "$name" "$STARTED_PID"
  log "$name started (pid $(cat "$PID_DIR/$name.pid"), $(elapsed "$t0")s)"
}

ensure_cluster_registered() {
  local deadline=$((SECONDS + 20))
  # slurmctld registers itself in slurmdbd; add the cluster by hand only if that did not happen
  until [[ $'\n'$(sacctmgr -n -P show cluster format=cluster 2>/dev/null)$'\n' == *$'\n'"$CLUSTER_NAME"$'\n'* ]]; do
    if ((SECONDS >= deadline)); then
      sacctmgr -i add cluster "$CLUSTER_NAME" >/dev/null 2>&1 || fail_daemon slurmdbd "cannot register cluster $CLUSTER_NAME"
      break
    fi
    sleep 0.5
  done
  deadline=$((SECONDS + 20))
  until sacct -n -X -o JobID >/dev/null 2>&1; do
    ((SECONDS < deadline)) || fail_daemon slurmdbd "sacct does not work (accounting unavailable)"
    sleep 0.5
  done
}

healthy() {
  local d
  for d in "${DAEMONS[@]}"; do
    [[ -n $(recorded_pid "$d") ]] || return 1
  done
  ready slurmctld && ready slurmd && sacct -n -X -o JobID >/dev/null 2>&1
}

summary() { timeout 5 sinfo -h -o '%P %a nodes=%D state=%t cpus=%c mem=%mMB' 2>/dev/null | paste -sd ';' || true; }

lock() {
  mkdir -p "$STATE_DIR"
  exec 9>"$STATE_DIR/.lock"
  flock -w 120 9 || die "another slurm-cluster.sh has held $STATE_DIR/.lock for 120s"
}

cmd_up() {
  local t0 d
  t0=$(now)
  lock
  if healthy; then
    log "SLURM cluster already up: $(summary)"
    return 0
  fi
  cmd_install >/dev/null
  mkdir -p "$LOG_DIR" "$PID_DIR" "$RUN_DIR"
  ensure_daemon munged
  ensure_daemon mariadbd
  setup_db  # idempotent; also covers an adopted mariadbd
  write_configs
  for d in slurmdbd slurmctld slurmd; do
    ensure_daemon "$d"
  done
  ensure_cluster_registered
  echo "SLURM cluster up ($(elapsed "$t0")s): $(summary)"
}

# ---------------------------------------------------------------------------------------------
# down / status
# ---------------------------------------------------------------------------------------------
stop_pid() {  # stop_pid NAME PID TIMEOUT_S
  local name=$1 pid=$2 limit=$3 i
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < limit * 10; i++)); do
    pid_is "$pid" "$name" || { log "$name stopped (pid $pid)"; return 0; }
    sleep 0.1
  done
  warn "$name (pid $pid) still running after ${limit}s: sending KILL"
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do
    pid_is "$pid" "$name" || return 0
    sleep 0.1
  done
  warn "$name (pid $pid) did not exit"
}

cmd_down() {
  local t0 ids deadline i d pid
  t0=$(now)
  lock
  if [[ -n $(recorded_pid slurmctld) ]] && ready slurmctld; then
    ids=$(timeout 10 squeue -h -o %A 2>/dev/null || true)
    if [[ -n $ids ]]; then
      log "cancelling $(wc -w <<<"$ids") job(s)"
      # shellcheck disable=SC2086
      timeout 10 scancel $ids 2>/dev/null || true
      deadline=$((SECONDS + 60))
      while [[ -n $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] && ((SECONDS < deadline)); do
        sleep 0.5
      done
      [[ -z $(timeout 10 squeue -h -o %A 2>/dev/null || true) ]] || warn "queue not empty after 60s; stopping anyway"
    fi
  fi
  for ((i = ${#DAEMONS[@]} - 1; i >= 0; i--)); do
    d=${DAEMONS[i]}
    pid=$(recorded_pid "$d")
    if [[ -n $pid ]]; then
      if [[ $d == mariadbd ]]; then stop_pid "$d" "$pid" 30; else stop_pid "$d" "$pid" 10; fi
    fi
    rm -f "$PID_DIR/$d.pid"
  done
  echo "SLURM cluster down ($(elapsed "$t0")s)"
}

cmd_status() {
  local d pid rc=0 stale
  for d in "${DAEMONS[@]}"; do
    pid=$(recorded_pid "$d")
    if [[ -n $pid ]]; then
      printf '%-10s running (pid %s)\n' "$d" "$pid"
    else
      stale=$(read_pid "$PID_DIR/$d.pid")
      printf '%-10s not running%s\n' "$d" "${stale:+ (stale pid $stale)}"
      rc=1
    fi
  done
  if [[ -n $(recorded_pid slurmctld) ]]; then
    echo "--- sinfo"
    timeout 5 sinfo 2>&1 || rc=1
    echo "--- squeue"
    timeout 5 squeue 2>&1 || rc=1
    ready slurmd || rc=1
  fi
  return "$rc"
}

case ${1:-} in
  install) lock; cmd_install ;;
  up) cmd_up ;;
  down) cmd_down ;;
  restart) cmd_down; exec 9>&-; cmd_up ;;
  status) cmd_status ;;
  *) echo "usage: $0 {install|up|down|status|restart}" >&2; exit 2 ;;
esac
