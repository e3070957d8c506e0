#!/usr/bin/env bash
# Write what is uploaded to Grand Challenge into dist/ (run ./build.sh first):
#   dist/petseg-<version>.tar.gz   the exec image: docker save | gzip (--invoke: petseg-<version>-invoke.tar.gz)
#   dist/model.tar.gz              the model folder's files at the archive root, for the platform's separate
#                                  model upload (it unpacks the archive into /opt/ml/model)
#
#   ./export.sh [--invoke] [--image-only | --model-only] [--model DIR] [--output DIR]
#
# Environment: PETSEG_IMAGE (image name, default petseg), PYTHON (default python3: reads the version and
# checks the model folder; needs no third-party package).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python3}"
IMAGE="${PETSEG_IMAGE:-petseg}"

die() {
    echo "export.sh: error: $*" >&2
    exit 1
}

absolute() { # an existing folder as an absolute path (arguments are relative to the caller's folder)
    [[ -d "$1" ]] || die "$1: folder not found"
    (cd "$1" && pwd)
}

suffix=""
do_image=1
do_model=1
model_dir="$REPO/model"
out_dir="$REPO/dist"
while (($# > 0)); do
    case "$1" in
        --invoke) suffix="-invoke" ;;
        --image-only) do_model=0 ;;
        --model-only) do_image=0 ;;
        --model)
            (($# > 1)) || die "--model needs a folder"
            model_dir="$(absolute "$2")"
            shift
            ;;
        --out | --output)
            (($# > 1)) || die "$1 needs a folder"
            mkdir -p "$2"
            out_dir="$(absolute "$2")"
            shift
            ;;
        -h | --help)
            sed -n '2,10p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done
((do_image || do_model)) || die "--image-only and --model-only exclude each other"

partial="" # an archive being written: removed if the script stops before it is complete
trap '[[ -z "$partial" ]] || rm -f "$partial"' EXIT

cd "$REPO"
VERSION="$("$PYTHON" -c 'import petseg; print(petseg.__version__)')" \
    || die "cannot read petseg.__version__ with $PYTHON"
mkdir -p "$out_dir"

if ((do_model)); then
    # Checked before anything is written: a model upload without weights would fail every job.
    echo "==> checking the model folder $model_dir"
    "$PYTHON" -m tools.container_check model "$model_dir" \
        || die "$model_dir is not a complete model folder (above); train/export the folds, or use --image-only"
fi

if ((do_image)); then
    command -v docker > /dev/null || die "docker not found"
    docker version --format "{{.Server.Version}}" > /dev/null 2>&1 \
        || die "cannot reach the Docker daemon (docker version); start Docker first"
    tag="$IMAGE:$VERSION$suffix"
    archive="$out_dir/petseg-$VERSION$suffix.tar.gz"
    docker image inspect "$tag" > /dev/null 2>&1 || die "image $tag not found; run ./build.sh first"
    echo "==> saving $tag to $archive (docker save | gzip; takes a few minutes)"
    partial="$archive.partial"
    compress=(gzip -c)
    command -v pigz > /dev/null && compress=(pigz -c) # the same gzip format, on every core
    docker save "$tag" | "${compress[@]}" > "$partial"
    mv -f "$partial" "$archive"
    partial=""
    echo "    $(du -h "$archive" | cut -f1)  $archive"
fi

if ((do_model)); then
    archive="$out_dir/model.tar.gz"
    echo "==> packing $model_dir into $archive (files at the archive root)"
    shopt -s nullglob
    pushd "$model_dir" > /dev/null
    files=(*)
    popd > /dev/null
    shopt -u nullglob
    ((${#files[@]} > 0)) || die "$model_dir is empty"
    partial="$archive.partial"
    tar -C "$model_dir" -czf "$partial" -- "${files[@]}"
    mv -f "$partial" "$archive"
    partial=""
    tar -tzf "$archive" | sed 's/^/    /'
    echo "    $(du -h "$archive" | cut -f1)  $archive"
fi
echo "==> done"
