#!/usr/bin/env bash
# The Debian packages, as an operator gets them: builds them from a copy of
# the tree (dpkg-buildpackage -b, debhelper), lints them (lintian: no
# errors), installs them with apt-get, checks what they installed (the
# config passes --check-config, user kvs, the unit, sysusers and tmpfiles
# entries, man pages, the version everywhere), starts the installed kvsd on
# its embedded Kafka and reads a value written through it with the
# installed kvsctl, Python and Java, then purges them and checks that
# nothing is left.
# Needs root (apt-get, /etc). Run by scripts/test.sh.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
work=$(mktemp -d /tmp/kvs-packages.XXXXXX)
kvsd_pid=
installed=0
packages=(kvsd libkvs0 libkvs-dev kvs-tools python3-kvs libkvs-java)
cleanup() {
  [ -n "$kvsd_pid" ] && kill "$kvsd_pid" 2>/dev/null && wait "$kvsd_pid" 2>/dev/null
  rm -rf /dev/shm/kvspkg."$$".* 2>/dev/null || true
  # A check that failed half-way leaves no package behind for the builds after it.
  [ "$installed" = 1 ] && apt-get purge -y -qq "${packages[@]}" >/dev/null 2>&1
  rm -rf "$work"
}
trap cleanup EXIT
fail() { echo "package check: $*" >&2; exit 1; }

# 1. Build and lint, from the files git knows (a build tree is not copied).
mkdir "$work/kvs"
(cd "$root" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp -P --parents -t "$work/kvs")
(cd "$work/kvs" && dpkg-buildpackage -us -uc -b -j2 >"$work/build.log" 2>&1) ||
  { tail -40 "$work/build.log"; fail "dpkg-buildpackage failed"; }
lintian --fail-on error --tag-display-limit 0 "$work"/*.changes ||
  fail "lintian reports errors"
version=$(cd "$work/kvs" && dpkg-parsechangelog -S Version)
cmake_version=$(sed -n 's/^project(kvs VERSION \([0-9.]*\).*/\1/p' "$root/CMakeLists.txt")
[ "$version" = "$cmake_version" ] ||
  fail "debian/changelog says $version, CMakeLists.txt $cmake_version: give both the same version"

# 2. Install; what an operator finds.
debs=()
for p in "${packages[@]}"; do debs+=("$work/${p}_${version}_$(dpkg --print-architecture).deb"); done
installed=1
apt-get install -y -qq "${debs[@]}" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; fail "apt-get install of the packages failed"; }
[ "$(/usr/sbin/kvsd --version)" = "kvsd $version" ] || fail "kvsd --version: $(/usr/sbin/kvsd --version)"
[ "$(kvsctl --version)" = "kvsctl $version" ] || fail "kvsctl --version: $(kvsctl --version)"
[ "$(pkg-config --modversion kvs)" = "$version" ] || fail "kvs.pc is not version $version"
/usr/sbin/kvsd --check-config --config /etc/kvs/kvsd.toml || fail "the installed config does not pass --check-config"
getent passwd kvs >/dev/null || fail "user kvs does not exist"
for f in /lib/systemd/system/kvsd.service /usr/lib/sysusers.d/kvs.conf /usr/lib/tmpfiles.d/kvs.conf \
         /usr/share/man/man8/kvsd.8.gz /usr/share/man/man1/kvsctl.1.gz \
         /usr/share/bash-completion/completions/kvsctl /usr/share/kvs/prometheus/kvsd-alerts.yml \
         /usr/include/kvs/kvs.h /usr/lib/"$(dpkg-architecture -qDEB_HOST_MULTIARCH)"/libkvs.so.0; do
  [ -e "$f" ] || fail "$f is not installed"
done
grep -q '^ExecStart=/usr/sbin/kvsd ' /lib/systemd/system/kvsd.service || fail "the unit does not run /usr/sbin/kvsd"
[ -d /run/kvs ] && [ "$(stat -c %U /run/kvs)" = kvs ] || fail "/run/kvs (tmpfiles) is missing or not kvs's"

