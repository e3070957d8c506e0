#!/usr/bin/env bash
# Run the algorithm on every sample case and check each output with `python -m tools.container_check`:
# one uint8 {0,1} .mha named after the PET in images/automated-petct-lesion-segmentation/, on the PET's
# grid, Dice >= 0.99 against <case>/expected/<pet-uuid>.mha, and data-centric-model.json.
#
#   ./test.sh           in the exec image (./build.sh first), under the runtime of the platform's smallest
#                       GPU instance (ml.g4dn.xlarge; container/platform.sh): 4 CPUs (fewer where the machine
#                       has fewer), 15 GiB memory, /dev/shm 8 GiB, an empty /tmp, no network, all
#                       capabilities dropped, input read-only, /output a fresh docker volume, --gpus all where
#                       nvidia-smi finds a GPU
#   ./test.sh --local   with process.py directly (no Docker), a temporary output folder per case
#
# Options:
#   --model DIR     model folder. --local: passed to process.py (default model/). Docker: mounted read-only at
#                   /opt/ml/model, as the platform mounts the model tarball (default: the image's model/)
#   --samples DIR   sample cases (default $PETSEG_SAMPLES, else test/): <case>/input/images/{ct,pet}/<uuid>.mha
#                   and <case>/expected/<pet-uuid>.mha (written by `petseg samples --expected --model DIR`)
#   --image TAG     image to test (default $PETSEG_IMAGE:<version>, PETSEG_IMAGE defaulting to petseg)
#   --keep          keep the outputs and print their folder
# Environment: PYTHON (default .venv/bin/python when present, else python3; --local needs petseg's
# requirements, the check itself numpy and SimpleITK); the limits CPUS (4), MEM_LIMIT (15g), SHM_SIZE (8g),
# PIDS_LIMIT (256), TMP_SIZE (none) of container/platform.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=container/platform.sh
source "$REPO/container/platform.sh"
if [[ -z "${PYTHON:-}" ]]; then
    PYTHON=python3
    [[ -x "$REPO/.venv/bin/python" ]] && PYTHON="$REPO/.venv/bin/python"
fi

die() {
    echo "test.sh: error: $*" >&2
    exit 2
}

absolute() { # an existing folder as an absolute path (arguments are relative to the caller's folder)
    [[ -d "$1" ]] || die "$1: folder not found"
    (cd "$1" && pwd)
}

csv_field() { # one field of a `docker run --mount` value, quoted so that commas in paths survive
    printf '"%s"' "${1//\"/\"\"}"
}

