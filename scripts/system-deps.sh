#!/usr/bin/env bash
# Installs the Debian packages that the integration suites start for real:
# SoftHSM2 (PKCS#11 token), PostgreSQL (multi-server store), wrk (benchmarks),
# gcc, the OpenSSL and Python headers (the native data-plane core that `pip install`
# compiles) and HAProxy (the C baseline of bench/dataplane.py).
# Only what is missing is installed; nothing happens on a machine that has them.
set -euo pipefail
need=()
command -v softhsm2-util >/dev/null 2>&1 || need+=(softhsm2)
[ -x /usr/lib/postgresql/15/bin/postgres ] || ls /usr/lib/postgresql/*/bin/postgres >/dev/null 2>&1 || need+=(postgresql)
command -v wrk >/dev/null 2>&1 || need+=(wrk)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v gcc >/dev/null 2>&1 || need+=(gcc)
[ -f /usr/include/openssl/ssl.h ] || need+=(libssl-dev)
include="$("${PY:-python3}" -c 'import sysconfig; print(sysconfig.get_path("include"))' 2>/dev/null || true)"
[ -n "$include" ] && [ -f "$include/Python.h" ] || need+=(python3-dev)
command -v haproxy >/dev/null 2>&1 || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
# callers under other uids run the system interpreter (the venv's lives under /root, 0700)
[ -x /usr/bin/python3.11 ] || need+=(python3.11)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing Debian packages: ${need[*]} (run: sudo apt-get install ${need[*]})" >&2
    exit 1
  fi
  echo "installing Debian packages: ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
