#!/bin/sh
# Compiles every bpf/*.bpf.c into OUTDIR/*.bpf.o. Run from anywhere; used by build.rs and by
# check-objects.sh, so the flags live in one place.
#
# Reproducible output: sources are named by relative path (we cd into bpf/), debug paths are
# mapped, and DWARF is stripped afterwards. BTF (.BTF, .BTF.ext) stays: aya needs it for the
# BTF-defined maps and the `volatile const` globals.
set -eu
out=$(cd "$1" && pwd)
cd "$(dirname "$0")"
CLANG=${CLANG:-clang}
STRIP=${LLVM_STRIP:-llvm-strip}
for src in *.bpf.c; do
    obj="$out/${src%.c}.o"
    "$CLANG" -O2 -g -target bpf -Wall -Werror \
        -I/usr/include/x86_64-linux-gnu \
        -fdebug-prefix-map="$(pwd)"=. -fdebug-compilation-dir=. \
        -c "$src" -o "$obj"
    "$STRIP" -g "$obj"
done
