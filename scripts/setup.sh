#!/usr/bin/env bash
# Create .venv with everything the project needs; a no-op when nothing changed.
# torch/torchvision come first, from the machine's local wheels (see ../shared/DESIGN.md).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
stamp_src=$(cat requirements.lock requirements-nodeps.txt requirements-labelstudio.lock setup.cfg scripts/setup.sh | sha256sum | cut -c1-16)
stamp=.venv/.installed-$stamp_src
if [ -f "$stamp" ]; then
  exit 0
fi
echo "setting up .venv (first time: about 3 minutes)"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
# requirements.lock is the whole resolved set CI tested (`make lock` makes it from requirements.txt).
.venv/bin/python -m pip install -q "$(grep '^torch==' requirements.lock)" "$(grep '^torchvision==' requirements.lock)"
.venv/bin/python -m pip install -q -r requirements.lock
.venv/bin/python -m pip install -q --no-deps -r requirements-nodeps.txt
# Label Studio (closing the loop) in its own venv: its pins (Django 5.2, numpy 2, Pillow 12) differ from ours.
if [ ! -x .venv-labelstudio/bin/label-studio ]; then
  echo "installing Label Studio into .venv-labelstudio (about a minute)"
  "$PY" -m venv .venv-labelstudio
  .venv-labelstudio/bin/python -m pip install -q --upgrade pip
  .venv-labelstudio/bin/python -m pip install -q -r requirements-labelstudio.lock
fi
.venv/bin/python -m pip install -q --no-deps -e .
# Debian's prometheus and prometheus-alertmanager packages: promtool checks the alert rules,
# prometheus runs the local canary analysis and evaluates the rules, Alertmanager routes the
# retrain alerts to the receiver (serve --loop, the demo). Required: the tests fail (never skip)
# without them.
if ! command -v promtool >/dev/null 2>&1 || ! [ -x /usr/bin/prometheus-alertmanager ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        prometheus prometheus-alertmanager) >/dev/null 2>&1 || true
  fi
  if ! command -v promtool >/dev/null 2>&1 || ! [ -x /usr/bin/prometheus-alertmanager ]; then
    echo "error: prometheus/promtool or prometheus-alertmanager are missing and could not be installed; run" \
         "this script as root or 'sudo apt-get install prometheus prometheus-alertmanager', then run it again" >&2
    exit 1
  fi
fi
# Debian's PostgreSQL: the tests run the loop store, the capture sink and the MLflow registry on
# a throwaway server of their own (initdb + pg_ctl in a temporary folder, tests/helpers.py); they
# fail, not skip, without it. No server of the package's own: no main cluster on port 5432.
if ! compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  mkdir -p /etc/postgresql-common/createcluster.d
  echo "create_main_cluster = false" > /etc/postgresql-common/createcluster.d/gourmetgram.conf
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql) \
    >/dev/null 2>&1 || echo "warning: could not install postgresql; the PostgreSQL tests will fail" >&2
fi
# Lint for every shell script: tests/test_infra.py runs shellcheck and requires it.
if ! command -v shellcheck >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends shellcheck) >/dev/null 2>&1 \
    || echo "warning: could not install shellcheck; tests/test_infra.py will fail" >&2
fi
# The web app's end-to-end tests drive Debian's chromium through its chromedriver (no browser
# download); they fail, not skip, without them.
if { ! command -v chromium >/dev/null 2>&1 || ! command -v chromedriver >/dev/null 2>&1; } \
    && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      chromium chromium-driver fonts-dejavu-core) >/dev/null 2>&1 \
    || echo "warning: could not install chromium/chromium-driver; the web app's browser tests will fail" >&2
fi
rm -f .venv/.installed-*
touch "$stamp"
echo "setup done"
