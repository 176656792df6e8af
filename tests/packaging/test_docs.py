"""The Sphinx documentation (doc/source) builds with warnings as errors, as
`tox -e docs` does, and the troubleshooting page keeps up with the code:
every user-facing error class and every limit has its own advice there."""

import os
import re
import shutil
import subprocess
import sys

import pytest

TOP = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(TOP, "doc", "source")
sys.path.insert(0, os.path.join(SOURCE, "_exts"))

import errorcatalog  # noqa: E402  (doc/source/_exts, not a package)

from docker_rootfs.limits import Limits  # noqa: E402


def _page(rel):
    with open(os.path.join(SOURCE, rel), encoding="utf-8") as f:
        return f.read()


@pytest.mark.slow
def test_sphinx_build_has_no_warnings(tmp_path):
    assert shutil.which("dot"), "graphviz's dot is missing (bindep.txt: graphviz; tools/setup-env.sh installs it)"
    out = tmp_path / "html"
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-q", "-b", "html",
         "-d", str(tmp_path / "doctrees"), SOURCE, str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=TOP)
    assert proc.returncode == 0, proc.stdout[-6000:]
    # The generated parts really are there: options from the code, the
    # error catalogue from the source, the diagrams from dot.
    glance = (out / "configuration" / "glance.html").read_text()
    for name in ("default_delivery", "child_cpu_seconds", "max_compression_ratio", "builder"):
        assert name in glance, name
    nova = (out / "configuration" / "nova.html").read_text()
    for name in ("sub_virt_type", "base_kernel", "share_readonly_mount"):
        assert name in nova, name
    # Rendered as option entries, not left as reStructuredText source.
    assert ".. oslo.config:" not in glance + nova
    assert 'id="docker_convert.default_delivery"' in glance
    trouble = (out / "admin" / "troubleshooting.html").read_text()
    assert "climbs out of the image root" in trouble
    assert "list-table" not in trouble and trouble.count("<tr") > 100, "the catalogue is not a table"
    assert "no config drive (iso9660 or vfat labelled config-2) found" in trouble
    assert list((out / "_images").glob("graphviz-*.svg")), "no diagram was drawn"


def test_catalog_finds_the_errors():
    entries = errorcatalog.catalog()
    classes = {e["class"] for e in entries}
    # One of each kind the code raises, so a broken parser cannot pass unnoticed.
    assert {"ArchiveError", "UnsafeEntry", "LimitExceeded", "ToolError", "ImageError",
            "HostError", "UploadException", "guest"} <= classes, classes
    assert len(entries) > 100
    assert all(e["message"] for e in entries), [e for e in entries if not e["message"]]


def test_troubleshooting_advises_on_every_error_class():
    page = _page(os.path.join("admin", "troubleshooting.md"))
    advice = page.split("## Every message")[0]  # the hand-written part only
    missing = sorted({e["class"] for e in errorcatalog.catalog()
                      if e["class"] != "guest" and f"`{e['class']}`" not in advice})
    assert not missing, f"doc/source/admin/troubleshooting.md has no advice for {missing}"


def test_troubleshooting_names_every_limit():
    advice = _page(os.path.join("admin", "troubleshooting.md")).split("## Every message")[0]
    names = {f.name for f in Limits.fields()}
    names |= {e["limit"] for e in errorcatalog.catalog() if e["limit"] and re.fullmatch(r"[a-z_]+", e["limit"])}
    missing = sorted(n for n in names if f"`{n}`" not in advice)
    assert not missing, f"doc/source/admin/troubleshooting.md does not explain the limits {missing}"


def test_troubleshooting_covers_every_guest_error():
    # Each d2vinit die() message (its fixed words) appears in the advice.
    advice = _page(os.path.join("admin", "troubleshooting.md")).split("## Every message")[0]
    missing = []
    for e in errorcatalog.catalog():
        if e["class"] != "guest":
            continue
        words = max(re.split(r"%[a-z]+|'", e["message"][len("docker2vm: error: "):]), key=len).strip(" :(),")
        if words and words not in advice:
            missing.append(words)
    assert not missing, f"doc/source/admin/troubleshooting.md does not explain the guest errors {missing}"
