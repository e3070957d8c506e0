#!/usr/bin/env bash
# Make a Docker engine answer on this machine, for the container test (.ci/run runs this first):
#
#   container/ci-docker.sh
#
# - As root on a Debian machine, `apt-get install` of what is missing: docker.io where no daemon answers and
#   dockerd is absent, debootstrap (for container/stand-in-base.sh) where it is absent.
# - A daemon that already answers `docker version` is used as it is. Else, as root,
#   `dockerd --iptables=false --bridge=none` starts in the background (no iptables, no bridge:
#   containers get no network unless they ask for the host's, which builds do with --network host). Its log
#   goes to $DOCKERD_LOG (default ${TMPDIR:-/tmp}/petseg-dockerd.log).
# - Waits up to 60 s for the daemon. Exit 0 once it answers; else 1 with one line saying why (the container
#   test then skips, or fails in CI).
set -euo pipefail

die() {
    echo "ci-docker.sh: $*" >&2
    exit 1
}

case "${1:-}" in
    -h | --help)
        sed -n '2,13p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
        exit 0
        ;;
    "") ;;
    *) die "unknown argument: $1 (see --help)" ;;
esac

answers() { command -v docker > /dev/null && docker version --format '{{.Server.Version}}' > /dev/null 2>&1; }

# debootstrap is for the stand-in base (container/stand-in-base.sh), needed where the base cannot be pulled.
missing=()
answers || command -v dockerd > /dev/null || missing+=(docker.io)
command -v debootstrap > /dev/null || missing+=(debootstrap)
if ((${#missing[@]} > 0)) && [[ "$(id -u)" == 0 ]] && command -v apt-get > /dev/null; then
    echo "==> apt-get install ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    if ! timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null 2>&1; then
        timeout 300 apt-get update -qq > /dev/null 2>&1 || echo "ci-docker.sh: apt-get update failed" >&2
        timeout 600 apt-get install -y -qq --no-install-recommends "${missing[@]}" > /dev/null 2>&1 \
            || echo "ci-docker.sh: apt-get install ${missing[*]} failed" >&2
    fi
fi

if answers; then
    echo "==> Docker $(docker version --format '{{.Server.Version}}') answers"
    exit 0
fi
[[ "$(id -u)" == 0 ]] || die "no Docker daemon answers, and starting one needs root"
command -v dockerd > /dev/null || die "no Docker daemon answers, and dockerd is not installed (apt-get install docker.io)"

log="${DOCKERD_LOG:-${TMPDIR:-/tmp}/petseg-dockerd.log}"
echo "==> starting dockerd --iptables=false --bridge=none (log: $log)"
nohup dockerd --iptables=false --bridge=none > "$log" 2>&1 &
for _ in $(seq 60); do
    if answers; then
        echo "==> Docker $(docker version --format '{{.Server.Version}}') answers"
        exit 0
    fi
    sleep 1
done
die "dockerd did not answer within 60 s: $(tail -n 1 "$log")"
