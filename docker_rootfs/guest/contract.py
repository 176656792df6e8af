"""Host side of the guest contract: what the guest is told, as simple files.

:func:`render_guest_files` turns a :class:`~docker_rootfs.config.ContainerConfig`,
the instance's hostname, its server metadata and the way the root
filesystem is delivered into ``{relative path: bytes}``: small files under
``docker2vm/`` that go at the root of Nova's config drive. Every decision
(``docker run`` argv semantics, Env merge and PATH default, stop signal
number, overrides from server metadata) is taken here, so the guest's init
only reads values: NUL-separated lists, one-line strings, numbers.

See doc/source/guest-contract.md.
"""

import dataclasses
import json
import re
import signal

from docker_rootfs import errors

CONTRACT_VERSION = "1"
PREFIX = "docker2vm/"

# Server metadata keys (``openstack server create --property KEY=VALUE``)
# that override the image's configuration, as ``docker run`` options do.
META_CMD = "docker_cmd"                # JSON list: docker run IMAGE CMD...
META_ENTRYPOINT = "docker_entrypoint"  # JSON list: docker run --entrypoint (drops image Cmd)
META_ENV = "docker_env"                # JSON list of "KEY=VALUE" or JSON object: docker run -e
META_USER = "docker_user"              # string: docker run --user
META_WORKDIR = "docker_workdir"        # string: docker run --workdir
META_STOP_SIGNAL = "docker_stop_signal"    # string: docker run --stop-signal
META_STOP_TIMEOUT = "docker_stop_timeout"  # integer seconds: docker run --stop-timeout
METADATA_KEYS = (META_CMD, META_ENTRYPOINT, META_ENV, META_USER, META_WORKDIR,
                 META_STOP_SIGNAL, META_STOP_TIMEOUT)

DEFAULT_STOP_TIMEOUT = 10   # docker's default; keep below Nova's shutdown_timeout (60)

# virtio-blk serials are at most 20 bytes; 9p mount tags 31; virtiofs tags 36.
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
_ID_MAX = {"disk": 20, "9p": 31, "virtiofs": 36}


class ContractError(errors.Docker2VMError):
    """The guest inputs cannot be rendered (bad override, bad serial, ...)."""


@dataclasses.dataclass(frozen=True)
class RootfsDelivery:
    """How the container root reaches the guest.

    ``kind`` is ``disk`` (a virtio disk whose serial is ``ident``; the
    per-instance qcow2 overlay, mounted read-write), ``9p`` or ``virtiofs``
    (a share whose tag is ``ident``). A share is read-only to the guest and
    gets a tmpfs overlay for the container's writes, unless ``private`` says
    the share is already a per-instance copy (then it is written through).
    """
    kind: str
    ident: str
    private: bool = False

    def __post_init__(self):
        if self.kind not in _ID_MAX:
            raise ContractError(f"unknown rootfs delivery kind {self.kind!r}")
        if not _ID_RE.match(self.ident or "") or len(self.ident) > _ID_MAX[self.kind]:
            raise ContractError(
                f"{self.kind} identifier {self.ident!r} must be 1-{_ID_MAX[self.kind]} "
                "characters of [A-Za-z0-9._-]")

    @classmethod
    def disk(cls, serial):
        return cls("disk", serial)

    @classmethod
    def share_9p(cls, tag, private=False):
        return cls("9p", tag, private)

    @classmethod
    def virtiofs(cls, tag, private=False):
        return cls("virtiofs", tag, private)

    def spec(self):
        s = f"{self.kind}:{self.ident}"
        if self.kind != "disk" and self.private:
            s += ":rw"
        return s


def signal_number(name):
    """Linux signal number of a Docker StopSignal value (SIGTERM, TERM, 15, SIGRTMIN+3)."""
    s = str(name).strip().upper()
    if s.isdigit():
        n = int(s)
    else:
        if not s.startswith("SIG"):
            s = "SIG" + s
        m = re.match(r"^SIGRTM(IN|AX)([+-]\d+)?$", s)
        if m:
            base = signal.SIGRTMIN if m.group(1) == "IN" else signal.SIGRTMAX
            n = int(base) + int(m.group(2) or 0)
        else:
            sig = getattr(signal, s, None)
            if not isinstance(sig, signal.Signals):
                raise ContractError(f"unknown stop signal {name!r}")
            n = int(sig)
    if not 1 <= n <= 64:
        raise ContractError(f"stop signal {name!r} is out of range")
    return n


def _json_list(metadata, key):
    raw = metadata.get(key)
    if raw is None:
        return None
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ContractError(f"server metadata {key} is not JSON: {exc}") from None
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ContractError(f"server metadata {key} must be a JSON list of strings")
    return value


