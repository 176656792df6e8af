"""The core on a corpus of real, realistic images (issue 9, part 3).

Every image is written by a real tool (tests/fixtures/build_corpus.py) and
flattened by two real runtimes at build time (``podman export`` and
``umoci unpack``); ``open_image(...).flatten()`` must give the same tree,
entry by entry, mtimes included (tests/treecmp.py).  Whatever a runtime
accepts and the core refuses is a core bug; bombs must still be refused,
each by the limit meant for it.

Tiers: the ``issue9`` and ``producers`` groups (small, plus two 120 MB
images) run always; the ``large`` group (a several-hundred-MB Debian image,
104k files) is marked ``slow``.
"""

import os
import pathlib
import re
import subprocess
import sys

import pytest

from docker_rootfs import errors
from tests import treecmp
from tests.core import corpus_kit as kit

DOCKER2VM = [str(pathlib.Path(sys.executable).with_name("docker2vm"))]
if not os.path.exists(DOCKER2VM[0]):
    DOCKER2VM = [sys.executable, "-m", "docker_rootfs.cli"]

pytestmark = pytest.mark.tools

SAME = ([kit.param("issue9", n) for n in kit.ISSUE9_SAME]
        + [kit.param("producers", n) for n in kit.PRODUCERS])
SLOW_SAME = [kit.param("large", n, pytest.mark.slow) for n in kit.LARGE]


@pytest.mark.parametrize("group", ["issue9", "producers",
                                   pytest.param("large", marks=pytest.mark.slow)])
def test_group_is_complete(group):
    _, index = kit.load(group)
    assert sorted(index["images"]) == sorted(kit.GROUP_NAMES[group])


@pytest.mark.parametrize("group", ["issue9", "producers",
                                   pytest.param("large", marks=pytest.mark.slow)])
def test_runtimes_accept_the_corpus(group):
    """Both runtimes flattened every image that is not a bomb (else the image
    is no reference, and the build log says why)."""
    _, index = kit.load(group)
    problems = []
    for name, img in sorted(index["images"].items()):
        if img["ref_from"] or img["runtime"] == "skip":
            continue
        for tool in img["refs"]:
            if tool + "_error" in img:
                problems.append("%s: %s refused it: %s" % (name, tool, img[tool + "_error"]))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("group,name", SAME + SLOW_SAME)
def test_flatten_matches_runtimes(group, name, tmp_path):
    img = kit.image(group, name)
    out = tmp_path / "flat.tar"
    kit.flatten(img, out)
    unsafe = treecmp.check_tar_safe(out)
    assert not unsafe, "unsafe flattened tar:\n" + "\n".join(unsafe)
    failures = kit.diff_against_references(group, name, treecmp.manifest_from_tar(out))
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------
# Issue 9, part 1: the ratio is per blob; real bombs are still refused
# --------------------------------------------------------------------------

