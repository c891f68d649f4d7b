#!/usr/bin/env bash
# A sweep (scripts/sweep.py) on a SLURM allocation: a Ray head on the first
# node, a Ray worker on each other node, then the sweep joins that cluster.
# Its arguments are scripts/sweep.py's; --sweep_dir must be on a file system
# that every node mounts at the same path. Run from the repository root with
# the environment where rebar_jax[sweep] is installed active:
#
#   sbatch --nodes=4 --cpus-per-task=32 scripts/slurm_sweep.sh \
#       --config=configs/sbn_linear.py --sweep_dir=$HOME/sweeps/lr \
#       --grid=estimator=nvil,disarm --grid=learning_rate=1e-3,3e-4
#
# The same sbatch line after a pre-emption resumes the sweep (finished trials
# are not repeated). RAY_PORT picks the head's port (default 6379). Ray's
# token authentication is on: the head writes the token to ~/.ray/auth_token,
# which the other nodes read from a shared home (else export RAY_AUTH_TOKEN).
#SBATCH --job-name=rebar_jax_sweep
#SBATCH --ntasks-per-node=1
set -euo pipefail
export RAY_AUTH_MODE=${RAY_AUTH_MODE:-token}

nodes=($(scontrol show hostnames "$SLURM_JOB_NODELIST"))
head=${nodes[0]}
port=${RAY_PORT:-6379}
cpus=${SLURM_CPUS_PER_TASK:-$(nproc)}
head_ip=$(srun --nodes=1 --ntasks=1 -w "$head" hostname --ip-address \
          | awk '{print $1}')
address="$head_ip:$port"

# Ray's processes live as long as these job steps (--block); they end with
# the allocation, or here when the sweep is done.
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
srun --nodes=1 --ntasks=1 -w "$head" \
    ray start --head --node-ip-address="$head_ip" --port="$port" \
    --num-cpus="$cpus" --include-dashboard=false --block &
for _ in $(seq 120); do
  ray status --address="$address" >/dev/null 2>&1 && break
  sleep 1
done
for node in "${nodes[@]:1}"; do
  srun --nodes=1 --ntasks=1 -w "$node" \
      ray start --address="$address" --num-cpus="$cpus" --block &
done

python scripts/sweep.py --address="$address" "$@"
