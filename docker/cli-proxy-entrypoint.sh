#!/bin/sh
# Entrypoint of the cli-proxy image with tcptunnel in place of the Node tunnel script.
#
# Environment (the same as before):
#   AWF_DIFC_PROXY_HOST       the DIFC proxy's host (default host.docker.internal)
#   AWF_DIFC_PROXY_PORT       its port, also the local port (default 18443)
#   AWF_CLI_PROXY_RELAY_ONLY  1: run only the tunnel, listening on 0.0.0.0 (the egress relay)
#   AWF_CLI_PROXY_CA_CERT     the DIFC proxy's CA, mounted read-only (default /tmp/proxy-tls/ca.crt)
#
# Otherwise the tunnel listens on localhost:PORT (both loopback families), so that gh reaches the
# DIFC proxy as localhost:PORT, a name its certificate carries; the entrypoint waits for the
# tunnel, checks the proxy through it with a TLS handshake against the mounted CA, and then runs
# the image's command (the HTTP server) with GH_HOST and the CA settings exported.
set -eu

difc_host=${AWF_DIFC_PROXY_HOST:-host.docker.internal}
difc_port=${AWF_DIFC_PROXY_PORT:-18443}
ca_cert=${AWF_CLI_PROXY_CA_CERT:-/tmp/proxy-tls/ca.crt}

log() {
  echo "[cli-proxy] $*"
}

if [ "${AWF_CLI_PROXY_RELAY_ONLY:-0}" = "1" ]; then
  log "relay only: 0.0.0.0:${difc_port} -> ${difc_host}:${difc_port}"
  # exec: the tunnel becomes PID 1 and receives the runtime's SIGTERM itself (it drains, exit 0).
  exec tcptunnel --listen "0.0.0.0:${difc_port}" --to "${difc_host}:${difc_port}"
fi

if [ ! -f "$ca_cert" ]; then
  log "ERROR: the DIFC proxy's CA certificate is missing at ${ca_cert} (expected a read-only mount)"
  exit 1
fi

tcptunnel --listen "localhost:${difc_port}" --to "${difc_host}:${difc_port}" &
tunnel_pid=$!
app_pid=""

stop_all() {
  log "shutting down"
  [ -z "$app_pid" ] || kill -TERM "$app_pid" 2>/dev/null || true
  kill -TERM "$tunnel_pid" 2>/dev/null || true
  [ -z "$app_pid" ] || wait "$app_pid" 2>/dev/null || true
  wait "$tunnel_pid" 2>/dev/null || true
}
trap 'stop_all; exit 0' INT TERM

# Through the tunnel, as gh will connect: TCP to the local listener, then a TLS handshake that
# verifies the proxy's certificate for "localhost" against the mounted CA. The retries cover the
# tunnel's start and a proxy that is still starting; a tunnel that died is reported at once.
if ! tcptunnel probe --to "localhost:${difc_port}" --tls --ca-cert "$ca_cert" \
    --server-name localhost --timeout 5s \
    --retries "${AWF_CLI_PROXY_LIVENESS_ATTEMPTS:-10}" --retry-delay 500ms --retry-delay-max 5s
then
  if ! kill -0 "$tunnel_pid" 2>/dev/null; then
    log "ERROR: the tunnel exited (see its error line above)"
  else
    log "ERROR: the DIFC proxy at ${difc_host}:${difc_port} did not answer through the tunnel"
  fi
  stop_all
  exit 1
fi

# gh is a Go program: it reads SSL_CERT_FILE; a bundle of the system store and the proxy's CA
# keeps other hosts verifiable too. /tmp is writable in the cli-proxy container.
bundle=/tmp/proxy-tls-bundle.crt
cat /etc/ssl/certs/ca-certificates.crt "$ca_cert" > "$bundle" 2>/dev/null || cp "$ca_cert" "$bundle"
export GH_HOST="localhost:${difc_port}"
export SSL_CERT_FILE="$bundle"
export GIT_SSL_CAINFO="$bundle"
export NODE_EXTRA_CA_CERTS="$ca_cert"
log "gh routes through the DIFC proxy at ${GH_HOST}"

if [ "$#" -eq 0 ]; then
  set -- node /app/server.js
fi
"$@" &
app_pid=$!
status=0
wait "$app_pid" || status=$?
stop_all
exit "$status"
