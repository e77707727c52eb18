#!/usr/bin/env bash
# Read-path load benchmark: wxtoken's GET /v1/token/{appid} against nginx
# serving the same JSON body as a static file, plus redis-benchmark GET of the
# same body as a reference line.
#
# In one run it starts `wxtoken demo` (built-in simulator + server, one-off
# admin key printed on stdout), fetches one token answer, starts a Debian
# nginx (non-daemon, generated config, free loopback port) serving that body,
# stores the body in the machine's Redis under a unique key, then drives
# wxtoken and nginx with wrk in alternating rounds and Redis with
# redis-benchmark. It prints requests/s, p50 and p99 of each (median over the
# rounds) and the wxtoken/nginx ratios against the targets.
#
# Usage: bench/read_path.sh            (from the crate root; builds nothing)
# Environment (all optional):
#   WXTOKEN_BIN   path to the release binary   (default target/release/wxtoken)
#   ROUNDS        alternating rounds per server (default 3)
#   DURATION      seconds per wrk round        (default 10)
#   CONNECTIONS   wrk connections              (default 64)
#   THREADS       wrk threads                  (default 2)
#   WORKERS       nginx worker_processes       (default: wxtoken's own default,
#                                              min(nproc, 4))
#   REDIS_HOST, REDIS_PORT                     (default 127.0.0.1 6379)
#   REDIS_REQUESTS  GETs per redis-benchmark round (default 400000)
#   KEEP_DIR=1    keep the temporary directory (configs, raw wrk output)
#
# Exit status: 0 when the run completed (whether or not targets were met),
# non-zero when a tool is missing or a server did not start.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WXTOKEN_BIN="${WXTOKEN_BIN:-$ROOT/target/release/wxtoken}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
NPROC="$(nproc)"
DEFAULT_WORKERS=$((NPROC < 4 ? NPROC : 4))
WORKERS="${WORKERS:-$DEFAULT_WORKERS}"
REDIS_HOST="${REDIS_HOST:-127.0.0.1}"
REDIS_PORT="${REDIS_PORT:-6379}"
REDIS_REQUESTS="${REDIS_REQUESTS:-400000}"
APPID="wx0b0e0c0a0f0e0d01"

die() {
    echo "read_path.sh: $*" >&2
    exit 1
}

for tool in nginx wrk redis-benchmark redis-cli curl python3; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' is not installed (Debian: apt-get install nginx-light wrk redis-tools curl python3)"
done
[[ -x "$WXTOKEN_BIN" ]] || die "$WXTOKEN_BIN is missing; run 'cargo build --release' first"

WORK="$(mktemp -d /tmp/wxtoken-readpath.XXXXXX)"
chmod 755 "$WORK"
WX_PID=""
NGINX_PID=""
REDIS_KEY="wxtoken-bench:readpath:$$:$(date +%s%N)"

