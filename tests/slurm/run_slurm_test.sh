#!/usr/bin/env bash
# A real SLURM: a one-node cluster on localhost runs a tiny pipeline through
# profiles/slurm, and the results and the SLURM jobs behind them are checked.
#
#   sudo tests/slurm/run_slurm_test.sh        # or: make test-slurm (CI: .ci/run)
#
# Needs root (the daemons run as root; munged as the munge user) and Debian's slurm-wlm
# and munge, which it installs with apt-get when they are missing. Everything else lives
# in a fresh folder under /tmp (config, state, logs, the workflow copy), removed at the
# end (KEEP=1 keeps it). The daemons are stopped by their process ids on every exit.
# Environment: PYTHON (default .venv/bin/python), KEEP=1.
# Tested with SLURM 22.05 (Debian 12); the keys used exist in 23.x and 24.x as well.
set -euo pipefail

REPO="$(cd "$(dirname "$0")/../.." && pwd)"
PY="${PYTHON:-$REPO/.venv/bin/python}"
START=$SECONDS
say() { printf '[slurm-test %3ds] %s\n' $((SECONDS - START)) "$*"; }
fail() { say "FAIL: $*"; exit 1; }

[ "$(id -u)" = 0 ] || fail "run as root (it starts slurmctld, slurmd and munged)"
[ -x "$PY" ] || fail "no Python at $PY (make test creates .venv; or set PYTHON)"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null \
    || ! command -v munged >/dev/null || ! command -v sbatch >/dev/null; then
    say "installing slurm-wlm and munge (apt-get)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq slurm-wlm munge >/dev/null
fi
say "$(slurmctld -V)"