def test_issue9_cli_flatten(tmp_path):
    """The issue's own reproducer: `docker2vm flatten app.tar -o out.tar`."""
    img = kit.image("issue9", "issue9-regression")
    out = tmp_path / "out.tar"
    proc = subprocess.run(DOCKER2VM + ["flatten", str(img["archive_path"]), "-o", str(out)],
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    got = treecmp.manifest_from_tar(out)
    assert got["big.bin"].size == 120_000_000 and got["small.txt"].size == 6


@pytest.mark.parametrize("name", sorted(kit.BOMBS))
def test_bomb_refused(name, tmp_path):
    img = kit.image("issue9", name)
    with pytest.raises(errors.LimitExceeded) as info:
        kit.flatten(img, tmp_path / "flat.tar")
    msg = str(info.value)
    assert "\n" not in msg
    assert kit.BOMBS[name] in msg, msg
    if name == "bomb-split-alone":
        assert "all compressed layers" in msg, msg
    elif kit.BOMBS[name] == "max_compression_ratio":
        assert re.search(r"\(layer \d+ \(sha256:", msg), msg     # per blob


@pytest.mark.slow
def test_split_bomb_under_grace_passes_a_large_budget(tmp_path):
    """40 blobs of 48 MiB zeros, each under the ratio's 64 MiB grace: with
    the default limits (64 GiB budget) the per-blob ratio never applies, so
    only max_total_bytes bounds it (the test above sets it to 1 GiB).  Here:
    a 2 GiB budget is enough, and the result is one 48 MiB file of zeros."""
    img = kit.image("issue9", "bomb-split-small")
    out = tmp_path / "flat.tar"
    kit.flatten(img, out, limits=kit.limits_for(img, max_total_bytes=2 << 30))
    got = treecmp.manifest_from_tar(out)
    import hashlib
    assert got["bomb.bin"].size == 48 << 20
    assert got["bomb.bin"].sha256 == hashlib.sha256(bytes(48 << 20)).hexdigest()


def test_zero_filled_file_refused_by_default_ratio(tmp_path):
    """A legitimate 200 MiB zero-filled file (gzip ratio ~700): runtimes
    accept it; the core's default max_compression_ratio (250) refuses it,
    by design and in one line; raising the limit flattens it like them."""
    img = kit.image("issue9", "zeros-file")
    with pytest.raises(errors.LimitExceeded) as info:
        kit.flatten(img, tmp_path / "refused.tar")
    assert "max_compression_ratio" in str(info.value) and "\n" not in str(info.value)
    out = tmp_path / "flat.tar"
    kit.flatten(img, out, limits=kit.limits_for(img, max_compression_ratio=100_000))
    failures = kit.diff_against_references("issue9", "zeros-file", treecmp.manifest_from_tar(out))
    assert not failures, "\n".join(failures)


# --------------------------------------------------------------------------
# Issue 9, part 2: umoci insert layers end without padding
# --------------------------------------------------------------------------

def test_umoci_insert_layers_are_unpadded():
    """The corpus really has what part 2 is about: a layer blob whose tar
    ends right after the last member's data (no padding, no end blocks)."""
    import gzip
    import tarfile
    img = kit.image("producers", "umoci-insert")
    unpadded = 0
    with tarfile.open(img["archive_path"]) as tf:
        for m in tf:
            if m.isfile() and m.name.startswith("blobs/"):
                data = tf.extractfile(m).read()
                if data[:2] == b"\x1f\x8b":
                    raw = gzip.decompress(data)
                    if len(raw) % 512 or raw[-1024:] != bytes(1024):
                        unpadded += 1
    assert unpadded >= 2, "no unpadded layer: umoci's output changed?"


# --------------------------------------------------------------------------
# The corpus has what it claims (a tool changing its output would else
# quietly make these tests weaker)
# --------------------------------------------------------------------------

def _layer_members(archive):
    """[[TarInfo, ...] per layer] of a docker-archive (uncompressed layers)."""
    import json
    import tarfile
    out = []
    with tarfile.open(archive) as outer:
        manifest = json.load(outer.extractfile("manifest.json"))[0]
        for path in manifest["Layers"]:
            with tarfile.open(fileobj=outer.extractfile(path), mode="r:") as layer:
                out.append(layer.getmembers())
    return out


@pytest.mark.slow
def test_debian_image_is_realistic():
    img = kit.image("large", "debian-docker")
    layers = _layer_members(img["archive_path"])
    assert len(layers) >= 6
    base = layers[0]
    assert sum(m.size for m in base) > 150 << 20 and len(base) > 5000
    names = [os.path.basename(m.name) for layer in layers[1:] for m in layer]
    assert names.count(".wh..wh..opq") >= 1, "no opaque directory (vfs storage driver?)"
    assert sum(n.startswith(".wh.") and n != ".wh..wh..opq" for n in names) > 500
    members = [m for layer in layers[1:] for m in layer]
    assert any(m.mode & 0o4000 for m in members) and any(m.mode & 0o2000 for m in members)
    assert sum(m.islnk() for m in members) >= 2
    assert any(m.size >= 90 << 20 for m in members)
    assert sum(m.isreg() and m.size < 8192 for m in members) > 1000


@pytest.mark.slow
def test_many_files_image_has_100k_files():
    man = kit.reference_manifests("large", "many-files")[0][1]
    assert sum(e.type == "file" for e in man.values()) > 100_000
