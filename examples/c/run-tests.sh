#!/usr/bin/env bash
# Installs the vmta C library into a temporary prefix (`make install`: libvmta.so with its soname,
# libvmta.a, vmta.h, vmta.pc), builds the C examples against what was installed (with
# `pkg-config --cflags --libs vmta`, -Wall -Wextra -Werror; a static link too) and runs
# them against a real loopback mail world (examples/peers/mailworld.py: dnsmasq and Postfix
# smtp-sink on 127.0.70.20-23):
#   - send, linked with the shared library: natively, under AddressSanitizer (+UBSan), under ASan
#     handing each message over without waiting (vmta_engine_submit_nowait, vmta_engine_flush) and under
#     valgrind; it must report a delivered, a bounced and an expired recipient, and the accepting
#     sink must have received the message; then a DSN applied after the delivery must give a late
#     bounce matched to the message, after which the recipient is refused (VMTA_SUPPRESSED);
#   - misuse, linked with the static library, and with the shared one under ASan and valgrind.
# Any failure, sanitizer report, valgrind error or leak fails the script.
# VMTA_PROFILE=release uses target/release (default debug). VMTA_C_WORLD_IP moves the mail world
# (default 127.0.70.20; it takes that address and the next three).
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
cd "$root"
profile="${VMTA_PROFILE:-debug}"
for tool in cc c++ make pkg-config readelf valgrind python3; do
  command -v "$tool" >/dev/null || { echo "c tests: $tool is not installed (run .ci/deps)" >&2; exit 1; }
done

