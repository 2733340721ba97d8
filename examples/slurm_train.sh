#!/bin/bash
# A Slurm job that requeues itself on preemption or time limit: sbatch examples/slurm_train.sh
# (docs/multi-gpu.md, "Preemption and auto-resume on a cluster"). It requeues on exit code 75 (stopped on a
# signal after a checkpoint) and 143; --auto-resume continues from the newest checkpoint that verifies.
#SBATCH --nodes=2 --ntasks-per-node=1 --gpus-per-node=8 --time=24:00:00
#SBATCH --requeue --signal=B:TERM@300 --open-mode=append
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n1)
srun torchrun --nnodes "$SLURM_NNODES" --nproc_per_node 8 --rdzv-backend c10d \
    --rdzv-endpoint "$MASTER_ADDR:29500" --rdzv-id "$SLURM_JOB_ID" \
    cli/complete_optimized_training.py --data RecipeNLG_dataset.csv \
    --model-output /shared/models/flan-large --save-steps 500 --auto-resume &
wait $!; code=$?
if [ "$code" -eq 75 ] || [ "$code" -eq 143 ]; then scontrol requeue "$SLURM_JOB_ID"; fi
exit "$code"
