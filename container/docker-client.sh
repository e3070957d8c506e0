# shellcheck shell=bash
# Sourced by build.sh and container/stand-in-base.sh: what the docker client on PATH can do, for Debian's
# docker.io 20.10 and for current Docker clients, with or without the buildx plugin.

# Prints the DOCKER_BUILDKIT value that `docker build` accepts with this client: 1 (BuildKit) where the
# buildx plugin is installed, or where the client predates Docker 23 and carries BuildKit itself (docker.io
# 20.10); else 0, the legacy builder, because a current client without buildx refuses DOCKER_BUILDKIT=1
# ("BuildKit is enabled but the buildx component is missing or broken"). Both builders build the Dockerfile.
docker_buildkit() {
    if docker buildx version > /dev/null 2>&1; then
        echo 1
        return
    fi
    local client major
    client="$(docker version --format '{{.Client.Version}}' 2> /dev/null || true)"
    major="${client%%.*}"
    if [[ "$major" =~ ^[0-9]+$ ]] && ((major < 23)); then
        echo 1
    else
        echo 0
    fi
}