mode=docker
model_dir=""
samples="${PETSEG_SAMPLES:-$REPO/test}"
image=""
keep=0
while (($# > 0)); do
    case "$1" in
        --local) mode=local ;;
        --model)
            (($# > 1)) || die "--model needs a folder"
            model_dir="$(absolute "$2")"
            shift
            ;;
        --samples)
            (($# > 1)) || die "--samples needs a folder"
            samples="$2"
            shift
            ;;
        --image)
            (($# > 1)) || die "--image needs a tag"
            image="$2"
            shift
            ;;
        --keep) keep=1 ;;
        -h | --help)
            sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
samples="$(absolute "$samples")"
cd "$REPO"

# The output check (and --local's process.py) runs in $PYTHON: say what is missing in one line.
needed=(numpy SimpleITK)
[[ "$mode" == local ]] && needed+=(torch monai)
if ! missing="$("$PYTHON" - "${needed[@]}" 2>&1 <<'PY'
import importlib.util, sys
missing = [name for name in sys.argv[1:] if importlib.util.find_spec(name) is None]
print(" ".join(missing))
sys.exit(1 if missing else 0)
PY
)"; then
    [[ -n "$missing" ]] || missing="(python did not run)"
    die "$PYTHON lacks ${missing// /, }: run 'make install' (then .venv/bin/python is used) or set PYTHON=..."
fi

cases=()
for case_dir in "$samples"/*/; do
    case_dir="${case_dir%/}"
    [[ -d "$case_dir/input/images/pet" ]] && cases+=("$case_dir")
done
((${#cases[@]} > 0)) || die "$samples: no sample cases (<case>/input/images/pet/); write them with petseg samples"

work="$(mktemp -d "${TMPDIR:-/tmp}/petseg-test.XXXXXX")"
volumes=()
containers=()
cleanup() {
    local item
    for item in ${containers[@]+"${containers[@]}"}; do docker rm -f "$item" > /dev/null 2>&1 || true; done
    for item in ${volumes[@]+"${volumes[@]}"}; do docker volume rm -f "$item" > /dev/null 2>&1 || true; done
    if ((keep)); then
        echo "==> outputs kept in $work"
    else
        rm -rf "$work"
    fi
}
trap cleanup EXIT

echo "==> $mode mode: ${#cases[@]} sample case(s) in $samples"
if [[ "$mode" == local ]]; then
    model_dir="${model_dir:-$REPO/model}"
fi
if [[ -n "$model_dir" ]]; then
    echo "==> checking the model folder $model_dir"
    "$PYTHON" -m tools.container_check model "$model_dir" || die "$model_dir: not a usable model folder (above)"
fi

gpu_args=()
if [[ "$mode" == docker ]]; then
    command -v docker > /dev/null || die "docker not found; install Docker, or run ./test.sh --local"
    docker version --format "{{.Server.Version}}" > /dev/null 2>&1 \
        || die "cannot reach the Docker daemon (docker version); start Docker, or run ./test.sh --local"
    if [[ -z "$image" ]]; then
        version="$("$PYTHON" -c 'import petseg; print(petseg.__version__)')" || die "cannot read petseg.__version__"
        image="${PETSEG_IMAGE:-petseg}:$version"
    fi
    docker image inspect "$image" > /dev/null 2>&1 || die "image $image not found; run ./build.sh first"
    platform_run_options || die "bad limit (above)"
    echo "==> limits: $PLATFORM_SUMMARY"
    if command -v nvidia-smi > /dev/null 2>&1 && nvidia-smi -L > /dev/null 2>&1; then
        gpu_args=(--gpus all)
        echo "==> image $image, GPU found (nvidia-smi): --gpus all"
    else
        echo "==> image $image, no GPU found (nvidia-smi): the algorithm runs on the CPU"
    fi
fi

run_local() { # case_dir output_dir
    local command=("$PYTHON" "$REPO/process.py" --input "$1/input" --output "$2" --model "$model_dir")
    echo "    $(printf '%q ' "${command[@]}")"
    "${command[@]}"
}

run_docker() { # case_dir output_dir index
    local volume="petseg-test-output-$$-$3" container status=0
    echo "    docker volume create $volume"
    docker volume create "$volume" > /dev/null || return
    volumes+=("$volume")
    local command=(docker run --rm --platform=linux/amd64
        "${PLATFORM_RUN_OPTIONS[@]}"
        ${gpu_args[@]+"${gpu_args[@]}"}
        --mount "type=bind,$(csv_field "source=$1/input"),target=/input,readonly"
        --mount "type=volume,source=$volume,target=/output")
    if [[ -n "$model_dir" ]]; then
        command+=(--mount "type=bind,$(csv_field "source=$model_dir"),target=/opt/ml/model,readonly")
    fi
    command+=("$image")
    echo "    $(printf '%q ' "${command[@]}")"
    "${command[@]}" || status=$?
    # Whatever the run left in the volume is copied out and checked, also after a failed run.
    echo "    copying /output out of the volume"
    mkdir -p "$2"
    container="$(docker create --mount "type=volume,source=$volume,target=/output" "$image")" || return
    containers+=("$container")
    docker cp "$container:/output/." "$2" > /dev/null || return # no --quiet: docker.io 20.10 lacks it
    return "$status"
}

failed=()
index=0
for case_dir in "${cases[@]}"; do
    index=$((index + 1))
    name="$(basename "$case_dir")"
    output="$work/$index"
    echo "==> [$index/${#cases[@]}] $name: running"
    started=$SECONDS
    status=0
    if [[ "$mode" == local ]]; then
        run_local "$case_dir" "$output" || status=$?
    else
        run_docker "$case_dir" "$output" "$index" || status=$?
    fi
    echo "    finished in $((SECONDS - started)) s with exit code $status"
    if ((status != 0)); then
        reason="the run exited with code $status"
        ((status == 137)) && reason="$reason (killed: out of memory at --memory ${MEM_LIMIT:-15g}?)"
        echo "FAIL $name: $reason" >&2
        failed+=("$name")
        continue
    fi
    echo "==> [$index/${#cases[@]}] $name: checking $output"
    if ! "$PYTHON" -m tools.container_check case "$case_dir" "$output"; then
        failed+=("$name")
    fi
done

if ((${#failed[@]} > 0)); then
    echo "test.sh: ${#failed[@]} of ${#cases[@]} case(s) FAILED: $(printf '"%s" ' "${failed[@]}")" >&2
    exit 1
fi
echo "==> all ${#cases[@]} case(s) passed ($mode mode)"
