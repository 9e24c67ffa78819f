"""Managed blocks: the user's bytes stay, the block is replaced, files are written atomically."""

import os
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.modules import files

BLOCK = "echo managed\nnft -f - <<'EOF'\nflush chain ip qubes qf-input\nEOF\n"


def test_new_file_gets_header_and_block():
    text = files.replace_block(None, "rules", BLOCK, header="#!/bin/sh\n")
    assert text.startswith("#!/bin/sh\n# BEGIN qubes_firewall:rules")
    assert files.get_block(text, "rules") == BLOCK


def test_block_is_replaced_in_place_and_removed_cleanly():
    user = "#!/bin/sh\n# mine\necho before\n"
    after = "echo after\n"
    text = files.replace_block(user, "rules", BLOCK) + after
    new = files.replace_block(text, "rules", "echo v2\n")
    assert new == user + files.begin_marker("rules") + "\necho v2\n" + files.end_marker("rules") + "\n" + after
    assert files.replace_block(new, "rules", None) == user + after


def test_block_goes_before_a_final_exit():
    user = "#!/bin/sh\necho hi\nexit 0\n\n"
    text = files.replace_block(user, "rules", "echo x\n")
    assert text.endswith("# END qubes_firewall:rules\nexit 0\n\n")


def test_broken_markers_are_refused():
    text = files.replace_block("#!/bin/sh\n", "rules", "echo x\n")
    broken = text.replace(files.end_marker("rules") + "\n", "")
    with pytest.raises(files.BlockError):
        files.replace_block(broken, "rules", "echo y\n")
    with pytest.raises(files.BlockError):
        files.replace_block(text + text, "rules", "echo y\n")


user_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=300
).filter(lambda t: "qubes_firewall:" not in t)


@settings(max_examples=200, deadline=None)
@given(before=user_text, after=user_text)
def test_user_bytes_outside_the_block_are_kept(before, after):
    """Whatever the user wrote around the block survives every update byte for byte."""
    first = files.replace_block(before, "rules", BLOCK)
    start = first.index(files.begin_marker("rules"))
    end = first.index(files.end_marker("rules")) + len(files.end_marker("rules")) + 1
    surrounded = first[:end] + after + first[end:] if end <= len(first) else first + after
    updated = files.replace_block(surrounded, "rules", "echo v2\n")
    assert updated[:start] == surrounded[:start]
    assert updated.endswith(surrounded[end:])
    assert files.get_block(updated, "rules") == "echo v2\n"
    assert files.replace_block(updated, "rules", "echo v2\n") == updated


def test_write_atomic_keeps_mode_and_creates_executable(tmp_path):
    path = str(tmp_path / "rw" / "rc.local")
    files.write_atomic(path, "#!/bin/sh\n", mode=0o755)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o755
    os.chmod(path, 0o700)
    files.write_atomic(path, "#!/bin/sh\necho\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
    assert open(path).read() == "#!/bin/sh\necho\n"
    assert [p for p in os.listdir(tmp_path / "rw")] == ["rc.local"]  # no temp file left


def test_temp_files_are_recognisable_and_a_later_write_removes_stale_ones(tmp_path, monkeypatch):
    path = str(tmp_path / "rc.local")
    other = tmp_path / ".qubes-firewall-user-script.qubes_firewall.tmp.abc"
    other.write_text("another file's")
    stale = tmp_path / ".rc.local.qubes_firewall.tmp.k1ll3d"
    stale.write_text("half writ")
    assert files.stale_temps([path]) == [str(stale)]
    seen = []
    real_rename = os.rename

    def rename(src, dst):
        seen.append(os.path.basename(src))
        return real_rename(src, dst)

    monkeypatch.setattr(files.os, "rename", rename)
    files.write_atomic(path, "#!/bin/sh\n")
    assert seen[0].startswith(".rc.local.qubes_firewall.tmp.")  # next to its target, named after it
    assert sorted(os.listdir(tmp_path)) == sorted([other.name, "rc.local"])  # only rc.local's stale temp went


def test_a_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    path = str(tmp_path / "rc.local")

    def boom(_src, _dst):
        raise OSError("disk on fire")

    monkeypatch.setattr(files.os, "rename", boom)
    with pytest.raises(Exception, match="disk on fire"):
        files.write_atomic(path, "#!/bin/sh\n")
    assert os.listdir(tmp_path) == []
