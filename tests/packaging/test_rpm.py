"""
The RPM of scripts/build-rpm.sh: built twice from this tree, the two packages
are bit-identical; its files are exactly the formula (under /srv/salt, where
qubesctl's base file root is) plus the pillar examples and docs, byte for byte
the repository's; its version and %changelog come from VERSION and CHANGELOG.md.
"""

import io
import os
import re
import shutil
import subprocess
import tarfile

import pytest

from tests.modules import REPO

NAME = "qubes-firewall-formula"
DOC = "usr/share/doc/%s/" % NAME
RELEASE = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", re.M)


def can_build():
    if shutil.which("rpmbuild"):
        return True
    return os.geteuid() == 0 and shutil.which("apt-get") is not None  # build-rpm.sh installs it


pytestmark = pytest.mark.skipif(not can_build() and os.environ.get("CI") != "true",
                                reason="rpmbuild is missing (Debian: apt-get install rpm)")


def version():
    return (REPO / "VERSION").read_text().strip()


def tracked(*paths):
    """The repository's files under ``paths`` (git's list; without git, the tree minus caches)."""
    if shutil.which("git") and (REPO / ".git").exists():
        out = subprocess.run(["git", "-C", str(REPO), "ls-files", "--cached", "--others", "--exclude-standard",
                              "--", *paths], capture_output=True, text=True, check=True).stdout.splitlines()
    else:
        out = [str(p.relative_to(REPO)) for path in paths for p in
               ([REPO / path] if (REPO / path).is_file() else (REPO / path).rglob("*"))
               if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    return sorted(p for p in out if (REPO / p).is_file())


def expected_payload():
    """path in the package -> the repository file it must equal."""
    want = {}
    for path in tracked("_modules", "_states", "salt"):
        if path.startswith("salt/"):
            want["srv/salt/" + path[len("salt/"):]] = path
        else:
            want["srv/salt/" + path] = path
    for path in tracked("pillar.example", "docs", "README.md", "CHANGELOG.md"):
        want[DOC + path] = path
    return want


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    rpms = []
    for i in (1, 2):
        out = tmp_path_factory.mktemp("rpm%d" % i)
        env = dict(os.environ, TMPDIR=str(out))
        proc = subprocess.run([str(REPO / "scripts" / "build-rpm.sh"), str(out / "dist")], capture_output=True,
                              text=True, env=env, timeout=600)
        assert proc.returncode == 0, proc.stderr
        rpms.append(proc.stdout.strip().splitlines()[-1])
    return rpms


def payload(rpm):
    archive = subprocess.run(["rpm2archive", "-"], stdin=open(rpm, "rb"), capture_output=True, check=True).stdout
    files, dirs = {}, set()
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            name = member.name[2:] if member.name.startswith("./") else member.name
            assert (member.uid, member.gid, member.uname, member.gname) == (0, 0, "root", "root"), name
            if member.isdir():
                dirs.add(name)
            else:
                assert member.isfile() and member.mode == 0o644, (name, oct(member.mode))
                files[name] = tar.extractfile(member).read()
    return files, dirs


def query(rpm, fmt):
    return subprocess.run(["rpm", "-qp", "--qf", fmt, rpm], capture_output=True, text=True, check=True).stdout


def test_two_builds_are_bit_identical(built):
    first, second = built
    assert os.path.basename(first) == "%s-%s-1.noarch.rpm" % (NAME, version())
    with open(first, "rb") as a, open(second, "rb") as b:
        assert a.read() == b.read()


def test_payload_is_the_repository_formula_byte_for_byte(built):
    files, dirs = payload(built[0])
    want = expected_payload()
    assert sorted(files) == sorted(want)
    for path, source in want.items():
        assert files[path] == (REPO / source).read_bytes(), path
    # the formula where qubesctl finds it: state tree, modules and states in the base file root
    assert "srv/salt/qubes_firewall/init.sls" in files
    # the core the execution module and the states import ships next to them
    assert {"srv/salt/_modules/_qubes_firewall_run.py", "srv/salt/_modules/_qubes_firewall_model.py"} <= set(files)
    assert {p for p in files if p.startswith("srv/salt/_")} == \
        {"srv/salt/" + p for p in tracked("_modules", "_states")}
    # owned directories: its own, never the shared /srv/salt/_modules or _states
    assert dirs == {"srv/salt/qubes_firewall", DOC.rstrip("/"), DOC + "docs", DOC + "pillar.example"} | \
        {DOC + os.path.dirname(p) for p in tracked("pillar.example", "docs") if os.path.dirname(p)}


def test_version_changelog_and_requirements(built):
    rpm = built[0]
    newest_version, newest_date = RELEASE.search((REPO / "CHANGELOG.md").read_text()).groups()
    assert newest_version == version(), "VERSION and the newest release of CHANGELOG.md differ"
    assert query(rpm, "%{VERSION} %{ARCH}") == version() + " noarch"
    assert "qubes-mgmt-salt-dom0" in subprocess.run(["rpm", "-qpR", rpm], capture_output=True, text=True,
                                                    check=True).stdout.split()
    # SOURCE_DATE_EPOCH from the changelog: build time and file mtimes are the release date
    epoch = int(subprocess.run(["date", "-u", "-d", newest_date, "+%s"], capture_output=True, text=True,
                               check=True).stdout)
    assert int(query(rpm, "%{BUILDTIME}")) == epoch
    assert set(query(rpm, "[%{FILEMTIMES}\n]").split()) == {str(epoch)}
    log = subprocess.run(["rpm", "-qp", "--changelog", rpm], capture_output=True, text=True, check=True).stdout
    released = RELEASE.findall((REPO / "CHANGELOG.md").read_text())
    assert re.findall(r"^\* .* - (\d+\.\d+\.\d+)-1$", log, re.M) == [v for v, _ in released]


def test_pyproject_reads_the_version_file():
    text = (REPO / "pyproject.toml").read_text()
    assert not re.search(r"^version\s*=\s*\"", text, re.M), "the version lives only in VERSION"
    assert 'dynamic = ["version"]' in text and 'version = { file = "VERSION" }' in text
