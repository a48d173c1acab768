#!/usr/bin/env bash
# An Azure Blob Storage server to try `coffer seal … -o az://…` by hand:
# Azurite, Microsoft's emulator (installed by hsm-sim/install-deps.sh), in
# memory on loopback, telemetry off, with a container made. The tests
# start their own through coffer_hsm_sim::AzureServer.
#
#   eval "$(bash hsm-sim/azure.sh start)"   # sets AZURE_STORAGE_USE_EMULATOR and its address
#   coffer seal ~/docs -o az://coffer/docs.coffer
#   bash hsm-sim/azure.sh env                # print the export lines again
#   bash hsm-sim/azure.sh stop
#
# Azurite keeps everything in memory here: `stop` forgets every blob.
# $COFFER_AZURE_PORT (default 10055), $COFFER_AZURE_DIR (default
# /tmp/coffer-azure), $COFFER_AZURITE_DIR (default /opt/coffer-azurite).
set -euo pipefail
dir=${COFFER_AZURE_DIR:-/tmp/coffer-azure}
port=${COFFER_AZURE_PORT:-10055}
azurite=${COFFER_AZURITE_DIR:-/opt/coffer-azurite}/node_modules/.bin/azurite-blob
# Azurite's account and its well-known key, public in Microsoft's documentation.
account=devstoreaccount1
key=Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==
say() { echo "azure.sh: $*" >&2; }
running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }
export_lines() {
  echo "export AZURE_STORAGE_USE_EMULATOR=true AZURITE_BLOB_STORAGE_URL=http://127.0.0.1:$port"
}
# Create container $1 with a SharedKey-signed request (no curl needed).
make_container() {
  local date sig hexkey
  date=$(LC_ALL=C date -u '+%a, %d %b %Y %H:%M:%S GMT')
  hexkey=$(printf '%s' "$key" | base64 -d | od -An -tx1 | tr -d ' \n')
  sig=$(printf 'PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:%s\nx-ms-version:2021-08-06\n/%s/%s/%s\nrestype:container' \
          "$date" "$account" "$account" "$1" |
        openssl dgst -sha256 -mac HMAC -macopt "hexkey:$hexkey" -binary | base64)
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf 'PUT /%s/%s?restype=container HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nx-ms-date: %s\r\nx-ms-version: 2021-08-06\r\nAuthorization: SharedKey %s:%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
    "$account" "$1" "$port" "$date" "$account" "$sig" >&3
  head -1 <&3
  exec 3<&-
}

cmd=${1:-start}
case "$cmd" in
  start)
    if running; then
      say "already running (pid $(cat "$dir/pid"))"
      export_lines
      exit 0
    fi
    [ -x "$azurite" ] || { say "$azurite missing: run bash hsm-sim/install-deps.sh as root"; exit 1; }
    mkdir -p "$dir"
    # exec: the background job is Azurite itself, so the pid file names it
    # and no shell is left holding this script's standard output (which
    # kept `$(azure.sh start)` waiting for Azurite to end).
    (cd "$dir" && exec nohup "$azurite" --blobHost 127.0.0.1 --blobPort "$port" --inMemoryPersistence \
        --disableTelemetry --skipApiVersionCheck >>"$dir/azurite.log" 2>&1 </dev/null) &
    echo $! > "$dir/pid"
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.2
    done
    # 409: a container left by an Azurite still holding the port.
    make_container coffer | grep -qE ' (201|409)' || { say "azurite did not come up; its log:"; cat "$dir/azurite.log" >&2; exit 1; }
    say "Azurite blob service running on 127.0.0.1:$port (pid $(cat "$dir/pid")), container az://coffer"
    export_lines
    ;;
  env) export_lines ;;
  stop)
    if running; then kill "$(cat "$dir/pid")"; say "stopped"; fi
    rm -f "$dir/pid"
    ;;
  *) say "usage: azure.sh start|env|stop"; exit 2 ;;
esac
