#!/usr/bin/env bash
# An S3 server to try `coffer seal … -o s3://…` by hand: moto in server mode
# (installed by hsm-sim/install-deps.sh into a virtual environment) on
# loopback, with a bucket made. The tests start their own through
# coffer_hsm_sim::S3Server.
#
#   eval "$(bash hsm-sim/s3.sh start)"   # sets AWS_ENDPOINT_URL and a test key
#   coffer seal ~/docs -o s3://coffer/docs.coffer
#   bash hsm-sim/s3.sh env                # print the export lines again
#   bash hsm-sim/s3.sh stop
#
# moto keeps everything in memory: `stop` forgets every object.
# $COFFER_S3_PORT (default 5055), $COFFER_S3_DIR (default /tmp/coffer-s3),
# $COFFER_MOTO_VENV (default /opt/coffer-moto).
set -euo pipefail
dir=${COFFER_S3_DIR:-/tmp/coffer-s3}
port=${COFFER_S3_PORT:-5055}
venv=${COFFER_MOTO_VENV:-/opt/coffer-moto}
say() { echo "s3.sh: $*" >&2; }
running() { [ -f "$dir/pid" ] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; }
export_lines() {
  cat <<EOT
export AWS_ENDPOINT_URL=http://127.0.0.1:$port AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
EOT
}
# One unsigned request to moto (no curl needed): METHOD PATH.
request() {
  exec 3<>"/dev/tcp/127.0.0.1/$port"
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1:%s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' "$1" "$2" "$port" >&3
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
    [ -x "$venv/bin/moto_server" ] || { say "$venv/bin/moto_server missing: run bash hsm-sim/install-deps.sh as root"; exit 1; }
    mkdir -p "$dir"
    nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >>"$dir/moto.log" 2>&1 &
    echo $! > "$dir/pid"
    for _ in $(seq 100); do
      (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
      sleep 0.2
    done
    request PUT /coffer | grep -q ' 200' || { say "moto did not come up; its log:"; cat "$dir/moto.log" >&2; exit 1; }
    say "moto S3 running on 127.0.0.1:$port (pid $(cat "$dir/pid")), bucket s3://coffer"
    export_lines
    ;;
  env) export_lines ;;
  stop)
    if running; then kill "$(cat "$dir/pid")"; say "stopped"; fi
    rm -f "$dir/pid"
    ;;
  *) say "usage: s3.sh start|env|stop"; exit 2 ;;
esac
