"""The core's flattening and config, against real tools on real archives.

For every archive tests/fixtures/build_fixtures.py builds (podman, buildah,
skopeo, umoci), ``open_image(...).flatten()`` must give the same tree as
the reference flattenings the same build made:

* ``umoci``: ``skopeo copy`` to an OCI layout + ``umoci unpack``;
* ``podman``: ``podman pull`` into a fresh storage + ``create`` + ``export``.

The two tools agree with each other on every fixture, mtimes included,
except where noted in ``TOOL_DISAGREES`` (paths written through a symlink
by a hand-built layer: umoci resolves the symlink inside the root, podman's
overlay driver applies each layer alone and so replaces the symlink with a
directory).  There the project follows umoci (and containerd, and Docker's
own chroot'ed extraction): a path is resolved inside the root, so a layer
can never write through a symlink to outside it.  Where a tool cannot read
a fixture at all (umoci 0.4: zstd layers; podman's overlay driver: a hard
link to a file only a lower layer has) the other tool is the reference.

mtimes: compared for every entry ("all"), since both tools agree on all of
them (umoci restores directory mtimes after applying whiteouts; podman's
overlay keeps the layer's).  The root entry "." is compared only when the
flattened tar has one (podman export has none; umoci has the rootfs dir).
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

from docker_rootfs import errors  # noqa: E402  (the core; may not exist yet)
from docker_rootfs.archive import open_image
from docker_rootfs.limits import Limits
from tests import treecmp
from tests.fixtures import build_fixtures

# fixture -> {tool: reason}: a tool whose result differs, and why.
TOOL_DISAGREES = {
    "mergedusr-raw": {
        "podman_export": "podman's overlay driver extracts a layer without its lower "
                         "layers, so lib/raw.so makes lib a directory instead of "
                         "writing usr/lib/raw.so through lib -> usr/lib, and "
                         "lib/.wh.base.so does not delete usr/lib/base.so",
    },
}

FIXTURE_NAMES = [
    "basic-exec", "basic-shell", "basic-shell-ep", "whiteouts", "hardlinks",
    "symlinks", "mergedusr-raw", "mergedusr-direntry", "hardlink-lower-raw", "modes",
    "sparse-gnutar", "sparse-oldgnu",
    "fmt-oci-archive", "fmt-multi-image", "fmt-multi-platform", "fmt-gzip", "fmt-zstd",
    "fmt-docker25", "fmt-docker-archive-gz", "fmt-docker-archive-zst",
]

# fixtures no real tool can flatten: tested on their own below.
NO_REFERENCE = {
    "sparse-oldgnu": "umoci: unknown typeflag 'S'; podman: unhandled tar header type 83",
}

CONFIG_FIELDS = ("Entrypoint", "Cmd", "Env", "WorkingDir", "User", "ExposedPorts",
                 "Volumes", "StopSignal", "Labels")

DOCKER2VM = [str(pathlib.Path(sys.executable).with_name("docker2vm"))]
if not os.path.exists(DOCKER2VM[0]):
    DOCKER2VM = [sys.executable, "-m", "docker_rootfs.cli"]


def _flatten(fx, out_path, **kw):
    with open(out_path, "wb") as out:
        with open_image(fx["archive_path"], limits=Limits(), image=fx["image"],
                        platform=fx["platform"], **kw) as img:
            img.flatten(out)
            return img


@pytest.fixture(scope="module")
def flattened(fixture_index, tmp_path_factory):
    """name -> path of the core's flattened tar (or the exception raised)."""
    cache = {}
    outdir = tmp_path_factory.mktemp("flattened")

    def get(name):
        if name not in cache:
            fx = fixture_index["fixtures"][name]
            out = outdir / (name + ".tar")
            try:
                _flatten(fx, out)
                cache[name] = out
            except Exception as exc:  # reported by each test that needs it
                cache[name] = exc
        result = cache[name]
        if isinstance(result, Exception):
            raise result
        return result
    return get


def test_fixture_list_is_complete(fixture_index):
    assert sorted(fixture_index["fixtures"]) == sorted(FIXTURE_NAMES)


