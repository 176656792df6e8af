"""Coverage-guided fuzzing of the archive reader, the flattener and the
disk builder's input scan (development tooling: product code never
imports it).

    .venv/bin/python -m fuzz run archive --minutes 5     # one target
    .venv/bin/python -m fuzz campaign --cpu-minutes 30   # all targets in turn, one at a time
    .venv/bin/python -m fuzz repro archive CRASH_FILE    # replay one input

``targets.py`` holds the targets (what counts as a failure, the small
limits they run under), ``seeds.py`` builds the seed corpus from the
real-tool fixtures and the hostile archives of the tests, ``engine.py``
runs atheris (libFuzzer) under a memory rlimit and a per-input timeout.
doc/source/fuzzing.md has the results.
"""