cleanup() {
    # Only the processes this script started, by their id.
    if [[ -n "$NGINX_PID" ]] && kill -0 "$NGINX_PID" 2>/dev/null; then
        kill -QUIT "$NGINX_PID" 2>/dev/null || true
        wait "$NGINX_PID" 2>/dev/null || true
    fi
    if [[ -n "$WX_PID" ]] && kill -0 "$WX_PID" 2>/dev/null; then
        kill -INT "$WX_PID" 2>/dev/null || true
        wait "$WX_PID" 2>/dev/null || true
    fi
    redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" DEL "$REDIS_KEY" >/dev/null 2>&1 || true
    if [[ "${KEEP_DIR:-0}" == 1 ]]; then
        echo "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# --- wxtoken -----------------------------------------------------------------
cat >"$WORK/accounts.yaml" <<EOF
listen: 127.0.0.1:0
accounts:
  - appid: $APPID
    name: read-path benchmark
    secret: bench-secret-not-real
    mode: stable
EOF
RUST_LOG=warn "$WXTOKEN_BIN" demo --config "$WORK/accounts.yaml" \
    >"$WORK/wxtoken.out" 2>"$WORK/wxtoken.err" &
WX_PID=$!

WX_BASE=""
WX_KEY=""
for _ in $(seq 1 100); do
    line="$(grep -m1 'token server:' "$WORK/wxtoken.out" 2>/dev/null || true)"
    if [[ -n "$line" ]]; then
        WX_BASE="$(sed -E 's/.*token server: +(http:\/\/[^ ]+).*/\1/' <<<"$line")"
        WX_KEY="$(sed -E 's/.*demo admin key: ([^)]+)\).*/\1/' <<<"$line")"
        break
    fi
    kill -0 "$WX_PID" 2>/dev/null || die "wxtoken demo exited: $(cat "$WORK/wxtoken.err")"
    sleep 0.1
done
[[ -n "$WX_BASE" && -n "$WX_KEY" ]] || die "wxtoken demo printed no address and key"
WX_URL="$WX_BASE/v1/token/$APPID"
AUTH="Authorization: Bearer $WX_KEY"

status="$(curl -s -o "$WORK/body.json" -w '%{http_code}' -H "$AUTH" "$WX_URL")"
[[ "$status" == 200 ]] || die "GET $WX_URL answered $status: $(cat "$WORK/body.json")"
BODY_BYTES="$(wc -c <"$WORK/body.json")"

# --- nginx -------------------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/www/v1/token" "$WORK/nginx-tmp" "$WORK/logs"
cp "$WORK/body.json" "$WORK/www/v1/token/$APPID"
chmod -R a+rX "$WORK/www"
cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    server {
        listen 127.0.0.1:$NGINX_PORT;
        root $WORK/www;
        location /v1/token/ {
            default_type application/json;
            add_header Cache-Control "private, max-age=60";
        }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' 2>"$WORK/logs/stderr.log" &
NGINX_PID=$!
NGINX_URL="http://127.0.0.1:$NGINX_PORT/v1/token/$APPID"
for _ in $(seq 1 50); do
    curl -sf -o /dev/null "$NGINX_URL" && break
    kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$WORK/logs/stderr.log")"
    sleep 0.1
done
cmp -s <(curl -s "$NGINX_URL") "$WORK/body.json" || die "nginx does not serve the same body"

# --- redis -------------------------------------------------------------------
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" -x SET "$REDIS_KEY" <"$WORK/body.json" >/dev/null ||
    die "cannot SET the benchmark key in Redis at $REDIS_HOST:$REDIS_PORT"

# --- measuring -----------------------------------------------------------------
# wrk's latency lines look like "     50%  123.00us"; print microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else m = 1;
        printf "%.1f", n * m }'
}

# Runs one wrk round; appends "rps p50_us p99_us errors" to $2.
wrk_round() {
    local name=$1 out=$2 url=$3
    shift 3
    local raw="$WORK/wrk-$name-$(date +%s%N).txt"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" >"$raw"
    local rps p50 p99 errors
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$raw")"
    p50="$(to_us "$(awk '$1 == "50%" {print $2}' "$raw")")"
    p99="$(to_us "$(awk '$1 == "99%" {print $2}' "$raw")")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {e += $NF} /Socket errors:/ {e += 1} END {print e + 0}' "$raw")"
    echo "$rps $p50 $p99 $errors" >>"$out"
    printf '  %-8s round: %10.0f req/s  p50 %8.1f us  p99 %8.1f us  errors %s\n' \
        "$name" "$rps" "$p50" "$p99" "$errors"
}

# Runs one redis-benchmark round; appends "rps p50_us p99_us 0" to $1.
redis_round() {
    local out=$1
    local csv
    csv="$(redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c "$CONNECTIONS" --threads "$THREADS" \
        -n "$REDIS_REQUESTS" --csv GET "$REDIS_KEY" | tail -n 1 | tr -d '"')"
    # "test,rps,avg_latency_ms,min_latency_ms,p50_latency_ms,p95_latency_ms,p99_latency_ms,max_latency_ms"
    local rps p50 p99
    rps="$(cut -d, -f2 <<<"$csv")"
    p50="$(awk -v v="$(cut -d, -f5 <<<"$csv")" 'BEGIN {printf "%.1f", v * 1000}')"
    p99="$(awk -v v="$(cut -d, -f7 <<<"$csv")" 'BEGIN {printf "%.1f", v * 1000}')"
    echo "$rps $p50 $p99 0" >>"$out"
    printf '  %-8s round: %10.0f req/s  p50 %8.1f us  p99 %8.1f us\n' redis "$rps" "$p50" "$p99"
}