# 3. The installed kvsd on its embedded Kafka; a write and a zero-copy read
#    with the installed kvsctl.
cat >"$work/kvsd.toml" <<TOML
[kvsd]
socket_path = "$work/kvsd.sock"
shm_prefix = "kvspkg.$$."
state_dir = "$work/state"
metrics_listen = ""
[kafka]
"bootstrap.servers" = "embedded"
[[table]]
name = "flags"
topic = "flags"
TOML
/usr/sbin/kvsd --embedded-kafka --config "$work/kvsd.toml" 2>"$work/kvsd.log" &
kvsd_pid=$!
kvsctl --config "$work/kvsd.toml" wait-ready --timeout-ms 60000 >/dev/null ||
  { cat "$work/kvsd.log"; fail "the installed kvsd did not turn READY"; }
kvsctl --config "$work/kvsd.toml" put --visible checkout.v2 on >/dev/null ||
  { cat "$work/kvsd.log"; fail "a write through the installed kvsd failed"; }
[ "$(kvsctl --config "$work/kvsd.toml" get checkout.v2)" = on ] || fail "kvsctl get did not read the value"
# The same value through the installed Python and Java bindings.
got=$(/usr/bin/python3 -c 'import kvs, sys
t = kvs.Table.open("flags", shm_prefix=sys.argv[1], handover=kvs.HANDOVER_NEVER)
print(t.get(b"checkout.v2").decode())' "kvspkg.$$.") || fail "python3-kvs could not read the table"
[ "$got" = on ] || fail "python3-kvs read \"$got\""
mkdir -p "$work/java"
cat >"$work/java/Read.java" <<'JAVA'
public class Read {
  public static void main(String[] a) {
    try (io.kvs.Table t = io.kvs.Table.open("flags", a[0], null, null, io.kvs.Table.HANDOVER_NEVER)) {
      System.out.println(new String(t.get("checkout.v2".getBytes())));
    }
  }
}
JAVA
javac -d "$work/java" -cp /usr/share/java/kvs.jar --add-modules jdk.incubator.foreign \
  "$work/java/Read.java" 2>"$work/javac.log" || { cat "$work/javac.log"; fail "javac against kvs.jar failed"; }
got=$(java --add-modules jdk.incubator.foreign --enable-native-access=ALL-UNNAMED \
  -cp "/usr/share/java/kvs.jar:$work/java" Read "kvspkg.$$." 2>"$work/java.log") ||
  { cat "$work/java.log"; fail "libkvs-java could not read the table"; }
[ "$got" = on ] || fail "libkvs-java read \"$got\""
kill "$kvsd_pid"
wait "$kvsd_pid" || fail "kvsd did not stop cleanly"
kvsd_pid=

# 4. Purge: nothing of the packages stays (user kvs does, as Debian keeps
#    system users).
apt-get purge -y -qq "${packages[@]}" >"$work/purge.log" 2>&1 || { cat "$work/purge.log"; fail "purge failed"; }
installed=0
for f in /etc/kvs /var/lib/kvs /run/kvs /usr/sbin/kvsd /usr/bin/kvsctl /usr/include/kvs /usr/share/kvs /usr/share/doc/kvsd \
         /lib/systemd/system/kvsd.service /usr/lib/sysusers.d/kvs.conf /usr/lib/tmpfiles.d/kvs.conf \
         /usr/share/bash-completion/completions/kvsctl /usr/lib/python3/dist-packages/kvs \
         /usr/share/java/kvs.jar; do
  [ ! -e "$f" ] || fail "$f is left after purge"
done
for p in "${packages[@]}"; do
  if dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q installed; then fail "$p is still installed"; fi
done
echo "package check passed: ${packages[*]} $version built, lint-free, installed, run and purged"
