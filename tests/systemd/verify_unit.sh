#!/bin/sh
# Checks systemd/kvsd.service with systemd-analyze verify, and the choices the
# design depends on.   verify_unit.sh SOURCE_DIR KVSD_BINARY
set -eu
src=$1
kvsd=$2
unit="$src/systemd/kvsd.service"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# verify checks that ExecStart's binary exists: point it at the build.
sed "s|/usr/sbin/kvsd|$kvsd|g" "$unit" > "$tmp/kvsd.service"
systemd-analyze verify "$tmp/kvsd.service"
fail() { echo "kvsd.service: $1" >&2; exit 1; }
grep -qx 'Type=notify' "$unit" || fail "must be Type=notify (kvsd sends READY=1)"
grep -qx 'RemoveIPC=no' "$unit" || fail "needs RemoveIPC=no, or systemd deletes the segments"
grep -q '^WatchdogSec=' "$unit" || fail "needs WatchdogSec="
grep -qx 'Restart=on-failure' "$unit" || fail "needs Restart=on-failure"
! grep -q '^DynamicUser=yes' "$unit" || fail "DynamicUser=yes would delete the segments"
! grep -q '^PrivateDevices=yes' "$unit" || fail "PrivateDevices=yes hides /dev/shm from readers"
! grep -q '^PrivateIPC=yes' "$unit" || fail "PrivateIPC=yes isolates IPC from readers"
! grep -Eq '^(InaccessiblePaths|TemporaryFileSystem)=.*/dev' "$unit" || fail "/dev/shm must stay shared"
grep -q 'AF_UNIX' "$unit" || fail "RestrictAddressFamilies must keep AF_UNIX (socket, sd_notify)"
echo "kvsd.service verified"
