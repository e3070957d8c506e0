#!/usr/bin/env bash
# Build the Grand-Challenge images of petseg, tagged with the package version (petseg.__version__):
#   <image>:<version>         exec mode, the Dockerfile's default target (process.py, once per job)
#   <image>:<version>-invoke  invoke mode (app.py serving port 4743, LABEL org.grand-challenge.api-method)
#
#   ./build.sh [--exec-only] [extra docker build options, e.g. --no-cache]
#
# Environment: PETSEG_IMAGE (image name, default petseg), PYTHON (default python3; it only reads the version).
# Works with Debian's docker.io 20.10 and with current Docker clients: BuildKit where the client can run it
# (the buildx plugin, or 20.10's built-in BuildKit), else the legacy builder. Where the base image cannot be
# pulled (no registry for images), make a CPU-only stand-in for it first: container/stand-in-base.sh.
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$REPO"
# shellcheck source=container/docker-client.sh
source "$REPO/container/docker-client.sh"

PYTHON="${PYTHON:-python3}"
IMAGE="${PETSEG_IMAGE:-petseg}"

die() {
    echo "build.sh: error: $*" >&2
    exit 1
}

exec_only=0
docker_args=()
while (($# > 0)); do
    case "$1" in
        --exec-only) exec_only=1 ;;
        -h | --help)
            sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) docker_args+=("$1") ;;
    esac
    shift
done

command -v docker > /dev/null || die "docker not found; install Docker to build the images"
docker version --format "{{.Server.Version}}" > /dev/null 2>&1 \
    || die "cannot reach the Docker daemon (docker version); start Docker first"
VERSION="$("$PYTHON" -c 'import petseg; print(petseg.__version__)')" \
    || die "cannot read petseg.__version__ with $PYTHON"
[[ -n "$VERSION" ]] || die "petseg.__version__ is empty"

build() {
    local target="$1" tag="$2"
    echo "==> building $tag (Dockerfile target '$target')"
    local command=(docker build --platform=linux/amd64 --target "$target"
        --build-arg "PETSEG_VERSION=$VERSION" --tag "$tag")
    command+=(${docker_args[@]+"${docker_args[@]}"} .)
    echo "    DOCKER_BUILDKIT=$buildkit ${command[*]}"
    DOCKER_BUILDKIT="$buildkit" "${command[@]}"
}

buildkit="$(docker_buildkit)"
echo "==> petseg $VERSION, image $IMAGE, docker client $(docker version --format '{{.Client.Version}}')," \
    "$( ((buildkit)) && echo BuildKit || echo "legacy builder (no buildx plugin)")"
echo "==> checking model/ (copied into the image)"
if ! "$PYTHON" -m tools.container_check model model; then
    echo "    note: model/ is incomplete (see above): jobs will need the model tarball of ./export.sh," \
        "which the platform unpacks to /opt/ml/model"
fi
build exec "$IMAGE:$VERSION"
if ((exec_only)); then
    echo "==> skipped the invoke image (--exec-only)"
else
    [[ -f app.py ]] || die "app.py not found: the invoke image runs it (use --exec-only to skip that image)"
    build invoke "$IMAGE:$VERSION-invoke"
fi
echo "==> done:"
docker image ls --filter "reference=$IMAGE:$VERSION*" --format '    {{.Repository}}:{{.Tag}}  {{.Size}}'
