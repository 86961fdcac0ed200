#!/usr/bin/env bash
# Makes a Debian or Ubuntu machine ready to build and run Lectern: system packages, then
# PostgreSQL and Redis running on loopback. Safe to run again; it only does what is missing.
set -euo pipefail

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*"; }
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

# Build: FFmpeg development libraries (ffmpeg-next), clang for bindgen, pkg-config.
# Tests: the ffmpeg CLI makes test media, fonts and poppler for PDFs.
PACKAGES=(
  pkg-config clang libclang-dev
  libavcodec-dev libavformat-dev libavutil-dev libswscale-dev libswresample-dev
  libavfilter-dev libavdevice-dev ffmpeg
  fonts-dejavu-core poppler-utils ca-certificates curl
)
missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
apt_updated=""
apt_install() {
  if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}
if [ ${#missing[@]} -gt 0 ]; then
  log "installing system packages: ${missing[*]}"
  apt_install "${missing[@]}"
fi

if ! command -v cargo >/dev/null 2>&1; then
  log "Rust is missing: install it from https://rustup.rs (Lectern needs Rust 1.95 or later)"
  exit 1
fi

# PostgreSQL on 127.0.0.1:5432, user postgres without a password (trust on loopback).
pg_up() { pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; }
if ! command -v pg_isready >/dev/null 2>&1 || ! pg_up; then
  if ! command -v pg_ctlcluster >/dev/null 2>&1; then
    log "installing PostgreSQL"
    apt_install postgresql postgresql-client
    fresh_pg=1
  fi
  version=$(ls /etc/postgresql | sort -V | tail -n1)
  if [ "${fresh_pg:-}" = 1 ]; then
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    log "allowing local connections as postgres without a password (development machine)"
    $SUDO sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
  fi
  log "starting PostgreSQL $version"
  $SUDO pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null \
    || $SUDO pg_ctlcluster "$version" main start 2>/dev/null || true
  for _ in $(seq 1 50); do pg_up && break; sleep 0.2; done
  pg_up || { log "PostgreSQL did not come up on 127.0.0.1:5432"; exit 1; }
fi

# Redis on 127.0.0.1:6379.
redis_up() { redis-cli -h 127.0.0.1 -p 6379 ping 2>/dev/null | grep -q PONG; }
if ! command -v redis-cli >/dev/null 2>&1 || ! redis_up; then
  if ! command -v redis-server >/dev/null 2>&1; then
    log "installing Redis"
    apt_install redis-server
  fi
  if ! redis_up; then
    log "starting Redis"
    $SUDO mkdir -p /var/lib/redis /var/log/redis
    $SUDO redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
      --dir /var/lib/redis --logfile /var/log/redis/lectern.log
    for _ in $(seq 1 50); do redis_up && break; sleep 0.1; done
    redis_up || { log "Redis did not come up on 127.0.0.1:6379"; exit 1; }
  fi
fi
# Tests: schemathesis fuzzes the API from its OpenAPI document (tests/tests/fuzz.rs). It lives in a
# venv of its own, pinned, so the suite never depends on what else Python has installed.
SCHEMATHESIS_VERSION=4.32.5
VENV=${LECTERN_VENV:-${LECTERN_CACHE:-/var/cache/lectern}/venv}
if ! "$VENV/bin/st" --version 2>/dev/null | grep -q "$SCHEMATHESIS_VERSION"; then
  if ! python3 -m venv --help >/dev/null 2>&1 || ! python3 -c 'import ensurepip' 2>/dev/null; then
    log "installing python3-venv"
    apt_install python3 python3-venv
  fi
  log "installing schemathesis $SCHEMATHESIS_VERSION into $VENV"
  $SUDO mkdir -p "$VENV"
  $SUDO chown "$(id -u):$(id -g)" "$VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "schemathesis==$SCHEMATHESIS_VERSION"
fi
# Tests: a Python client generated from the OpenAPI document runs a user story
# (tests/tests/generated_client.rs); the generator, pinned, in the same venv.
OPENAPI_PYTHON_CLIENT_VERSION=0.29.1
if ! "$VENV/bin/openapi-python-client" --version 2>/dev/null | grep -q "$OPENAPI_PYTHON_CLIENT_VERSION"; then
  log "installing openapi-python-client $OPENAPI_PYTHON_CLIENT_VERSION into $VENV"
  "$VENV/bin/pip" install -q "openapi-python-client==$OPENAPI_PYTHON_CLIENT_VERSION"
fi
# Tests: the browser proof (tests/tests/browser.rs) drives Debian's chromium with playwright-core and
# plays videos with hls.js, both from npm at the versions of tests/browser/package-lock.json, in a
# cache folder of their own. No browser is ever downloaded: playwright-core launches chromium.
browser_missing=()
command -v chromium >/dev/null 2>&1 || browser_missing+=(chromium)
command -v node >/dev/null 2>&1 || browser_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || browser_missing+=(npm)
if [ ${#browser_missing[@]} -gt 0 ]; then
  log "installing ${browser_missing[*]} (browser test)"
  apt_install "${browser_missing[@]}"
fi
BROWSER_TEST="$(cd "$(dirname "$0")/.." && pwd)/tests/browser"
NODE_DIR=${LECTERN_NODE_DIR:-${LECTERN_CACHE:-/var/cache/lectern}/node}
if ! cmp -s "$BROWSER_TEST/package-lock.json" "$NODE_DIR/package-lock.json" \
  || [ ! -d "$NODE_DIR/node_modules/playwright-core" ] || [ ! -d "$NODE_DIR/node_modules/hls.js" ]; then
  log "installing the browser test's npm packages (playwright-core, hls.js) into $NODE_DIR"
  $SUDO mkdir -p "$NODE_DIR"
  $SUDO chown "$(id -u):$(id -g)" "$NODE_DIR"
  cp "$BROWSER_TEST/package.json" "$BROWSER_TEST/package-lock.json" "$NODE_DIR/"
  PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --prefix "$NODE_DIR" --no-audit --no-fund --loglevel=error
fi
log "ready: system packages, PostgreSQL 127.0.0.1:5432, Redis 127.0.0.1:6379, schemathesis and openapi-python-client in $VENV, chromium and the browser test packages in $NODE_DIR"
