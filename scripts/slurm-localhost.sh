#!/usr/bin/env bash
# A one-node SLURM cluster on this machine (Debian slurm-wlm + munge), for testing the job
# arrays that `bids_mrisr slurm` writes. Run as root. Prints the SLURM_CONF to export.
#   scripts/slurm-localhost.sh start DIR   -> writes DIR/slurm.conf, starts munged, slurmctld, slurmd
#   scripts/slurm-localhost.sh stop DIR    -> stops them
set -euo pipefail
action=${1:?start or stop}
dir=$(realpath -m "${2:?a state folder}")
host=$(hostname -s)
conf="$dir/slurm.conf"

stop() {
  for pid in "$dir"/slurmd.pid "$dir"/slurmctld.pid; do
    [[ -f $pid ]] && kill "$(cat "$pid")" 2>/dev/null || true
  done
}

if [[ $action == stop ]]; then stop; exit 0; fi

command -v slurmctld >/dev/null || { echo "slurm-wlm is not installed (apt-get install slurm-wlm munge)" >&2; exit 69; }
mkdir -p "$dir/state" "$dir/spool"
cpus=$(nproc)
mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 8 / 10 ))
cat > "$conf" <<CONF
ClusterName=bidsmrisr
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/slurmctld.log
SlurmdLogFile=$dir/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
MpiDefault=none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP
CONF
# munge: one key for this machine, the daemon started once
if [[ ! -s /etc/munge/munge.key ]]; then mungekey --create >/dev/null 2>&1 || create-munge-key; fi
mkdir -p /run/munge && chown munge:munge /run/munge 2>/dev/null || true
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged 2>/dev/null || /usr/sbin/munged --force
export SLURM_CONF=$conf
stop
slurmctld -f "$conf"
slurmd -f "$conf"
for _ in $(seq 1 30); do
  if sinfo -h -o %T 2>/dev/null | grep -qE "idle|mix|alloc"; then echo "SLURM_CONF=$conf"; exit 0; fi
  sleep 1
done
echo "slurm did not come up; logs in $dir" >&2
exit 1