# Median of column $2 of file $1.
median() {
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{a[NR] = $1} END {
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

echo "read-path benchmark: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "  wxtoken $WX_URL (demo, $("$WXTOKEN_BIN" --version 2>/dev/null || echo wxtoken))"
echo "  nginx   $NGINX_URL ($(nginx -v 2>&1 | sed 's/.*: //'), $WORKERS workers)"
echo "  redis   $REDIS_HOST:$REDIS_PORT GET $REDIS_KEY"
echo "  body    $BODY_BYTES bytes of JSON; wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s keep-alive, $ROUNDS alternating rounds"
echo "  load    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the machine skews the numbers)"
echo "warm-up (2 s each, not counted)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$AUTH" "$WX_URL" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$NGINX_URL" >/dev/null

: >"$WORK/wxtoken.rounds"
: >"$WORK/nginx.rounds"
: >"$WORK/redis.rounds"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS"
    if ((round % 2)); then
        wrk_round wxtoken "$WORK/wxtoken.rounds" "$WX_URL" -H "$AUTH"
        wrk_round nginx "$WORK/nginx.rounds" "$NGINX_URL"
    else
        wrk_round nginx "$WORK/nginx.rounds" "$NGINX_URL"
        wrk_round wxtoken "$WORK/wxtoken.rounds" "$WX_URL" -H "$AUTH"
    fi
    redis_round "$WORK/redis.rounds"
done

# The token must still be served after the load (no error answers counted).
status="$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$WX_URL")"
[[ "$status" == 200 ]] || die "after the load GET $WX_URL answered $status"

WX_RPS="$(median "$WORK/wxtoken.rounds" 1)"
WX_P50="$(median "$WORK/wxtoken.rounds" 2)"
WX_P99="$(median "$WORK/wxtoken.rounds" 3)"
WX_ERR="$(awk '{e += $4} END {print e + 0}' "$WORK/wxtoken.rounds")"
NG_RPS="$(median "$WORK/nginx.rounds" 1)"
NG_P50="$(median "$WORK/nginx.rounds" 2)"
NG_P99="$(median "$WORK/nginx.rounds" 3)"
NG_ERR="$(awk '{e += $4} END {print e + 0}' "$WORK/nginx.rounds")"
RD_RPS="$(median "$WORK/redis.rounds" 1)"
RD_P50="$(median "$WORK/redis.rounds" 2)"
RD_P99="$(median "$WORK/redis.rounds" 3)"

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }
R_RPS="$(ratio "$WX_RPS" "$NG_RPS")"
R_P50="$(ratio "$WX_P50" "$NG_P50")"
R_P99="$(ratio "$WX_P99" "$NG_P99")"
verdict() { # $1 value, $2 op, $3 target
    awk -v v="$1" -v op="$2" -v t="$3" 'BEGIN {
        ok = (op == ">=") ? (v >= t) : (v <= t); print (ok ? "met" : "NOT met") }'
}

echo
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "median of $ROUNDS rounds:"
printf '%-28s %12s %10s %10s %8s\n' "" "requests/s" "p50 (us)" "p99 (us)" "errors"
printf '%-28s %12.0f %10.1f %10.1f %8s\n' "wxtoken GET /v1/token" "$WX_RPS" "$WX_P50" "$WX_P99" "$WX_ERR"
printf '%-28s %12.0f %10.1f %10.1f %8s\n' "nginx static file" "$NG_RPS" "$NG_P50" "$NG_P99" "$NG_ERR"
printf '%-28s %12.0f %10.1f %10.1f %8s\n' "redis-benchmark GET" "$RD_RPS" "$RD_P50" "$RD_P99" "-"
echo
echo "wxtoken / nginx:"
printf '  throughput %s (target >= 0.90: %s)\n' "$R_RPS" "$(verdict "$R_RPS" ">=" 0.90)"
printf '  p50        %s (target <= 1.00: %s)\n' "$R_P50" "$(verdict "$R_P50" "<=" 1.00)"
printf '  p99        %s (target <= 1.00: %s)\n' "$R_P99" "$(verdict "$R_P99" "<=" 1.00)"
