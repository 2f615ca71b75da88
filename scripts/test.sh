#!/usr/bin/env bash
# Install everything the tests need (the package with its prebuilt lab extension, the test extras,
# Debian's chromium for the browser tests), then run the lab extension's unit tests and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

python -m pip install --quiet --disable-pip-version-check ".[test]"

if ! command -v chromium >/dev/null 2>&1 && [ ! -x /usr/bin/chromium ]; then
    if command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
    else
        echo "chromium is missing and apt-get is not available: browser tests will be skipped" >&2
    fi
fi

echo "--- jupyter labextension list"
python -m jupyter labextension list 2>&1 | tee /tmp/plb-labextensions.txt
grep -Eq "jupyter-plb .*enabled.*OK" /tmp/plb-labextensions.txt

echo "--- lab extension unit tests"
(cd labextension && jlpm install >/dev/null && jlpm test)

echo "--- pytest"
python -m pytest -q "$@"
