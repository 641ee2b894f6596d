#!/usr/bin/env bash
# Renders ffi/vmta.pc.in into a pkg-config file on standard output.
#   ffi/pkgconfig.sh LIBDIR INCLUDEDIR > DIR/vmta.pc
# LIBDIR holds libvmta.so and libvmta.a (e.g. target/release, or /usr/local/lib after copying them
# there); INCLUDEDIR holds vmta.h (include/ in the repository). Then:
#   PKG_CONFIG_PATH=DIR cc prog.c $(pkg-config --cflags --libs vmta)             # shared
#   PKG_CONFIG_PATH=DIR cc prog.c $(pkg-config --cflags vmta) -static-pie ...   # or --static:
#   PKG_CONFIG_PATH=DIR cc prog.c $(pkg-config --cflags vmta) DIR/libvmta.a $(pkg-config --libs-only-l --static vmta | sed 's/-lvmta//')
# Libs.private lists what the static library needs (from `rustc --print native-static-libs`).
set -euo pipefail
if [ $# -ne 2 ]; then
  echo "usage: $0 LIBDIR INCLUDEDIR" >&2
  exit 2
fi
here="$(cd "$(dirname "$0")" && pwd)"
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$here/../Cargo.toml" | head -n 1)
libdir="$(cd "$1" && pwd)"
includedir="$(cd "$2" && pwd)"
sed -e "s|@PREFIX@|$libdir|" -e "s|@LIBDIR@|$libdir|" -e "s|@INCLUDEDIR@|$includedir|" -e "s|@VERSION@|$version|" \
  "$here/vmta.pc.in"
