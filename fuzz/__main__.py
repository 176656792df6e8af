"""Command line of the fuzzer (see fuzz/__init__.py and doc/source/fuzzing.md).

    python -m fuzz seeds [--out DIR]
    python -m fuzz run TARGET --minutes N [--workdir DIR]
    python -m fuzz campaign --cpu-minutes N [--chunk-minutes M] [--targets a,b,...]
    python -m fuzz repro TARGET FILE...
    python -m fuzz report [--since 2026-12-02T01:00:00Z]

Work files go to ``.cache/fuzz/`` (``--workdir``): ``seeds/<target>``
(rebuilt when missing), ``corpus/<target>`` (what the fuzzer kept, reused by
the next run), ``crashes/<target>`` (each failing input) and
``results.jsonl`` (one line per run: executions, coverage, crashes).
Exit status 1 when a run found a failure.
"""

import argparse
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import traceback

TOP = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_WORKDIR = os.path.join(TOP, ".cache", "fuzz")

TIMEOUT_S = 10          # per input: a longer run is reported as a hang (a crash)
RSS_LIMIT_MB = 1536     # libFuzzer's own memory watchdog (below the engine's RLIMIT_AS)
MAX_LEN = 256 * 1024    # largest input the fuzzer makes

_STATUS = re.compile(r"^#(\d+)\s+(\w+)\s+cov: (\d+) ft: (\d+)(?: corp: (\d+)/(\S+))?.*?(?:exec/s: (\d+))?",
                     re.M)
_STAT = re.compile(r"^stat::(\w+):\s+(\d+)", re.M)