WORK="$(mktemp -d /tmp/mamlscope-slurm.XXXXXX)"
chmod 755 "$WORK"
PIDS=()
cleanup() {
    local rc=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for _ in $(seq 50); do
        local alive=0
        for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.2
    done
    for pid in "${PIDS[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
    if [ $rc != 0 ]; then
        for log in "$WORK"/log/*.log; do
            [ -f "$log" ] && { echo "--- $log (last lines)"; tail -n 20 "$log"; }
        done
    fi
    if [ "${KEEP:-0}" = 1 ]; then say "kept $WORK"; else rm -rf "$WORK"; fi
    say "daemons stopped; exit $rc"
}
trap cleanup EXIT

# --- munge, as the munge user, on the default socket ----------------------------------
# (slurmd fetches its config from slurmctld before it could read another socket's name.)
mkdir -p "$WORK/munge" "$WORK/log" "$WORK/etc" "$WORK/state/ctld" "$WORK/state/d"
chown munge:munge "$WORK/munge"
SOCKET=/run/munge/munge.socket.2
if [ -S "$SOCKET" ] && munge -n -s "$SOCKET" 2>/dev/null | unmunge -s "$SOCKET" >/dev/null 2>&1; then
    say "using the munged already running"
else
    KEY=/etc/munge/munge.key
    if [ ! -s "$KEY" ]; then
        mkdir -p /etc/munge
        mungekey --create --keyfile="$KEY" 2>/dev/null \
            || dd if=/dev/urandom of="$KEY" bs=1 count=1024 2>/dev/null
        chown munge:munge "$KEY"
        chmod 600 "$KEY"
    fi
    mkdir -p /run/munge
    chown munge:munge /run/munge
    chmod 755 /run/munge
    setpriv --reuid=munge --regid=munge --init-groups -- munged --foreground \
        --socket="$SOCKET" --key-file="$KEY" --pid-file="$WORK/munge/munged.pid" \
        --seed-file="$WORK/munge/munged.seed" --log-file="$WORK/munge/munged.log" \
        >"$WORK/log/munged.out" 2>&1 &
    PIDS+=($!)
    for _ in $(seq 50); do [ -S "$SOCKET" ] && break; sleep 0.1; done
    [ -S "$SOCKET" ] || fail "munged did not start: $(cat "$WORK/log/munged.out")"
fi

# --- slurm.conf: no accounting, no systemd, a stand-in GPU -----------------------------
NODE="$(hostname -s)"
CPUS="$(nproc)"
# Claim at least 8 CPUs and 16 GB (SlurmdParameters=config_overrides): four tiny jobs of
# the profile's 2 CPUs run side by side (they mostly start Python), and the profile's 8 GB
# per job fits on a small CI machine too.
NODE_CPUS=$((CPUS < 8 ? 8 : CPUS))
MEM_MB=$(awk '/MemTotal/ {print int($2 / 1024)}' /proc/meminfo)
NODE_MEM=$((MEM_MB < 16000 ? 16000 : MEM_MB))
export SLURM_CONF="$WORK/etc/slurm.conf"
cat >"$SLURM_CONF" <<EOF
ClusterName=mamlscope-test
SlurmctldHost=$NODE(127.0.0.1)
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$WORK/state/ctld
SlurmdSpoolDir=$WORK/state/d
SlurmctldPidFile=$WORK/state/slurmctld.pid
SlurmdPidFile=$WORK/state/slurmd.pid
SlurmctldLogFile=$WORK/log/slurmctld.log
SlurmdLogFile=$WORK/log/slurmd.log
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmdParameters=config_overrides
SlurmctldParameters=enable_configless
ReturnToService=2
MinJobAge=900
KillWait=5
GresTypes=gpu
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=$NODE_CPUS RealMemory=$NODE_MEM Gres=gpu:1 State=UNKNOWN
PartitionName=debug Nodes=$NODE Default=YES MaxTime=INFINITE State=UP
EOF
echo "NodeName=$NODE Name=gpu File=/dev/null" >"$WORK/etc/gres.conf"

slurmctld -D -f "$SLURM_CONF" >"$WORK/log/slurmctld.out" 2>&1 &
PIDS+=($!)
# Configless: slurmd fetches the config from slurmctld and publishes it in /run/slurm/conf,
# where SLURM commands look when SLURM_CONF is unset, as inside a job (the executor plugin
# deletes every SLURM_* variable before it calls sbatch).
slurmd -D --conf-server "127.0.0.1:16817" -N "$NODE" >"$WORK/log/slurmd.out" 2>&1 &
PIDS+=($!)
state=""
for _ in $(seq 150); do
    state="$(sinfo -h -N -o %T 2>/dev/null | head -n1 || true)"
    [ "$state" = idle ] && break
    sleep 0.2
done
[ "$state" = idle ] || fail "node not idle after 30 s (sinfo: '$state')"
say "one-node SLURM up: $NODE, $NODE_CPUS CPUs, gpu:1 (stand-in), no accounting"

# --- the tiny pipeline through profiles/slurm --------------------------------------------
WF="$WORK/workflow"
mkdir -p "$WF"
cp "$REPO/Snakefile" "$REPO/config.yaml" "$WF/"
for dir in rules scripts config envs profiles report; do
    [ -e "$REPO/$dir" ] && cp -r "$REPO/$dir" "$WF/$dir"
done
# tests/tiny.yaml with two methods and device auto: with the profile's cluster_gpu=true,
# training and evaluation ask for the GPU (sbatch --gpus=1 on the stand-in) and, finding
# no CUDA in the job, run on CPU.
sed -e 's/^device: cpu$/device: auto/' -e 's/^methods: .*$/methods: [baseline, maml]/' \
    "$REPO/tests/tiny.yaml" >"$WF/tiny.yaml"
grep -q '^device: auto$' "$WF/tiny.yaml" && grep -q '^methods: \[baseline, maml\]$' "$WF/tiny.yaml" \
    || fail "tests/tiny.yaml no longer has the device and methods lines this script edits"

export PATH="$(dirname "$PY"):$PATH" OMP_NUM_THREADS=1 MAMLSCOPE_SLURM_HEARTBEAT=20
SNAKEMAKE=("$PY" -m snakemake --profile profiles/slurm --configfile tiny.yaml
    --slurm-init-seconds-before-status-checks 2 --slurm-keep-successful-logs
    --slurm-no-account)

# 1. Status queries that cannot work stop the run at once (no silent endless wait):
#    sacct, with accounting off, fails.
say "sacct as the status command must be refused"
set +e
(cd "$WF" && timeout 120 "${SNAKEMAKE[@]}" --slurm-status-command sacct --until prepare_dataset) \
    >"$WORK/log/sacct-run.log" 2>&1
rc=$?
set -e
[ $rc != 0 ] && [ $rc != 124 ] || fail "the sacct run did not stop at once (exit $rc)"
grep -q "with 'sacct' fail here" "$WORK/log/sacct-run.log" \
    || fail "no sacct message: $(tail -n 20 "$WORK/log/sacct-run.log")"
[ -z "$(squeue -h -t all -o %i)" ] || fail "jobs were submitted before the check"

# 2. The whole default target, every job through sbatch.
say "running the tiny pipeline through profiles/slurm"
t0=$SECONDS
if ! (cd "$WF" && timeout 900 "${SNAKEMAKE[@]}") >"$WORK/log/run.log" 2>&1; then
    tail -n 60 "$WORK/log/run.log"
    fail "the pipeline failed on SLURM"
fi
say "pipeline done in $((SECONDS - t0)) s"
grep -q "SLURM jobs of this run" "$WORK/log/run.log" && say "a wait message was printed"

"$PY" - "$WF" <<'EOF'
import json, sys
from pathlib import Path
import pandas as pd
wf = Path(sys.argv[1]) / "results/tiny"  # tiny.yaml's experiment
assert (wf / "runs.md").is_file()
runs = pd.read_parquet(wf / "runs.parquet")
assert set(runs["method"]) == {"baseline", "maml"}, runs
for method in ("baseline", "maml"):
    run = wf / "digits8" / method / "seed0"
    summary = json.loads((run / "evaluation.json").read_text())
    mean = summary.get("mean", summary.get("accuracy"))
    assert mean is None or 0 <= float(mean) <= 1, summary
    assert (run / "model.pt").is_file() and (run / "metrics.parquet").is_file()
    assert not (run / ".resume").exists(), "resume state left after a finished run"
    log = (run / "train.log").read_text()
    assert "device cpu" in log, log[-2000:]  # auto found no CUDA inside the GPU job
print("results checked")
EOF

# Every job of the run went through sbatch: SLURM knows a COMPLETED job per rule job
# (MinJobAge keeps finished jobs in squeue), and its log landed in .snakemake/slurm_logs.
squeue -h -t all -o '%i|%T|%k' >"$WORK/log/squeue.txt"
say "SLURM jobs: $(wc -l <"$WORK/log/squeue.txt") ($(cut -d'|' -f2 "$WORK/log/squeue.txt" | sort | uniq -c | xargs))"
if grep -v '|COMPLETED|' "$WORK/log/squeue.txt"; then fail "a SLURM job did not complete"; fi
SUBMITTED="$(grep -c 'has been submitted with SLURM jobid' "$WORK/log/run.log" || true)"
[ "$(wc -l <"$WORK/log/squeue.txt")" = "$SUBMITTED" ] \
    || fail "$SUBMITTED submissions logged, $(wc -l <"$WORK/log/squeue.txt") jobs in squeue"
for rule in prepare_dataset split_dataset train evaluate summarize_runs; do
    grep -q "|rule_${rule}\(_wildcards\|$\)" "$WORK/log/squeue.txt" \
        || fail "no SLURM job for rule $rule"
    find "$WF/.snakemake/slurm_logs/rule_${rule}" -name '*.log' 2>/dev/null | grep -q . \
        || fail "no SLURM log of rule $rule in .snakemake/slurm_logs"
done
# The GPU request path: train and evaluate asked for the (stand-in) GPU, the data rules not.
for id in $(grep '|rule_train_' "$WORK/log/squeue.txt" | cut -d'|' -f1); do
    scontrol show job "$id" | grep -q 'TresPerJob=.*gpu' \
        || fail "train job $id asked for no GPU: $(scontrol show job "$id" | grep -i tres)"
done
id="$(grep '|rule_prepare_dataset' "$WORK/log/squeue.txt" | cut -d'|' -f1 | head -n1)"
if scontrol show job "$id" | grep -q 'TresPerJob=.*gpu'; then fail "prepare_dataset asked for a GPU"; fi
say "every job went through sbatch; train asked for a GPU"

# 3. cluster_localrules: the short jobs run inside Snakemake, the others still go to SLURM.
before="$(squeue -h -t all -o %i | wc -l)"
say "rerunning the run table with cluster_localrules=true"
if ! (cd "$WF" && timeout 600 "${SNAKEMAKE[@]}" --config cluster_localrules=true \
    --forcerun summarize_runs --until summarize_runs) >"$WORK/log/local.log" 2>&1; then
    tail -n 40 "$WORK/log/local.log"
    fail "the localrules run failed"
fi
grep -q "localrule summarize_runs" "$WORK/log/local.log" || fail "summarize_runs was not local"
[ "$(squeue -h -t all -o %i | wc -l)" = "$before" ] || fail "a local rule went to SLURM"
say "PASS in $((SECONDS - START)) s"
