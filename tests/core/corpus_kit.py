"""Helpers shared by the realistic-corpus tests (tests/core/test_real_corpus.py,
tests/disk/test_real_corpus_disk.py): load a corpus group built by
tests/fixtures/build_corpus.py (cached), flatten an image with the core,
and compare with the runtimes' reference flattenings (tests/treecmp.py).
"""

import dataclasses
import functools
import os
import pathlib
import sys

import pytest

from tests import treecmp

# Image names per group: the tests are parametrized at collection time,
# before anything is built; test_group_is_complete checks these lists.
ISSUE9_SAME = ["issue9-regression", "issue9-zstd"]
BOMBS = {  # name -> the limit that must refuse it
    "bomb-behind-honest": "max_compression_ratio",
    "bomb-split": "max_compression_ratio",
    "bomb-split-small": "max_total_bytes",
    "bomb-split-alone": "max_compression_ratio",
}
PRODUCERS = [
    "podman-docker-archive", "skopeo-docker-to-oci", "skopeo-oci-gzip", "skopeo-oci-zstd",
    "skopeo-oci-to-docker", "skopeo-dir-to-docker", "skopeo-dir-to-oci-gzip",
    "skopeo-oci-uncompressed", "skopeo-plain-as-gzip", "podman-oci-dir",
    "podman-docker-dir-compress",
    "buildah-push-zstd", "umoci-insert", "umoci-repack", "umoci-raw",
    "gnutar-gnu", "gnutar-oldgnu", "gnutar-posix", "gnutar-ustar", "gnutar-v7",
    "bsdtar-default", "bsdtar-pax", "bsdtar-gnutar", "bsdtar-ustar", "busybox-tar",
    "pytar-gnu", "pytar-pax", "pytar-ustar",
]
LARGE = ["debian-oci-gzip", "debian-docker", "debian-oci-zstd", "many-files"]
GROUP_NAMES = {
    "issue9": ISSUE9_SAME + ["zeros-file"] + list(BOMBS),
    "producers": PRODUCERS,
    "large": LARGE,
}

# (image, tool) -> why that runtime's result differs from the other's and
# is not the reference; found while building the corpus (doc/source/corpus.md).
TOOL_DISAGREES = {}

# image -> a core bug it shows (reported to the lead; doc/source/corpus.md): the
# tests over it are xfail(strict=True), so a fix makes them fail until the
# entry is removed.
CORE_BUGS = {}


def param(group, name, *marks):
    """pytest.param for (group, name), xfail(strict) when CORE_BUGS lists it."""
    marks = list(marks)
    if name in CORE_BUGS:
        marks.append(pytest.mark.xfail(strict=True, reason=CORE_BUGS[name]))
    return pytest.param(group, name, marks=marks, id="%s-%s" % (group, name))


_FAILED = {}


def load(group):
    """(dir, index) of a built corpus group, paths resolved; builds it once
    (a failed build fails every test of the group without trying again)."""
    if group in _FAILED:
        pytest.fail(_FAILED[group], pytrace=False)
    try:
        return _load(group)
    except (Exception, pytest.fail.Exception) as exc:
        _FAILED[group] = "the %s corpus: %s" % (group, exc)
        raise


@functools.lru_cache(maxsize=None)
def _load(group):
    from tests.fixtures import build_corpus as bc
    miss = bc.missing_tools()
    if miss:
        pytest.fail("the image corpus needs: %s (bindep.txt, profile test)" % ", ".join(miss),
                    pytrace=False)
    try:
        top, index = bc.ensure_corpus(
            group, log=lambda m: print("[build_corpus] " + m, file=sys.stderr))
    except bc.bf.FixtureBuildError as exc:
        pytest.fail("building the %s corpus failed: %s" % (group, exc), pytrace=False)
    top = pathlib.Path(top)
    for img in index["images"].values():
        for key in ("archive", "umoci", "podman_export"):
            if key in img:
                img[key + "_path"] = top / img[key]
    return top, index


def image(group, name):
    return load(group)[1]["images"][name]


def ref_image(group, name):
    """The image whose references stand for ``name`` (itself, or ref_from)."""
    img = image(group, name)
    return image(group, img["ref_from"]) if img.get("ref_from") else img


def limits_for(img, **extra):
    from docker_rootfs.limits import Limits
    return Limits().replace(**dict(img.get("limits") or {}, **extra))


def flatten(img, out, limits=None):
    from docker_rootfs.archive import open_image
    with open(out, "wb") as f:
        with open_image(img["archive_path"], limits=limits or limits_for(img)) as im:
            im.flatten(f)
            return im.config.config_digest


@functools.lru_cache(maxsize=None)
def reference_manifests(group, name):
    """[(tool, manifest)] of the runtimes' flattenings of ``name``."""
    ref = ref_image(group, name)
    out = []
    for tool in ("umoci", "podman_export"):
        if tool + "_path" not in ref or (name, tool) in TOOL_DISAGREES:
            continue
        if tool == "umoci":
            out.append((tool, treecmp.manifest_from_dir(ref["umoci_path"])))
        else:
            out.append((tool, treecmp.manifest_from_tar(ref["podman_export_path"])))
    return out


def extraction_time_dirs(ref, man, got):
    """Directories whose reference mtime is the runtime's extraction time.

    A directory that no layer has an entry for (created as a parent) or
    whose entry comes before a later whiteout removes a child gets the
    time of extraction from podman and umoci: later than the archive was
    written.  No value is right there; the core writes a deterministic one.
    """
    built = int(os.path.getmtime(ref["archive_path"]))
    return {p for p, e in man.items()
            if e.type == "dir" and e.mtime is not None and e.mtime > built
            and p in got and got[p].mtime != e.mtime}


def diff_against_references(group, name, got, mtime="all"):
    """Readable differences between ``got`` and each runtime reference
    (directory mtimes set at extraction time left out)."""
    refs = reference_manifests(group, name)
    ref = ref_image(group, name)
    assert refs, "no runtime could flatten %s: %s" % (
        name, ref.get("umoci_error", "") + ref.get("podman_error", ""))
    failures = []
    for tool, man in refs:
        if "." not in got:
            man = {k: v for k, v in man.items() if k != "."}
        skip = extraction_time_dirs(ref, man, got)
        if skip:
            man = dict(man)
            for p in skip:
                man[p] = dataclasses.replace(man[p], mtime=got[p].mtime)
        diff = treecmp.diff_manifests(man, got, tool, "docker2vm", mtime=mtime)
        if diff:
            failures.append("vs %s (%s; %s):\n%s" % (tool, ref["producer"], ref["covers"],
                                                      treecmp.format_diff(diff)))
    return failures
