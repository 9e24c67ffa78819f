"""Can the lab run here?  Root, `ip` and `nft`, and network namespaces.

Lab tests SKIP when it cannot, except under CI (CI=true), where they FAIL: a CI run that
silently skipped every lab test would prove nothing.  QF_EXPECT_NFT=1.1.3 (set by the
test matrix) makes the lab refuse another nft version.
"""

import os
import re
import shutil
import subprocess
from typing import Optional

import pytest


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def missing_requirement() -> Optional[str]:
    """Why the lab cannot run here, or None when it can."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "lab tests need root (network namespaces, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            return "lab tests need the {!r} command".format(tool)
    if not os.path.exists("/proc/self/ns/net"):
        return "lab tests need network namespaces"
    expected = os.environ.get("QF_EXPECT_NFT", "").strip()
    if expected:
        version = nft_version()
        if version != expected:
            return "this run expects nft {} (QF_EXPECT_NFT) but `nft` is {}".format(expected, version or "unknown")
    return None


def nft_version() -> Optional[str]:
    """The version `nft --version` reports, e.g. "1.0.6"."""
    try:
        out = subprocess.run(["nft", "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"v(\d+(?:\.\d+)+)", out)
    return match.group(1) if match else None


def require_lab() -> None:
    """Skip the calling test when the lab cannot run; fail instead under CI=true."""
    reason = missing_requirement()
    if reason is None:
        return
    if in_ci():
        pytest.fail("CI=true but the lab cannot run: " + reason, pytrace=False)
    pytest.skip(reason)
