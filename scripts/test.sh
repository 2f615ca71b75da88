#!/usr/bin/env bash
# Install everything the tests need (the package with its prebuilt lab extension, the test extras,
# Debian's chromium for the browser tests, slurm-wlm and munge for the Slurm tests), then run the
# lab extension's unit tests and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check ".[test]"

# Debian packages the tests use, installed only when missing (apt-get update once, first):
# chromium for the browser tests, slurm-wlm and munge for the real one-node Slurm cluster.
missing=()
if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then missing+=(chromium); fi
if [ ! -x /usr/sbin/slurmctld ] || [ ! -x /usr/sbin/slurmd ] || ! command -v sbatch >/dev/null 2>&1; then
    missing+=(slurm-wlm)
fi
if [ ! -x /usr/sbin/munged ]; then missing+=(munge); fi
if [ ${#missing[@]} -gt 0 ]; then
    if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
        # The Slurm and munge packages must not start system-wide daemons: the tests run their own.
        made_policy=""
        if [ ! -e /usr/sbin/policy-rc.d ]; then
            printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
            made_policy=1
        fi
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
            --no-install-recommends "${missing[@]}" >/dev/null
        if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
    else
        echo "missing ${missing[*]} and cannot apt-get install (needs apt-get and root):" \
             "the tests that need them will be skipped" >&2
    fi
fi

echo "--- jupyter labextension list"
python -m jupyter labextension list 2>&1 | tee /tmp/plb-labextensions.txt
grep -Eq "jupyter-plb .*enabled.*OK" /tmp/plb-labextensions.txt

echo "--- lab extension unit tests"
(cd labextension && jlpm install >/dev/null && jlpm test)

echo "--- pytest"
python -m pytest -q "$@"
