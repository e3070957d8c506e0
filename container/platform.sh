# shellcheck shell=bash
# Sourced by test.sh and the container test: the `docker run` options that imitate the runtime of Grand
# Challenge's smallest GPU instance, ml.g4dn.xlarge (Grand Challenge documentation, "Runtime Environment"):
# one T4, 4 vCPUs, 16 GiB of memory of which 1 GiB is reserved for the system, /dev/shm 50 % of memory,
# an empty writable /tmp, /input read-only, no network. Each limit can be overridden from the environment:
#
#   CPUS        4    CPUs the container sees (--cpuset-cpus 0-<CPUS-1>: the count torch and nproc see, as
#                    in the instance's VM); fewer where the Docker host has fewer
#   MEM_LIMIT   15g  memory, swap included (--memory and --memory-swap; g is GiB for Docker)
#   SHM_SIZE    8g   /dev/shm
#   PIDS_LIMIT  256  processes and threads
#   TMP_SIZE    ''   size of the empty /tmp (a tmpfs; empty: no limit beyond memory)
#
# Always: --network none, all capabilities dropped, no new privileges. The input and output mounts and
# --gpus are the caller's.

# Fills PLATFORM_RUN_OPTIONS (an array) and PLATFORM_SUMMARY (one line for the log), for the caller.
# shellcheck disable=SC2034
platform_run_options() {
    local host_cpus cpus tmp_options
    host_cpus="$(docker info --format '{{.NCPU}}' 2> /dev/null || true)"
    [[ "$host_cpus" =~ ^[0-9]+$ ]] || host_cpus="$(nproc)"
    cpus="${CPUS:-4}"
    [[ "$cpus" =~ ^[1-9][0-9]*$ ]] || {
        echo "CPUS=$cpus: expected a whole number of CPUs" >&2
        return 2
    }
    ((cpus <= host_cpus)) || cpus="$host_cpus"
    tmp_options="rw,exec,nosuid,nodev,mode=1777${TMP_SIZE:+,size=$TMP_SIZE}"
    PLATFORM_RUN_OPTIONS=(
        --network none
        --cpuset-cpus "0-$((cpus - 1))"
        --memory "${MEM_LIMIT:-15g}" --memory-swap "${MEM_LIMIT:-15g}"
        --shm-size "${SHM_SIZE:-8g}"
        --pids-limit "${PIDS_LIMIT:-256}"
        --tmpfs "/tmp:$tmp_options"
        --cap-drop ALL --security-opt no-new-privileges
    )
    PLATFORM_SUMMARY="$cpus CPU(s) of ${CPUS:-4} asked, ${MEM_LIMIT:-15g} memory, /dev/shm ${SHM_SIZE:-8g},"
    PLATFORM_SUMMARY+=" empty /tmp, no network (as ml.g4dn.xlarge: 4 vCPUs, 15 GiB usable)"
}
