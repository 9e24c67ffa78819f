#!/usr/bin/env bash
# Build the noarch RPM of the formula for Qubes OS dom0, reproducibly: two
# builds of the same tree are bit-identical (every timestamp is the date of
# the newest release in CHANGELOG.md).
#   scripts/build-rpm.sh [OUTDIR]     # default OUTDIR: dist/
# Prints the path of the RPM.  Needs rpmbuild (Debian: apt-get install rpm;
# installed when missing if run as root).
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
cd "$here"
outdir="$(mkdir -p "${1:-dist}" && cd "${1:-dist}" && pwd)"
name=qubes-firewall-formula

die() { echo "build-rpm: $*" >&2; exit 1; }

version="$(tr -d '[:space:]' < VERSION)"
[[ "$version" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] || die "VERSION must be X.Y.Z, not '$version'"

# The newest release heading of CHANGELOG.md must be this version.
newest="$(grep -m1 -E '^## \[[0-9]+\.[0-9]+\.[0-9]+\] - [0-9]{4}-[0-9]{2}-[0-9]{2}$' CHANGELOG.md || true)"
[ -n "$newest" ] || die "CHANGELOG.md has no '## [X.Y.Z] - YYYY-MM-DD' release heading"
[ "$(sed -E 's/^## \[([^]]+)\].*/\1/' <<<"$newest")" = "$version" ] ||
    die "the newest release in CHANGELOG.md is '$newest', VERSION says $version"
release_date="${newest##* - }"
epoch="$(date -u -d "$release_date 00:00:00" +%s)"

if ! command -v rpmbuild >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        echo "build-rpm: apt-get install rpm" >&2
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >&2 ||
            { apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq rpm >&2; }
    else
        die "rpmbuild is missing: install it (Debian: apt-get install rpm; Fedora: dnf install rpm-build)"
    fi
fi

# The files that go into the package: the formula (tracked files only, so no
# caches), the pillar examples and the documentation.
files() {
    if git -C "$here" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
        git -C "$here" ls-files --cached --others --exclude-standard -- _modules _states salt pillar.example docs README.md CHANGELOG.md
    else
        find _modules _states salt pillar.example docs README.md CHANGELOG.md -type f \
            ! -name '*.pyc' ! -path '*/__pycache__/*'
    fi
}

top="$(mktemp -d "${TMPDIR:-/tmp}/build-rpm.XXXXXX")"
trap 'rm -rf "$top"' EXIT
mkdir -p "$top"/{SOURCES,SPECS,BUILD,RPMS,SRPMS,stage/"$name-$version"}
files | LC_ALL=C sort | while IFS= read -r f; do
    [ -f "$f" ] || continue # deleted in the work tree, not yet in git
    mkdir -p "$top/stage/$name-$version/$(dirname "$f")"
    cp "$f" "$top/stage/$name-$version/$f"
done
# A reproducible tarball: sorted names, fixed mtime, owner and modes.
tar --sort=name --mtime="@$epoch" --owner=0 --group=0 --numeric-owner --format=gnu \
    --mode='u+rw,go+r,go-w,a-st' -C "$top/stage" -cf - "$name-$version" |
    gzip -9n > "$top/SOURCES/$name-$version.tar.gz"

# The spec with its %changelog derived from CHANGELOG.md's release sections.
{
    cat packaging/$name.spec
    awk '
        function flush() { if (item != "") { gsub(/%/, "%%", item); print item; item = "" } }
        /^## \[[0-9]+\.[0-9]+\.[0-9]+\] - / {
            flush()
            if (started) print ""
            started = 1
            v = $2; gsub(/[][]/, "", v)
            cmd = "date -u -d " $4 " \"+%a %b %d %Y\""; cmd | getline d; close(cmd)
            print "* " d " qubes-firewall-formula - " v "-1"
            next
        }
        /^## / { flush(); started_section = 0; if (started) done_unreleased = 1; next }
        !started { next }
        /^### / { flush(); next }
        /^- / { flush(); item = $0; next }
        /^  +[^ ]/ && item != "" { sub(/^ +/, ""); item = item " " $0; next }
        /^$/ { flush(); next }
        END { flush() }
    ' CHANGELOG.md
} > "$top/SPECS/$name.spec"

SOURCE_DATE_EPOCH="$epoch" TZ=UTC LC_ALL=C rpmbuild -bb --quiet \
    --define "_topdir $top" \
    --define "formula_version $version" \
    "$top/SPECS/$name.spec" >&2
rpm="$name-$version-1.noarch.rpm"
cp "$top/RPMS/noarch/$rpm" "$outdir/$rpm"
echo "$outdir/$rpm"
