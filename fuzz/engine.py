"""Run one target under atheris (libFuzzer) in this process.

Called as ``python -m fuzz.engine TARGET CORPUS_DIR [libFuzzer flags...]``
by ``python -m fuzz run`` (one process per target). Sets an address-space
rlimit before anything is fuzzed; libFuzzer adds its own per-input
``-timeout`` (a hang is a crash) and ``-rss_limit_mb``. The code under test
is instrumented for coverage: docker_rootfs and the stdlib modules it
parses with (tarfile, json, gzip, zlib wrappers), so header and JSON
paths count as new coverage too.
"""

import os
import random
import resource
import sys

import atheris

ADDRESS_SPACE = 3 * 1024 ** 3     # RLIMIT_AS (bytes): a memory blow-up is a MemoryError crash


def main(argv):
    target_name = argv[1]
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))
    # fuzz.targets too: the planted bugs of the smoke test live there.
    with atheris.instrument_imports(include=["docker_rootfs", "tarfile", "json", "gzip", "fuzz.targets"]):
        import tarfile  # noqa: F401  (instrumented when first imported here)

        from docker_rootfs import archive, flatten, properties  # noqa: F401
        from docker_rootfs.disk import sizing, tarscan  # noqa: F401
        from fuzz import targets

    targets.configure()
    if os.environ.get("DOCKER2VM_FUZZ_PLANT"):
        targets.plant(os.environ["DOCKER2VM_FUZZ_PLANT"])
    target = targets.TARGETS[target_name]
    sandbox = targets.Sandbox(os.environ.get("DOCKER2VM_FUZZ_TMP"))

    def one_input(data):
        targets.run_one(target, data, sandbox)

    def json_mutator(data, max_size, seed):
        """Half of the layout target's mutations are structure-aware
        (fuzz/targets.py mutate_json), the rest libFuzzer's own."""
        rng = random.Random(seed)
        if rng.random() < 0.5:
            out = targets.mutate_json(data, rng)
            if out is not None and len(out) <= max_size:
                return out
        return atheris.Mutate(data, max_size)

    extra = {"custom_mutator": json_mutator} if target_name == "layout" else {}
    atheris.Setup([argv[0]] + argv[2:], one_input, **extra)
    try:
        atheris.Fuzz()
    finally:
        sandbox.close()


if __name__ == "__main__":
    main(sys.argv)
