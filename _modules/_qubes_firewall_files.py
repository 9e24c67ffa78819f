"""
Managed blocks in files the user also edits, written atomically.

A managed block is a run of lines between two marker lines::

    # BEGIN qubes_firewall:NAME (managed by Salt, do not edit)
    ...
    # END qubes_firewall:NAME

Everything outside the markers stays byte for byte.  ``replace_block`` is pure
(text in, text out); ``read`` and ``write_atomic`` are the only functions that
touch the file system.
"""

import difflib
import grp
import os
import re
import shutil
import stat
import tempfile

from salt.exceptions import CommandExecutionError

_NAME = re.compile(r"\A[A-Za-z0-9_.:-]{1,64}\Z")
_BEGIN = re.compile(r"\A# BEGIN qubes_firewall:([A-Za-z0-9_.:-]{1,64}) \(managed by Salt, do not edit\)\Z")


TEMP_TAG = ".qubes_firewall.tmp."


class BlockError(ValueError):
    """The file's markers are broken; the file is left alone."""


def begin_marker(name):
    return "# BEGIN qubes_firewall:%s (managed by Salt, do not edit)" % name


def end_marker(name):
    return "# END qubes_firewall:%s" % name


def _find(lines, name):
    """(start, end) line indexes of the block's markers, or None."""
    begin, end = begin_marker(name), end_marker(name)
    starts = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == begin]
    ends = [i for i, line in enumerate(lines) if line.rstrip("\r\n") == end]
    if not starts and not ends:
        return None
    if len(starts) != 1 or len(ends) != 1 or ends[0] < starts[0]:
        raise BlockError(
            "the markers of block %r are broken (%d BEGIN, %d END); fix the file by hand"
            % (name, len(starts), len(ends))
        )
    return starts[0], ends[0]


def block_names(text):
    """The names of the managed blocks in ``text``, in order."""
    names = []
    for line in (text or "").splitlines():
        match = _BEGIN.match(line)
        if match:
            names.append(match.group(1))
    return names


def get_block(text, name):
    """The block's body (without markers), or None when the block is absent."""
    lines = (text or "").splitlines(True)
    found = _find(lines, name)
    if found is None:
        return None
    return "".join(lines[found[0] + 1 : found[1]])


def replace_block(text, name, body, header=""):
    """
    Return ``text`` with block ``name`` holding ``body`` (``None`` removes the
    block and its markers).  ``text`` None means the file does not exist yet:
    it starts with ``header`` (for example ``"#!/bin/sh\\n"``).  A new block
    goes at the end, or before a final top-level ``exit`` line, which would
    otherwise keep it from running.
    """
    if not _NAME.match(name):
        raise ValueError("bad block name %r" % name)
    if body is not None and body and not body.endswith("\n"):
        body += "\n"
    if text is None:
        if body is None:
            return None
        text = header
    lines = text.splitlines(True)
    found = _find(lines, name)
    block = None
    if body is not None:
        block = [begin_marker(name) + "\n"] + body.splitlines(True) + [end_marker(name) + "\n"]
    if found is not None:
        start, end = found
        newline_after = lines[end][len(lines[end].rstrip("\r\n")):]
        if block is None:
            return "".join(lines[:start] + lines[end + 1 :])
        if not newline_after:  # the END marker was the file's unterminated last line
            block[-1] = block[-1].rstrip("\n")
        return "".join(lines[:start] + block + lines[end + 1 :])
    if block is None:
        return text
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    insert_at = len(lines)
    for i in range(len(lines) - 1, -1, -1):
        stripped = lines[i].strip()
        if not stripped:
            continue
        if re.match(r"exit(\s+[0-9]+)?\s*(#.*)?\Z", stripped):
            insert_at = i
        break
    return "".join(lines[:insert_at] + block + lines[insert_at:])


def diff(old, new, path):
    """A unified diff of a file's old and new text (None = absent)."""
    return "".join(
        difflib.unified_diff(
            (old or "").splitlines(True),
            (new or "").splitlines(True),
            fromfile=path if old is not None else "/dev/null",
            tofile=path if new is not None else "/dev/null",
        )
    )


# --------------------------------------------------------------------------
# I/O
# --------------------------------------------------------------------------


def read(path):
    """
    The file's text, or None when it does not exist.
    """
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            return handle.read()
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        raise CommandExecutionError("cannot read %s: %s" % (path, exc)) from exc