def test_references_agree_where_expected(fixture_index):
    """umoci and podman export agree with each other (else TOOL_DISAGREES says why)."""
    problems = []
    for name, fx in sorted(fixture_index["fixtures"].items()):
        if "umoci_path" not in fx or "podman_export_path" not in fx:
            continue
        a = treecmp.manifest_from_dir(fx["umoci_path"])
        b = treecmp.manifest_from_tar(fx["podman_export_path"])
        diff = treecmp.diff_manifests(a, b, "umoci", "podman", mtime="all")
        if bool(diff) != (name in TOOL_DISAGREES):
            problems.append("%s: %s" % (name, treecmp.format_diff(diff, 20) or
                                        "tools agree, but TOOL_DISAGREES lists it"))
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES if n not in NO_REFERENCE])
def test_flatten_matches_reference(name, fixture_index, flattened):
    fx = fixture_index["fixtures"][name]
    out = flattened(name)
    unsafe = treecmp.check_tar_safe(out)
    assert not unsafe, "unsafe flattened tar:\n" + "\n".join(unsafe)
    got = treecmp.manifest_from_tar(out)
    refs = []
    for tool in ("umoci", "podman_export"):
        if tool + "_path" not in fx or tool in TOOL_DISAGREES.get(name, {}):
            continue
        if tool == "umoci":
            ref = treecmp.manifest_from_dir(fx["umoci_path"])
        else:
            ref = treecmp.manifest_from_tar(fx["podman_export_path"])
        refs.append((tool, ref))
    assert refs, "no reference flattening for %s: %s" % (
        name, fx.get("umoci_error", "") + fx.get("podman_error", ""))
    failures = []
    for tool, ref in refs:
        if "." not in got:
            ref = {k: v for k, v in ref.items() if k != "."}
        diff = treecmp.diff_manifests(ref, got, tool, "docker2vm", mtime="all")
        if diff:
            failures.append("vs %s (%s):\n%s" % (tool, fx["covers"], treecmp.format_diff(diff)))
    assert not failures, "\n".join(failures)


def test_mergedusr_raw_lands_in_resolved_path(fixture_index, flattened):
    """Spelled out: lib/raw.so with lib -> usr/lib is usr/lib/raw.so."""
    got = treecmp.manifest_from_tar(flattened("mergedusr-raw"))
    assert got["lib"].type == "symlink" and got["lib"].linkname == "usr/lib"
    assert got["usr/lib/raw.so"].type == "file"
    assert got["usr/lib/rawdir/f"].type == "file"
    assert got["s/dir/via-abs-raw"].type == "file"
    assert got["s/absdir"].type == "symlink"
    assert "usr/lib/base.so" not in got        # whiteout through lib -> usr/lib


def test_hardlink_to_lower_layer(fixture_index, flattened):
    got = treecmp.manifest_from_tar(flattened("hardlink-lower-raw"))
    assert got["s/h2lower"].link_group == got["s/dir/target"].link_group is not None
    assert got["s/h2new"].link_group == got["s/newfile"].link_group is not None


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------

def _skopeo_ref(fx, tmp_path):
    path = str(fx["archive_path"])
    if path.endswith((".gz", ".zst")):
        # skopeo cannot read a compressed docker-archive: same bytes, unpacked.
        plain = tmp_path / "plain.tar"
        tool = "gzip" if path.endswith(".gz") else "zstd"
        with open(plain, "wb") as f:
            subprocess.run([tool, "-d", "-q", "-c", path], stdout=f, check=True)
        path = str(plain)
    ref, args = build_fixtures.transport(path, fx)
    return args, ref


def _norm_config(c):
    """OCI config section -> comparable dict (ports/volumes as sorted lists)."""
    out = {}
    for f in CONFIG_FIELDS:
        v = c.get(f)
        if f in ("ExposedPorts", "Volumes"):
            v = sorted(v or {})
        elif f in ("Entrypoint", "Cmd", "Env"):
            v = list(v or [])
        elif f == "Labels":
            v = dict(v or {})
        else:
            v = v or ""
        out[f] = v
    return out