work="$(mktemp -d -t vmta-c-XXXXXX)"
world_pid=""
cleanup() {
  if [ -n "$world_pid" ]; then kill "$world_pid" 2>/dev/null || true; wait "$world_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "c: make install into a temporary prefix"
make -s install PREFIX="$work/prefix" PROFILE="$profile" >/dev/null
export PKG_CONFIG_PATH="$work/prefix/lib/pkgconfig"
libdir="$(pkg-config --variable=libdir vmta)"
[ "$libdir" = "$work/prefix/lib" ] || { echo "c: pkg-config found $libdir, not the installed prefix" >&2; exit 1; }
soname="$(readelf -d "$libdir/libvmta.so" | sed -n 's/.*Library soname: \[\(.*\)\]/\1/p')"
[ -n "$soname" ] && [ -e "$libdir/$soname" ] || { echo "c: libvmta.so has no soname link ($soname)" >&2; exit 1; }
cflags="-std=c11 -Wall -Wextra -Werror -g -O1 $(pkg-config --cflags vmta)"
shared="$(pkg-config --libs vmta) -Wl,-rpath,$libdir -lpthread"
# Static: the installed libvmta.a and what pkg-config --static says it needs.
static="-Wl,-Bstatic -lvmta -Wl,-Bdynamic $(pkg-config --static --libs vmta | sed 's/-lvmta//')"
asan="-fsanitize=address,undefined -fno-omit-frame-pointer -fno-sanitize-recover=all"

echo "c: building"
# shellcheck disable=SC2086
{
  cc $cflags examples/c/send.c -o "$work/send" $shared
  cc $cflags $asan examples/c/send.c -o "$work/send-asan" $shared
  cc $cflags examples/c/misuse.c -o "$work/misuse-static" $static
  cc $cflags $asan examples/c/misuse.c -o "$work/misuse-asan" $shared
  cc $cflags examples/c/misuse.c -o "$work/misuse" $shared
  readelf -d "$work/send" | grep -q "NEEDED.*\[$soname\]" || { echo "c: send does not need $soname" >&2; exit 1; }
  if readelf -d "$work/misuse-static" | grep -q "NEEDED.*libvmta"; then echo "c: misuse-static links libvmta dynamically" >&2; exit 1; fi
  # The header also compiles as C++ (extern "C" guards) and as pedantic C99.
  printf '#include <vmta.h>\nint main() { return vmta_version() == VMTA_VERSION_NUMBER ? 0 : 1; }\n' >"$work/cxx.cc"
  c++ -std=c++11 -Wall -Wextra -Werror $(pkg-config --cflags vmta) "$work/cxx.cc" -o "$work/cxx" $shared
  "$work/cxx"
  cc -std=c99 -pedantic -Wall -Wextra -Werror $(pkg-config --cflags vmta) -fsyntax-only -x c "$work/cxx.cc"
}

python3 examples/peers/mailworld.py "${VMTA_C_WORLD_IP:-127.0.70.20}" >"$work/world.json" &
world_pid=$!
for _ in $(seq 100); do [ -s "$work/world.json" ] && break; sleep 0.1; done
[ -s "$work/world.json" ] || { echo "c: the mail world did not start" >&2; exit 1; }
world_toml="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["toml"])' "$work/world.json")"
dump="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["dump"])' "$work/world.json")"

export ASAN_OPTIONS="detect_leaks=1:abort_on_error=0:exitcode=86"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
valgrind=(valgrind -q --error-exitcode=99 --leak-check=full --show-leak-kinds=definite,indirect
  --errors-for-leak-kinds=definite,indirect)

run_send() { # name, command...
  local name="$1"
  shift
  local spool="$work/spool-$name"
  cat >"$work/$name.toml" <<EOF
[engine]
shards = 2
pin_shards = false
durability = "none"
spool_dir = "$spool"
spool_segment_mb = 2
[retry]
max_age_s = 3
$world_toml
EOF
  local tag="c-$name"
  echo "c: send ($name)"
  "$@" "$work/$name.toml" "sender@vmta.test" "$tag@ok.ffi.test" "$tag@bad.ffi.test" \
    "$tag@later.ffi.test" >"$work/$name.out"
  cat "$work/$name.out"
  grep -Eq "^delivered [0-9a-f]{16} $tag@ok.ffi.test 250 " "$work/$name.out"
  grep -Eq "^bounced [0-9a-f]{16} $tag@bad.ffi.test 5[0-9][0-9] " "$work/$name.out"
  grep -Eq "^deferred [0-9a-f]{16} $tag@later.ffi.test 4[0-9][0-9] " "$work/$name.out"
  grep -Eq "^expired [0-9a-f]{16} $tag@later.ffi.test " "$work/$name.out"
  grep -q "^stats submitted=3 delivered=1 bounced=1 " "$work/$name.out"
  local id
  id="$(sed -n "s/^delivered \([0-9a-f]\{16\}\) $tag@ok.ffi.test .*/\1/p" "$work/$name.out")"
  grep -q "^report dsn outcomes=1 message=$id suppressed=1$" "$work/$name.out"
  grep -Eq "^late-bounce $id $tag@ok.ffi.test [0-9]+ 5.1.1 userunknown " "$work/$name.out"
  grep -q "^refused $tag@ok.ffi.test suppressed$" "$work/$name.out"
  grep -lq "^To: <$tag@ok.ffi.test>" "$dump"/* || { echo "c: the sink did not receive $tag's message" >&2; exit 1; }
}

run_send native "$work/send"
run_send asan "$work/send-asan"
run_send valgrind "${valgrind[@]}" "$work/send"
# The same conversation with each message handed over without waiting for the disk.
VMTA_SEND_NOWAIT=1 run_send nowait "$work/send-asan"
grep -q "^flushed ok$" "$work/nowait.out"

for variant in misuse-static misuse-asan; do
  echo "c: $variant"
  mkdir -p "$work/spool-$variant"
  "$work/$variant" "$work/spool-$variant"
done
echo "c: misuse (valgrind)"
mkdir -p "$work/spool-misuse-valgrind"
"${valgrind[@]}" "$work/misuse" "$work/spool-misuse-valgrind"
echo "c: all passed"