def _env_overrides(metadata):
    raw = metadata.get(META_ENV)
    if raw is None:
        return []
    try:
        value = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as exc:
        raise ContractError(f"server metadata {META_ENV} is not JSON: {exc}") from None
    if isinstance(value, dict):
        return [f"{k}={v}" for k, v in value.items()]
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise ContractError(f"server metadata {META_ENV} must be a JSON object "
                            "or a list of KEY=VALUE strings")
    return value


def _nul_list(items, what):
    for item in items:
        if "\0" in item:
            raise ContractError(f"{what} contains a NUL byte")
    return b"".join(item.encode() + b"\0" for item in items)


def _line(value, what):
    if "\n" in value or "\0" in value:
        raise ContractError(f"{what} contains a newline or NUL")
    return value.encode() + b"\n"


def resolve(config, hostname, metadata=None, stop_timeout=None):
    """The effective run parameters (what ``docker run`` would use), as a dict."""
    metadata = dict(metadata or {})
    cmd = _json_list(metadata, META_CMD)
    entrypoint = _json_list(metadata, META_ENTRYPOINT)
    argv = config.argv(cmd=cmd, entrypoint=entrypoint)
    if not argv:
        raise ContractError("no command to run: the image has no Entrypoint or Cmd "
                            f"(set server metadata {META_CMD})")
    env = config.environment(_env_overrides(metadata))
    if hostname and not any(e.startswith("HOSTNAME=") for e in env):
        env.append(f"HOSTNAME={hostname}")
    user = metadata.get(META_USER, config.user) or ""
    workdir = metadata.get(META_WORKDIR) or config.effective_working_dir
    if not workdir.startswith("/"):
        workdir = "/" + workdir
    stop_signal = signal_number(metadata.get(META_STOP_SIGNAL) or config.effective_stop_signal)
    timeout = metadata.get(META_STOP_TIMEOUT, stop_timeout)
    if timeout is None:
        timeout = DEFAULT_STOP_TIMEOUT
    try:
        timeout = int(timeout)
    except (TypeError, ValueError):
        raise ContractError(f"stop timeout {timeout!r} is not an integer") from None
    if timeout < 0:
        raise ContractError("stop timeout must not be negative")
    return {"argv": argv, "env": env, "user": user, "workdir": workdir,
            "stop_signal": stop_signal, "stop_timeout": timeout,
            "hostname": hostname or ""}


def upper_spec(serial):
    """The ``docker2vm/upper`` line for a share's per-instance upper disk
    (``disk:SERIAL``); ContractError for a bad serial."""
    if not _ID_RE.match(serial or "") or len(serial) > _ID_MAX["disk"]:
        raise ContractError(f"upper disk serial {serial!r} must be 1-{_ID_MAX['disk']} "
                            "characters of [A-Za-z0-9._-]")
    return f"disk:{serial}"


def render_guest_files(config, hostname, metadata=None, rootfs=None, stop_timeout=None,
                       upper=None):
    """``{relative path: bytes}`` to place at the root of the config drive.

    ``config``: a ContainerConfig; ``hostname``: the instance's hostname;
    ``metadata``: the server metadata (``docker_*`` keys override, see
    :data:`METADATA_KEYS`); ``rootfs``: a :class:`RootfsDelivery`;
    ``stop_timeout``: seconds between the stop signal and SIGKILL (the
    driver passes something below Nova's ``shutdown_timeout``); ``upper``: for
    a read-only share, the serial of the per-instance disk (empty ext4) that
    holds the container's writes instead of a tmpfs (``docker2vm/upper`` =
    ``disk:SERIAL``; without it the file is absent).
    """
    if not isinstance(rootfs, RootfsDelivery):
        raise ContractError("rootfs delivery (disk serial or share tag) is required")
    if upper is not None and (rootfs.kind == "disk" or rootfs.private):
        raise ContractError("an upper disk is only for a read-only share delivery")
    upper_line = upper_spec(upper) if upper is not None else None
    r = resolve(config, hostname, metadata, stop_timeout)
    files = {
        "version": (CONTRACT_VERSION + "\n").encode(),
        "rootfs": _line(rootfs.spec(), "rootfs"),
        "argv": _nul_list(r["argv"], "argv"),
        "env": _nul_list(r["env"], "env"),
        "user": _line(r["user"], "user"),
        "workdir": _line(r["workdir"], "workdir"),
        "hostname": _line(r["hostname"], "hostname"),
        "stop_signal": f"{r['stop_signal']}\n".encode(),
        "stop_timeout": f"{r['stop_timeout']}\n".encode(),
        # For people and tools; the guest does not read it.
        "config.json": json.dumps({"image": config.to_dict(), "effective": r},
                                  indent=1, sort_keys=True).encode(),
    }
    if upper_line is not None:
        files["upper"] = _line(upper_line, "upper")
    return {PREFIX + k: v for k, v in files.items()}
