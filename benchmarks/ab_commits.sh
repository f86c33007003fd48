#!/usr/bin/env bash
# Side-by-side timing of the package at two commits, on the same machine in one run.
#
#   bash benchmarks/ab_commits.sh BASE ROUNDS -- ARGS...
#
# Checks BASE out into a temporary git worktree, then runs `python benchmarks/inference.py ARGS`
# ROUNDS times for BASE and for the working tree, alternately (base, new, base, new, ...), each
# with its own benchmark script and its own src/ first on PYTHONPATH, so that load on the machine
# falls on both alike. Prints each run's output under a "== <which> round <n>" line, and the load
# average before and after. Example (the CPU breakdown of issue 20):
#
#   bash benchmarks/ab_commits.sh 50a8481 2 -- --breakdown --devices cpu \
#       --models upsampleunet48-gan --shape 64 128 128 --repeats 3 --variants host
set -euo pipefail
base=${1:?BASE commit}; rounds=${2:?ROUNDS}; shift 2
[[ ${1:-} == -- ]] && shift
here=$(git rev-parse --show-toplevel)
tree=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$tree" >/dev/null 2>&1 || rm -rf "$tree"' EXIT
git -C "$here" worktree add --detach "$tree" "$base" >/dev/null 2>&1
echo "base $(git -C "$tree" rev-parse --short HEAD), new $(git -C "$here" rev-parse --short HEAD)$(git -C "$here" diff --quiet || echo ' + uncommitted changes')"
echo "load average before: $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= rounds; r++)); do
    for which in base new; do
        root=$here; [[ $which == base ]] && root=$tree
        echo "== $which round $r"
        (cd "$root" && PYTHONPATH="$root/src${PYTHONPATH:+:$PYTHONPATH}" python benchmarks/inference.py "$@")
    done
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