def ensure_seeds(workdir, log=print):
    from fuzz import seeds, targets
    out = os.path.join(workdir, "seeds")
    if all(os.path.isdir(os.path.join(out, t)) and os.listdir(os.path.join(out, t))
           for t in targets.TARGETS):
        return out
    tmp = out + ".building"
    shutil.rmtree(tmp, ignore_errors=True)
    counts = seeds.build(tmp, log=log)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    log("seeds: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return out


def parse_output(text):
    """Executions, coverage and features from libFuzzer's output."""
    result = {"executions": 0, "cov": 0, "ft": 0, "corpus": 0}
    for m in _STATUS.finditer(text):
        result.update(executions=int(m.group(1)), cov=int(m.group(3)), ft=int(m.group(4)))
        if m.group(5):
            result["corpus"] = int(m.group(5))
    stats = dict((k, int(v)) for k, v in _STAT.findall(text))
    if "number_of_executed_units" in stats:
        result["executions"] = stats["number_of_executed_units"]
    if "peak_rss_mb" in stats:
        result["peak_rss_mb"] = stats["peak_rss_mb"]
    return result


def run_target(target, seconds, workdir, runs=None, extra=(), log=print, seeds_dir=None, env=None):
    """One fuzzing process for ``target``; returns a result dict. ``env``:
    extra environment (DOCKER2VM_FUZZ_PLANT for the smoke test)."""
    seeds_dir = seeds_dir or os.path.join(ensure_seeds(workdir, log), target)
    corpus = os.path.join(workdir, "corpus", target)
    crashes = os.path.join(workdir, "crashes", target)
    os.makedirs(corpus, exist_ok=True)
    os.makedirs(crashes, exist_ok=True)
    before = set(os.listdir(crashes))
    scratch = tempfile.mkdtemp(prefix="docker2vm-fuzz-run-")
    flags = [f"-timeout={TIMEOUT_S}", f"-rss_limit_mb={RSS_LIMIT_MB}", f"-max_len={MAX_LEN}",
             f"-artifact_prefix={crashes}/", "-print_final_stats=1", "-reload=0",
             "-dict=" + os.path.join(TOP, "fuzz", "tokens.dict")]
    flags.append(f"-runs={runs}" if runs is not None else f"-max_total_time={int(seconds)}")
    cmd = [sys.executable, "-m", "fuzz.engine", target, corpus, seeds_dir] + flags + list(extra)
    env = dict(os.environ, **(env or {}), DOCKER2VM_FUZZ_TMP=scratch,
               PYTHONPATH=TOP + os.pathsep + os.environ.get("PYTHONPATH", ""))
    t0 = time.monotonic()
    cpu0 = os.times()
    try:
        proc = subprocess.run(cmd, cwd=TOP, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    cpu1 = os.times()
    with open(os.path.join(workdir, f"last-{target}.log"), "w") as f:
        f.write(proc.stdout)
    result = parse_output(proc.stdout)
    new = sorted(set(os.listdir(crashes)) - before)
    result.update(target=target, seconds=round(time.monotonic() - t0, 1),
                  cpu_seconds=round((cpu1.children_user + cpu1.children_system)
                                    - (cpu0.children_user + cpu0.children_system), 1),
                  exit_code=proc.returncode, crashes=[os.path.join(crashes, n) for n in new],
                  when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    result["ok"] = proc.returncode == 0 and not new
    if not result["ok"]:
        tail = proc.stdout[-4000:]
        result["error_tail"] = tail
    with open(os.path.join(workdir, "results.jsonl"), "a") as f:
        f.write(json.dumps({k: v for k, v in result.items() if k != "error_tail"}) + "\n")
    return result


def _summary(r):
    return (f"{r['target']}: {r['executions']} executions in {r['seconds']} s "
            f"({r['cpu_seconds']} CPU s), cov {r['cov']} ft {r['ft']}, corpus {r['corpus']}, "
            + ("no failure" if r["ok"] else f"FAILED (exit {r['exit_code']}): {r['crashes']}"))


def report(path, since=""):
    """Per target: runs, executions, CPU time, the highest coverage and
    features libFuzzer printed, and failures."""
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            if r["when"] < since:
                continue
            t = rows.setdefault(r["target"], {"runs": 0, "executions": 0, "cpu": 0.0, "wall": 0.0,
                                              "cov": 0, "ft": 0, "failures": 0})
            t["runs"] += 1
            t["executions"] += r["executions"]
            t["cpu"] += r["cpu_seconds"]
            t["wall"] += r["seconds"]
            t["cov"], t["ft"] = max(t["cov"], r["cov"]), max(t["ft"], r["ft"])
            t["failures"] += 0 if r["ok"] else 1
    out = ["| target | runs | executions | CPU min | wall min | cov | ft | failures |",
           "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    total = {"runs": 0, "executions": 0, "cpu": 0.0, "wall": 0.0, "failures": 0}
    for name, t in sorted(rows.items()):
        out.append(f"| `{name}` | {t['runs']} | {t['executions']:,} | {t['cpu'] / 60:.1f} | "
                   f"{t['wall'] / 60:.1f} | {t['cov']} | {t['ft']} | {t['failures']} |")
        for k in total:
            total[k] += t[k]
    out.append(f"| all | {total['runs']} | {total['executions']:,} | {total['cpu'] / 60:.1f} | "
               f"{total['wall'] / 60:.1f} | | | {total['failures']} |")
    return "\n".join(out)


MEASURED = ("docker_rootfs/archive/__init__.py", "docker_rootfs/archive/layertar.py",
            "docker_rootfs/archive/layouts.py", "docker_rootfs/archive/outer.py",
            "docker_rootfs/archive/streams.py", "docker_rootfs/flatten.py", "docker_rootfs/config.py",
            "docker_rootfs/properties.py", "docker_rootfs/disk/tarscan.py", "docker_rootfs/disk/sizing.py")


def _executable_lines(path):
    """Line numbers holding code inside functions (module and class bodies
    ran at import, before the tracer), from the compiled module."""
    lines = set()
    with open(path) as f:
        todo = [compile(f.read(), path, "exec")]
    while todo:
        code = todo.pop()
        if code.co_flags & inspect.CO_OPTIMIZED:     # a function, not a module or class body
            lines.update(n for _, _, n in code.co_lines() if n)
        todo.extend(c for c in code.co_consts if hasattr(c, "co_lines"))
    return lines


def line_coverage(workdir, names):
    """Replay the seeds and the kept corpus of each target under Python's
    tracer (all threads); per module: lines run, lines with code."""
    import threading
    import trace

    from fuzz import targets
    targets.configure()
    tracer = trace.Trace(count=1, trace=0)
    sandbox = targets.Sandbox()
    inputs = 0
    sys.settrace(tracer.globaltrace)
    threading.settrace(tracer.globaltrace)
    try:
        for name in names:
            for d in (os.path.join(workdir, "seeds", name), os.path.join(workdir, "corpus", name)):
                for f in sorted(os.listdir(d)) if os.path.isdir(d) else ():
                    with open(os.path.join(d, f), "rb") as fh:
                        data = fh.read()
                    inputs += 1
                    try:
                        targets.run_one(targets.TARGETS[name], data, sandbox)
                    except Exception:
                        pass
    finally:
        sys.settrace(None)
        threading.settrace(None)
        sandbox.close()
    ran = {}
    for (filename, lineno), _ in tracer.results().counts.items():
        ran.setdefault(os.path.relpath(filename, TOP), set()).add(lineno)
    rows = []
    for rel in MEASURED:
        code = _executable_lines(os.path.join(TOP, rel))
        hit = ran.get(rel, set()) & code
        rows.append((rel, len(hit), len(code)))
    return inputs, rows


def repro(target_name, paths):
    import resource

    from fuzz import engine, targets
    # the fuzzing process's address-space limit, so memory blow-ups replay too
    resource.setrlimit(resource.RLIMIT_AS, (engine.ADDRESS_SPACE, engine.ADDRESS_SPACE))
    targets.configure()
    sandbox = targets.Sandbox()
    bad = 0
    try:
        for path in paths:
            with open(path, "rb") as f:
                data = f.read()
            try:
                ok = targets.run_one(targets.TARGETS[target_name], data, sandbox)
                print(f"{path}: {'accepted' if ok else 'refused with one line'}")
            except Exception:
                bad += 1
                print(f"{path}: FAILURE")
                traceback.print_exc()
    finally:
        sandbox.close()
    return 1 if bad else 0


def main(argv=None):
    from fuzz import targets
    ap = argparse.ArgumentParser(prog="python -m fuzz", description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", default=DEFAULT_WORKDIR)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("seeds", help="build the seed corpus")
    s.add_argument("--out", help="directory (default WORKDIR/seeds)")
    r = sub.add_parser("run", help="fuzz one target")
    r.add_argument("target", choices=sorted(targets.TARGETS))
    r.add_argument("--minutes", type=float, default=1.0)
    r.add_argument("--runs", type=int, help="stop after this many inputs instead")
    c = sub.add_parser("campaign", help="fuzz every target in turn, one process at a time, "
                       "until the fuzzing processes used --cpu-minutes of CPU time")
    c.add_argument("--cpu-minutes", type=float, default=30.0, help="total CPU time of the fuzzing processes")
    c.add_argument("--chunk-minutes", type=float, default=5.0,
                   help="wall time of one fuzzing process (targets take turns)")
    c.add_argument("--targets", default=",".join(targets.TARGETS))
    rp = sub.add_parser("report", help="Markdown table of the runs in WORKDIR/results.jsonl")
    rp.add_argument("--since", default="", help="only runs that ended at or after this UTC time "
                    "(2026-12-02T01:00:00Z)")
    cv = sub.add_parser("coverage", help="line coverage of the reader by the seeds and corpus")
    cv.add_argument("--targets", default=",".join(targets.TARGETS))
    p = sub.add_parser("repro", help="run inputs through a target once, with tracebacks")
    p.add_argument("target", choices=sorted(targets.TARGETS))
    p.add_argument("files", nargs="+")
    args = ap.parse_args(argv)
    os.makedirs(args.workdir, exist_ok=True)
    if args.cmd == "seeds":
        if args.out:
            from fuzz import seeds
            print(seeds.build(args.out))
        else:
            ensure_seeds(args.workdir)
        return 0
    if args.cmd == "repro":
        return repro(args.target, args.files)
    if args.cmd == "coverage":
        inputs, rows = line_coverage(args.workdir, args.targets.split(","))
        print(f"{inputs} inputs (seeds and corpus) of {args.targets}\n")
        print("| module | lines run | lines with code | % |\n| --- | ---: | ---: | ---: |")
        for rel, hit, code in rows:
            print(f"| `{rel}` | {hit} | {code} | {100 * hit / code:.0f} |")
        hit, code = sum(r[1] for r in rows), sum(r[2] for r in rows)
        print(f"| all | {hit} | {code} | {100 * hit / code:.0f} |")
        return 0
    if args.cmd == "report":
        print(report(os.path.join(args.workdir, "results.jsonl"), args.since))
        return 0
    if args.cmd == "run":
        res = run_target(args.target, args.minutes * 60, args.workdir, runs=args.runs)
        print(_summary(res), flush=True)
        if not res["ok"]:
            print(res.get("error_tail", ""))
        return 0 if res["ok"] else 1
    return campaign(args.targets.split(","), args.cpu_minutes * 60, args.chunk_minutes * 60,
                    args.workdir)


def campaign(names, cpu_budget, chunk, workdir):
    """Targets take turns (one process at a time) until their CPU time adds
    up to ``cpu_budget`` seconds; a failure is recorded and fuzzing goes on
    (the next run of that target starts from its corpus again)."""
    total = {n: {"executions": 0, "cpu_seconds": 0.0, "runs": 0, "cov": 0, "ft": 0,
                 "crashes": []} for n in names}
    used = 0.0
    while used < cpu_budget:
        for name in names:
            res = run_target(name, chunk, workdir)
            print(_summary(res), flush=True)
            t = total[name]
            t["executions"] += res["executions"]
            t["cpu_seconds"] += res["cpu_seconds"]
            t["runs"] += 1
            t["cov"], t["ft"] = max(t["cov"], res["cov"]), max(t["ft"], res["ft"])
            t["crashes"] += res["crashes"] or ([] if res["ok"] else [f"exit {res['exit_code']}"])
            used += res["cpu_seconds"]
            if used >= cpu_budget:
                break
    print(f"campaign: {used / 60:.1f} CPU minutes")
    for name, t in total.items():
        print(f"  {name}: {t['runs']} runs, {t['executions']} executions, "
              f"{t['cpu_seconds'] / 60:.1f} CPU min, cov {t['cov']} ft {t['ft']}, "
              f"failures: {t['crashes'] or 'none'}")
    with open(os.path.join(workdir, "campaigns.jsonl"), "a") as f:
        f.write(json.dumps({"cpu_seconds": used, "targets": total,
                            "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}) + "\n")
    return 0 if not any(t["crashes"] for t in total.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
