#!/usr/bin/env bash
# Segment a cohort with a Slurm job array: array task K of N runs `petseg predict --parts N --part K`.
#
#   sbatch --array=0-15 scripts/slurm/predict-array.sh --input /data/cohort --output /data/masks
#   sbatch --array=0-15 scripts/slurm/predict-array.sh --manifest cohort.csv --output /data/masks
#
# Every argument is passed on to `petseg predict` (--model, --device, --quantify, ...). Each task takes its
# share of the sorted case ids and skips cases whose output is complete, so a failed or cancelled array is
# simply submitted again to finish what is missing. To rerun only some tasks, name the number of parts:
# `PETSEG_PARTS=16 sbatch --array=3,7 ...` (without it the number of parts is SLURM_ARRAY_TASK_COUNT, and an
# array that does not run 0 to N-1 without gaps is refused). Per-case outcomes: OUTPUT/status.jsonl.
#
# The environment: PETSEG_PYTHON (default: python3 on PATH) runs `-m petseg`; set PYTHONPATH or activate
# the virtual environment in the #SBATCH preamble or before sbatch (Slurm passes the environment on).
#
#SBATCH --job-name=petseg-predict
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=12:00:00
#SBATCH --output=petseg-predict-%A_%a.log
set -euo pipefail

if [[ -z "${SLURM_ARRAY_TASK_ID:-}" || -z "${SLURM_ARRAY_TASK_COUNT:-}" ]]; then
    echo "predict-array.sh: run it as a job array: sbatch --array=0-<N-1> $0 --input DIR --output DIR" >&2
    exit 2
fi
parts="${PETSEG_PARTS:-$SLURM_ARRAY_TASK_COUNT}"
if [[ -z "${PETSEG_PARTS:-}" ]]; then
    min="${SLURM_ARRAY_TASK_MIN:-0}"
    max="${SLURM_ARRAY_TASK_MAX:-$((SLURM_ARRAY_TASK_COUNT - 1))}"
    if [[ "$min" != 0 || "$max" != "$((SLURM_ARRAY_TASK_COUNT - 1))" ]]; then
        echo "predict-array.sh: the array must run 0-<N-1> without gaps (got $min-$max in" \
            "$SLURM_ARRAY_TASK_COUNT tasks); to rerun some tasks, set PETSEG_PARTS=N" >&2
        exit 2
    fi
fi

# One thread per allocated core: left alone, the math libraries start one per core of the node, and tasks
# sharing a node then contend for them (docs/cohorts.md measured two processes 3.8x slower so on 2 cores).
if [[ -n "${SLURM_CPUS_PER_TASK:-}" ]]; then
    export OMP_NUM_THREADS="${OMP_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
    export MKL_NUM_THREADS="${MKL_NUM_THREADS:-$SLURM_CPUS_PER_TASK}"
fi

exec "${PETSEG_PYTHON:-python3}" -m petseg predict \
    --parts "$parts" --part "$SLURM_ARRAY_TASK_ID" --quiet "$@"
