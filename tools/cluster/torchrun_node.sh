#!/usr/bin/env bash
# One node's share of a multi-node run of a bundle's training: one torchrun agent per node, the nodes joined by
# torchrun's c10d rendezvous (no fixed node ranks: nodes start in any order, and a restarted or replaced node
# rejoins). Used as it is by the SLURM script (slurm_pretrain.sbatch, through srun) and as the container command of
# a Kubernetes or Ray-style launcher (one pod or actor per node); tests/test_scale.py runs two nodes on one host.
#
# Environment (set by the scheduler or by hand):
#   NNODES          number of nodes (required), or MIN:MAX for an elastic range
#   RDZV_ENDPOINT   host:port of the rendezvous, the same on every node (required): an address of the first node
#   RDZV_ID         the job's id, the same on every node (default: dae-pretrain)
#   NPROC_PER_NODE  processes on this node, one per GPU (default: the GPUs visible, 1 without a GPU)
#   MAX_RESTARTS    restarts of the whole worker group after a worker or node fails (default: 3); a restarted
#                   worker continues from the newest checkpoint when the run is given --resume auto
#   PYTHON          the interpreter (default: python)
# Arguments: the configs and overrides of `python -m monai.bundle run training`.
set -euo pipefail
: "${NNODES:?set NNODES, the number of nodes}"
: "${RDZV_ENDPOINT:?set RDZV_ENDPOINT, host:port of the rendezvous, the same on every node}"
PYTHON=${PYTHON:-python}
# A store per rendezvous round. By default torchrun's agent lends its rendezvous store to the workers and keeps it
# across restarts of the worker group, so a restarted worker can read the previous round's keys (the gloo address
# of a dead worker, an old NCCL id) and wait for a peer that never answers (pytorch/pytorch#135712; with torch
# 2.14 and gloo the two-node test hung in ProcessGroupGloo's connect in 2 runs of 3 after a worker was killed).
export TORCH_DISABLE_SHARE_RDZV_TCP_STORE=${TORCH_DISABLE_SHARE_RDZV_TCP_STORE:-1}
if [ -z "${NPROC_PER_NODE:-}" ]; then
    NPROC_PER_NODE=$("$PYTHON" -c "import torch; print(max(1, torch.cuda.device_count()))")
fi
exec "$PYTHON" -m torch.distributed.run \
    --nnodes "$NNODES" --nproc_per_node "$NPROC_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$RDZV_ENDPOINT" --rdzv_id "${RDZV_ID:-dae-pretrain}" \
    --max_restarts "${MAX_RESTARTS:-3}" \
    -m monai.bundle run training "$@"
