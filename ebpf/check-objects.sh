#!/bin/sh
# Checks that the committed objects in obj/ are what bpf/ compiles to (CI runs this; it needs
# clang and llvm-strip). With --update, refreshes obj/ instead.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
sh "$here/bpf/build.sh" "$tmp"
status=0
for obj in "$tmp"/*.o; do
    name=$(basename "$obj")
    if [ "${1:-}" = "--update" ]; then
        cp "$obj" "$here/obj/$name"
        echo "updated obj/$name"
    elif ! cmp -s "$obj" "$here/obj/$name"; then
        echo "obj/$name differs from what bpf/ compiles to; run ebpf/check-objects.sh --update" >&2
        status=1
    fi
done
[ $status -eq 0 ] && [ "${1:-}" != "--update" ] && echo "committed eBPF objects match the sources"
exit $status