def mode_of(path):
    """The permission bits of ``path`` as an int, or None when it is absent."""
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def temp_prefix(path):
    """
    The name prefix of ``write_atomic``'s temporary files for ``path``:
    ``.<name>.qubes_firewall.tmp.`` in the same directory (a random suffix
    follows), so a later run recognises what a killed one left behind.
    """
    return "." + os.path.basename(path) + TEMP_TAG


def stale_temps(paths):
    """
    The temporary files ``write_atomic`` left next to ``paths`` (a run
    killed mid-write), sorted.  Runs of the formula hold the minion's lock,
    so none of them belongs to a write in progress.
    """
    found = []
    for path in paths:
        directory = os.path.dirname(path) or "."
        prefix = temp_prefix(path)
        try:
            names = os.listdir(directory)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError as exc:
            raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc
        found += [os.path.join(directory, n) for n in names if n.startswith(prefix)]
    return sorted(set(found))


def remove_stale_temps(paths):
    """Remove the ``stale_temps`` of ``paths``; returns the files removed."""
    removed = []
    for tmp in stale_temps(paths):
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CommandExecutionError("cannot remove %s: %s" % (tmp, exc)) from exc
        removed.append(tmp)
    return removed


def write_atomic(path, text, mode=0o755, group=None, makedirs=True):
    """
    Replace ``path`` with ``text`` atomically: a temporary file in the same
    directory (``.<name>.qubes_firewall.tmp.<random>``; ones a killed run
    left are removed first), flushed to disk, then renamed over the old one.  An existing
    file keeps its mode and ownership; a new one gets ``mode`` (and ``group``
    when given).  ``text`` None removes the file.
    """
    directory = os.path.dirname(path) or "."
    remove_stale_temps([path])
    if text is None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        return True
    try:
        if makedirs:
            os.makedirs(directory, exist_ok=True)
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        fd, tmp = tempfile.mkstemp(prefix=temp_prefix(path), dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(text)
                handle.flush()
                os.fsync(handle.fileno())
            if current is not None:
                os.chmod(tmp, stat.S_IMODE(current.st_mode))
                os.chown(tmp, current.st_uid, current.st_gid)
            else:
                os.chmod(tmp, mode)
                if group is not None:
                    os.chown(tmp, -1, grp.getgrnam(group).gr_gid)
            os.rename(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except FileNotFoundError:
                pass
            raise
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except (OSError, KeyError) as exc:
        raise CommandExecutionError("cannot write %s: %s" % (path, exc)) from exc
    return True


def ensure_mode(path, mode):
    """Set the permission bits of an existing file; True when they changed."""
    try:
        if stat.S_IMODE(os.stat(path).st_mode) == mode:
            return False
        os.chmod(path, mode)
    except OSError as exc:
        raise CommandExecutionError("cannot chmod %s: %s" % (path, exc)) from exc
    return True


# ---- directories and symlinks: the rest of the formula's raw file-system calls ----


def listdir(directory, file_ok=False):
    """
    The sorted names in ``directory``; empty when it does not exist (and,
    with ``file_ok``, when it is a file).
    """
    try:
        return sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    except NotADirectoryError as exc:
        if file_ok:
            return []
        raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc
    except OSError as exc:
        raise CommandExecutionError("cannot list %s: %s" % (directory, exc)) from exc


def remove(path):
    """Remove a file, a symlink or a whole directory; False when nothing was there."""
    try:
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.unlink(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise CommandExecutionError("cannot remove %s: %s" % (path, exc)) from exc
    return True


def is_link(path):
    return os.path.islink(path)


def is_file(path):
    return os.path.isfile(path)


def exists(path):
    return os.path.exists(path)


def readlink(path):
    return os.readlink(path)


def symlink(target, path):
    """Replace whatever is at ``path`` with a symlink to ``target`` (its directory made)."""
    try:
        if os.path.islink(path) or os.path.exists(path):
            os.unlink(path)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.symlink(target, path)
    except OSError as exc:
        raise CommandExecutionError("cannot write %s: %s" % (path, exc)) from exc
    return True


def unlink_link(path):
    """Remove ``path`` when it is a symlink (a file is left to ``write_atomic``)."""
    try:
        if os.path.islink(path):
            os.unlink(path)
    except OSError as exc:
        raise CommandExecutionError("cannot remove %s: %s" % (path, exc)) from exc
    return True


def remove_empty_dir(path):
    """Remove the directory ``path`` when it is empty; True when it went."""
    try:
        os.rmdir(path)
    except OSError:
        return False  # not empty, or not there
    return True