def _cli_inspect(fx):
    argv = DOCKER2VM + ["inspect", "--json", str(fx["archive_path"])]
    if fx["image"]:
        argv += ["--image", fx["image"]]
    if fx["platform"]:
        argv += ["--platform", fx["platform"]]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    if isinstance(doc.get("config"), dict) and "Cmd" in doc["config"]:
        return doc["config"]
    return doc


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_inspect_matches_skopeo_and_podman(name, fixture_index, tmp_path):
    fx = fixture_index["fixtures"][name]
    args, ref = _skopeo_ref(fx, tmp_path)
    proc = subprocess.run(["skopeo", "--insecure-policy"] + args + ["inspect", "--config", ref],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    skopeo_doc = json.loads(proc.stdout)
    ours_cli = _cli_inspect(fx)
    with open_image(fx["archive_path"], image=fx["image"], platform=fx["platform"]) as img:
        ours_api = img.config.to_dict()
        api = img.config
    want = _norm_config(skopeo_doc.get("config") or {})
    assert _norm_config(ours_cli) == want, "docker2vm inspect --json vs skopeo inspect --config"
    assert _norm_config(ours_api) == want, "ContainerConfig vs skopeo inspect --config"
    assert api.architecture == skopeo_doc.get("architecture", "")
    assert api.os == skopeo_doc.get("os", "")
    if "podman_inspect_path" in fx:
        pod = json.loads(fx["podman_inspect_path"].read_text())[0]
        assert _norm_config(pod.get("Config") or {}) == want, "podman inspect vs skopeo"
        assert api.architecture == pod.get("Architecture")


@pytest.mark.parametrize("name", [n for n in FIXTURE_NAMES])
def test_config_has_what_the_build_set(name, fixture_index):
    fx = fixture_index["fixtures"][name]
    expect = fx.get("expect") or {}
    with open_image(fx["archive_path"], image=fx["image"], platform=fx["platform"]) as img:
        got = img.config.to_dict()
        layers = img.layers
    assert layers, "no layers"
    for d in layers:
        assert d.diff_id.startswith("sha256:")
    for key, want in expect.items():
        if key == "Env+":
            missing = [e for e in want if e not in got["Env"]]
            assert not missing, "Env lacks %s: %s" % (missing, got["Env"])
        elif key == "Labels+":
            for k, v in want.items():
                assert got["Labels"].get(k) == v, (k, got["Labels"])
        elif key in ("ExposedPorts", "Volumes"):
            assert sorted(got[key]) == sorted(want), (key, got[key])
        else:
            assert got[key] == want, (key, got[key])


def test_multi_platform_selects_arm64(fixture_index, flattened):
    got = treecmp.manifest_from_tar(flattened("fmt-multi-platform"))
    fx = fixture_index["fixtures"]["fmt-multi-platform"]
    with open_image(fx["archive_path"], platform="linux/arm64") as img:
        assert img.config.architecture == "arm64"
    with open_image(fx["archive_path"], platform="linux/amd64") as img:
        assert img.config.architecture == "amd64"
        assert img.config.labels.get("platform") == "amd64"
    assert "platform.txt" in got


def test_selection_errors(fixture_index):
    fxs = fixture_index["fixtures"]
    with pytest.raises(errors.ImageSelectionError):
        with open_image(fxs["fmt-multi-platform"]["archive_path"], platform="linux/s390x"):
            pass
    with pytest.raises(errors.ImageSelectionError):
        with open_image(fxs["fmt-multi-image"]["archive_path"], image="localhost/nope:1"):
            pass
    # Two images and no choice: refused rather than guessed.
    with pytest.raises(errors.ImageSelectionError):
        with open_image(fxs["fmt-multi-image"]["archive_path"]):
            pass
    for tag in ("localhost/basic-exec:1", "localhost/hardlinks:1"):
        with open_image(fxs["fmt-multi-image"]["archive_path"], image=tag) as img:
            assert tag in img.config.repo_tags


def test_cli_flatten_equals_api(fixture_index, flattened, tmp_path):
    fx = fixture_index["fixtures"]["whiteouts"]
    out = tmp_path / "cli.tar"
    proc = subprocess.run(DOCKER2VM + ["flatten", str(fx["archive_path"]), "-o", str(out)],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert proc.returncode == 0, proc.stderr
    a = treecmp.manifest_from_tar(out)
    b = treecmp.manifest_from_tar(flattened("whiteouts"))
    assert treecmp.diff_manifests(a, b, "cli", "api", mtime="all") == []


def test_sparse_content(flattened):
    """GNU tar sparse members come out with their holes read as zeros."""
    import hashlib
    want = bytearray(8 << 20)
    want[1 << 20:(1 << 20) + 5000] = b"data1" * 1000
    want[5 << 20:(5 << 20) + 5000] = b"data2" * 1000
    digest = hashlib.sha256(want).hexdigest()
    got = treecmp.manifest_from_tar(flattened("sparse-gnutar"))
    for name in ("sp-pax10/sparse", "sp-pax01/sparse"):
        assert got[name].size == 8 << 20, (name, got[name])
        assert got[name].sha256 == digest, name
    assert not any("GNUSparseFile" in p for p in got), sorted(got)
    # Old GNU 'S' members: no real container tool reads them; the core may
    # read them (then correctly) or refuse them in one line.
    try:
        got = treecmp.manifest_from_tar(flattened("sparse-oldgnu"))
    except errors.Docker2VMError as exc:
        assert "\n" not in str(exc)
    else:
        assert got["sp-gnu/sparse"].size == 8 << 20
        assert got["sp-gnu/sparse"].sha256 == digest
