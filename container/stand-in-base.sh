#!/usr/bin/env bash
# Make a stand-in for the Dockerfile's base image, for machines that cannot pull it (no registry for
# images). It replaces the base and nothing else: the project's Dockerfile builds on it unchanged.
#
#   container/stand-in-base.sh [--force]
#
# 1. An image of the base's name already here (the real one, or a stand-in made before) is used as it is,
#    unless --force. Else `docker pull` is tried first (PULL_TIMEOUT seconds, default 60); only where it
#    fails is a stand-in made:
# 2. debootstrap (minbase, Debian bookworm, Python 3.11 as in the real base) into a temporary folder,
#    imported into Docker as petseg-stand-in-rootfs:bookworm;
# 3. container/Dockerfile.stand-in on it: `python` linked to python3, this machine's CA bundle
#    (PIP_CERT, else SSL_CERT_FILE, else /etc/ssl/certs/ca-certificates.crt) over the image's, and the
#    torch wheel that `pip download --no-deps torch==<the base's version>` resolves here (TORCH_WHEEL=FILE
#    gives one), tagged with the base image's name and labelled org.petseg.stand-in-for.
#
# Needs root (debootstrap), Docker and the Debian and Python package registries. The torch is the CPU
# build: images built on the stand-in run on the CPU. Environment: DEBIAN_MIRROR (default
# http://deb.debian.org/debian), PYTHON (default python3, runs pip download), BUILD_NETWORK (the build's
# --network, default host).
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PULL_TIMEOUT="${PULL_TIMEOUT:-60}"
ROOTFS_IMAGE="petseg-stand-in-rootfs:bookworm"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,ca-certificates

# shellcheck source=container/docker-client.sh
source "$REPO/container/docker-client.sh"

die() {
    echo "stand-in-base.sh: error: $*" >&2
    exit 1
}

force=0
while (($# > 0)); do
    case "$1" in
        --force) force=1 ;;
        -h | --help)
            sed -n '2,22p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
            exit 0
            ;;
        *) die "unknown argument: $1 (see --help)" ;;
    esac
    shift
done

# The base is the first stage's FROM: the Dockerfile is its one home.
base="$(sed -n 's/^FROM[[:space:]]\{1,\}\([^[:space:]]*\)[[:space:]]\{1,\}AS[[:space:]]\{1,\}runtime[[:space:]]*$/\1/p' \
    "$REPO/Dockerfile")"
[[ -n "$base" ]] || die "$REPO/Dockerfile: no 'FROM <image> AS runtime' line"
torch_version="${base#*:}"
torch_version="${torch_version%%-*}"
[[ "$torch_version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "cannot read the torch version from the base's tag: $base"

command -v docker > /dev/null || die "docker not found"
docker version --format "{{.Server.Version}}" > /dev/null 2>&1 || die "cannot reach the Docker daemon"

if ((!force)) && docker image inspect "$base" > /dev/null 2>&1; then
    stand_in="$(docker image inspect --format '{{index .Config.Labels "org.petseg.stand-in-for"}}' "$base")"
    if [[ -n "$stand_in" && "$stand_in" != "<no value>" ]]; then
        echo "==> $base is here already (petseg's stand-in, CPU torch); --force makes it again"
    else
        echo "==> $base is here already (the real base image)"
    fi
    exit 0
fi
if ((!force)); then
    echo "==> trying docker pull $base (at most ${PULL_TIMEOUT} s)"
    if timeout "$PULL_TIMEOUT" docker pull --quiet "$base" > /dev/null 2>&1; then
        echo "==> pulled the real $base"
        exit 0
    fi
    echo "    cannot pull it: making a stand-in"
fi

[[ "$(id -u)" == 0 ]] || die "debootstrap needs root"
command -v debootstrap > /dev/null || die "debootstrap not found (apt-get install debootstrap)"

work="$(mktemp -d "${TMPDIR:-/tmp}/petseg-stand-in.XXXXXX")"
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/context/wheels"

started=$SECONDS
echo "==> debootstrap --variant=minbase $SUITE ($MIRROR)"
debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$work/rootfs" "$MIRROR" > "$work/debootstrap.log" 2>&1 \
    || {
        tail -n 20 "$work/debootstrap.log" >&2
        die "debootstrap failed (above)"
    }
rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb "$work/rootfs/var/lib/apt/lists/"*
echo "==> docker import -> $ROOTFS_IMAGE"
tar --numeric-owner -C "$work/rootfs" -c . | docker import - "$ROOTFS_IMAGE" > /dev/null
rm -rf "$work/rootfs"

if [[ -n "${TORCH_WHEEL:-}" ]]; then
    [[ -f "$TORCH_WHEEL" ]] || die "TORCH_WHEEL=$TORCH_WHEEL: file not found"
    cp "$TORCH_WHEEL" "$work/context/wheels/"
else
    echo "==> pip download --no-deps torch==$torch_version"
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.11 \
        --platform manylinux_2_28_x86_64 "torch==$torch_version" -d "$work/context/wheels" \
        || die "cannot download the torch $torch_version wheel (give one with TORCH_WHEEL=FILE)"
fi
wheel="$(find "$work/context/wheels" -name 'torch-*.whl' -print -quit)"
[[ -n "$wheel" ]] || die "no torch wheel in $work/context/wheels"
echo "    $(basename "$wheel") ($(du -h "$wheel" | cut -f1))"

ca_bundle="${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}"
[[ -f "$ca_bundle" ]] || die "CA bundle $ca_bundle not found"
cp "$ca_bundle" "$work/context/ca-certificates.crt"
cp "$REPO/container/Dockerfile.stand-in" "$work/context/Dockerfile"

echo "==> building $base (stand-in)"
DOCKER_BUILDKIT="$(docker_buildkit)" docker build --network "${BUILD_NETWORK:-host}" \
    --build-arg "ROOTFS=$ROOTFS_IMAGE" --build-arg "BASE_NAME=$base" --tag "$base" "$work/context"
echo "==> $base is petseg's stand-in ($((SECONDS - started)) s): $(docker image inspect --format '{{.Size}}' "$base" \
    | awk '{printf "%.2f GB", $1 / 1e9}')"
