#!/bin/sh
# Health check of the cli-proxy image (Docker reads exit status 1 as unhealthy).
#
# cli-proxy: the DIFC proxy through the tunnel, as gh sees it: TCP to the local listener and a
# TLS handshake verified against the mounted CA for the name "localhost". This replaces
# `bash -c 'cat < /dev/null > /dev/tcp/HOST/PORT'`, which only showed that some process accepted.
# Relay only: a TCP connection to the upstream, the one thing that can go away under a running
# relay (its listener failing would end the container). This replaces the `node -e` connect.
port=${AWF_DIFC_PROXY_PORT:-18443}
if [ "${AWF_CLI_PROXY_RELAY_ONLY:-0}" = "1" ]; then
  exec tcptunnel probe --to "${AWF_DIFC_PROXY_HOST:-host.docker.internal}:${port}" --timeout 2s
fi
exec tcptunnel probe --to "localhost:${port}" --tls \
  --ca-cert "${AWF_CLI_PROXY_CA_CERT:-/tmp/proxy-tls/ca.crt}" --server-name localhost --timeout 2s
