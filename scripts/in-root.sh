#!/usr/bin/env bash
# Run a command inside a stack root (scripts/stack-root.sh), for the test matrix:
#   scripts/in-root.sh ROOT CMD [ARGS...]
# In private mount and PID namespaces, so everything mounted or started there goes away
# when CMD ends, also after a crash: /proc, /sys, /dev, a fresh /run and /tmp, the host's
# resolv.conf, hosts and CA bundle, and this checkout at the same path as on the host; then
# chroot ROOT CMD.  The network namespace is the host's: the lab's `ip netns` namespaces are
# created (and removed) from inside.
set -euo pipefail
root="${1:?usage: in-root.sh ROOT CMD...}"
shift
here="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/.qf-recipe" ] || { echo "in-root: $root is not a stack root" >&2; exit 2; }
# shellcheck disable=SC2016
exec unshare --mount --pid --fork --kill-child --propagation private -- /bin/sh -euc '
root="$1"; here="$2"; shift 2
mount --bind "$root" "$root"   # a mount point, so `ip netns` can make / a slave inside
mount -t proc proc "$root/proc"
mount --rbind /sys "$root/sys"
mount --rbind /dev "$root/dev"
mount -t tmpfs tmpfs "$root/run"
mount -t tmpfs tmpfs "$root/tmp"
cp /etc/resolv.conf "$root/etc/resolv.conf" 2>/dev/null || true
# The host hostname resolves locally: Salt grains look it up, and a DNS query from a lab
# qube namespace would only time out.
[ -e "$root/etc/hosts" ] || : > "$root/etc/hosts"
mount --bind -o ro /etc/hosts "$root/etc/hosts"
# Trust what the host trusts (a CI proxy CA for pip, for example).
if [ -f /etc/ssl/certs/ca-certificates.crt ] && [ -f "$root/etc/ssl/certs/ca-certificates.crt" ]; then
    mount --bind -o ro /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
fi
mkdir -p "$root$here"
mount --bind "$here" "$root$here"
cd /
exec chroot "$root" /usr/bin/env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    HOME=/root LANG=C.UTF-8 CI="${CI:-}" TERM="${TERM:-dumb}" "$@"
' sh "$root" "$here" "$@"
