#!/usr/bin/env bash
# Read-path load benchmark: wxtoken's GET /v1/token/{appid} against nginx
# serving the same JSON bodies as static files, plus redis-benchmark GETs of
# the same bodies as a reference line. Every request names an account drawn
# at random from ACCOUNTS accounts.
#
# In one run it starts `wxtoken demo` (built-in simulator + server, one-off
# admin key printed on stdout) on a generated ACCOUNTS-account config, waits
# for /readyz, fetches every account's token answer, starts a Debian nginx
# (non-daemon, generated config, free loopback port) serving each body as the
# file /v1/token/<appid>, stores each body in the machine's Redis under a
# unique key, then drives wxtoken and nginx with wrk and bench/random_appid.lua
# (a random appid per request) in alternating rounds and Redis with
# redis-benchmark -r (a random key per request). It prints every round, the
# median requests/s, p50 and p99 of each and the wxtoken/nginx ratios against
# the targets.
#
# Usage: bench/read_path.sh            (from the crate root; builds nothing)
# Environment (all optional):
#   WXTOKEN_BIN   path to the release binary   (default target/release/wxtoken)
#   ACCOUNTS      configured accounts          (default 10000)
#   ROUNDS        alternating rounds per server (default 3)
#   DURATION      seconds per wrk round        (default 10)
#   CONNECTIONS   wrk connections              (default 64)
#   THREADS       wrk threads                  (default 2)
#   WORKERS       nginx worker_processes       (default: wxtoken's own default,
#                                              min(nproc, 4))
#   REDIS_HOST, REDIS_PORT                     (default 127.0.0.1 6379)
#   REDIS_REQUESTS  GETs per redis-benchmark round (default 400000)
#   READY_TIMEOUT seconds to wait for every token (default 300)
#   KEEP_DIR=1    keep the temporary directory (configs, bodies, raw wrk output)
#   HOLD=1        after the rounds, keep both servers up until the file it
#                 names is created (to profile them by hand; with ROUNDS=0
#                 there are no rounds and no summary)
#
# Exit status: 0 when the run completed (whether or not targets were met),
# non-zero when a tool is missing or a server did not start.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LUA="$ROOT/bench/random_appid.lua"
WXTOKEN_BIN="${WXTOKEN_BIN:-$ROOT/target/release/wxtoken}"
ACCOUNTS="${ACCOUNTS:-10000}"
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
READY_TIMEOUT="${READY_TIMEOUT:-300}"

die() {
    echo "read_path.sh: $*" >&2
    exit 1
}

for tool in nginx wrk redis-benchmark redis-cli curl python3; do
    command -v "$tool" >/dev/null 2>&1 ||
        die "'$tool' is not installed (Debian: apt-get install nginx-light wrk redis-tools curl python3)"
done
[[ -x "$WXTOKEN_BIN" ]] || die "$WXTOKEN_BIN is missing; run 'cargo build --release' first"
[[ -r "$LUA" ]] || die "$LUA is missing"
[[ "$ACCOUNTS" =~ ^[0-9]+$ ]] && ((ACCOUNTS >= 1)) || die "ACCOUNTS must be a positive number"

WORK="$(mktemp -d /tmp/wxtoken-readpath.XXXXXX)"
chmod 755 "$WORK"
WX_PID=""
NGINX_PID=""
REDIS_PREFIX="wxtoken-bench:readpath:$$:$(date +%s%N)"
REDIS_LOADED=0

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
    if ((REDIS_LOADED)); then
        redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --pipe <"$WORK/redis-del.resp" >/dev/null 2>&1 || true
    fi
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
# ACCOUNTS stable accounts wx0000000000000001, wx0000000000000002, ... (the
# demo registers each with its built-in simulator).
python3 - "$ACCOUNTS" "$WORK/accounts.yaml" "$WORK/appids.txt" <<'EOF'
import sys
n, config, ids = int(sys.argv[1]), sys.argv[2], sys.argv[3]
appids = ["wx%016x" % (i + 1) for i in range(n)]
with open(config, "w") as f:
    f.write("listen: 127.0.0.1:0\naccounts:\n")
    for i, appid in enumerate(appids):
        f.write(f"  - appid: {appid}\n    name: read-path benchmark {i + 1}\n"
                f"    secret: bench-secret-{i + 1}-not-real\n    mode: stable\n")
with open(ids, "w") as f:
    f.write("".join(a + "\n" for a in appids))
EOF

RUST_LOG=warn "$WXTOKEN_BIN" demo --config "$WORK/accounts.yaml" \
    >"$WORK/wxtoken.out" 2>"$WORK/wxtoken.err" &
WX_PID=$!
STARTED_AT=$SECONDS

WX_BASE=""
WX_KEY=""
while ((SECONDS - STARTED_AT < READY_TIMEOUT)); do
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
AUTH="Authorization: Bearer $WX_KEY"
# The demo waits ten seconds at most; many accounts take longer to fill.
until [[ "$(curl -s -o /dev/null -w '%{http_code}' "$WX_BASE/readyz")" == 200 ]]; do
    ((SECONDS - STARTED_AT < READY_TIMEOUT)) ||
        die "not every account had a token after ${READY_TIMEOUT}s (READY_TIMEOUT)"
    kill -0 "$WX_PID" 2>/dev/null || die "wxtoken demo exited: $(cat "$WORK/wxtoken.err")"
    sleep 0.5
done
READY_SECS=$((SECONDS - STARTED_AT))

# Every account's token answer, once, over one keep-alive connection: the
# files nginx serves and the values Redis holds (plus the RESP commands that
# load and later delete them).
mkdir -p "$WORK/www/v1/token"
python3 - "$WX_BASE" "$WX_KEY" "$WORK/appids.txt" "$WORK/www/v1/token" \
    "$REDIS_PREFIX" "$WORK/redis-set.resp" "$WORK/redis-del.resp" <<'EOF'
import http.client, os, sys, urllib.parse
base, key, ids, www, prefix, set_path, del_path = sys.argv[1:]
url = urllib.parse.urlsplit(base)
conn = http.client.HTTPConnection(url.hostname, url.port, timeout=10)
def resp(*parts):
    out = [b"*%d\r\n" % len(parts)]
    for p in parts:
        out += [b"$%d\r\n" % len(p), p, b"\r\n"]
    return b"".join(out)
with open(ids) as f, open(set_path, "wb") as sets, open(del_path, "wb") as dels:
    for i, appid in enumerate(line.strip() for line in f):
        conn.request("GET", "/v1/token/" + appid, headers={"Authorization": "Bearer " + key})
        r = conn.getresponse()
        body = r.read()
        if r.status != 200:
            sys.exit(f"GET /v1/token/{appid} answered {r.status}: {body[:200]!r}")
        with open(os.path.join(www, appid), "wb") as out:
            out.write(body)
        name = b"%s:%012d" % (prefix.encode(), i)
        sets.write(resp(b"SET", name, body))
        dels.write(resp(b"DEL", name))
EOF
BODY_BYTES="$(cat "$WORK"/www/v1/token/* | wc -c)"
BODY_MEAN=$((BODY_BYTES / ACCOUNTS))
FIRST_APPID="$(head -n1 "$WORK/appids.txt")"

# --- nginx -------------------------------------------------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx-tmp" "$WORK/logs"
chmod -R a+rX "$WORK/www"
# The same headers as wxtoken's answer where nginx allows: no ETag, no
# version in `Server`; nginx still adds Last-Modified and Accept-Ranges.
cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server_tokens off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    open_file_cache max=$((ACCOUNTS + 1000)) inactive=600s;
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
            etag off;
            add_header Cache-Control "private, max-age=60";
        }
    }
}
EOF
nginx -p "$WORK" -c "$WORK/nginx.conf" -g 'daemon off;' 2>"$WORK/logs/stderr.log" &
NGINX_PID=$!
NGINX_BASE="http://127.0.0.1:$NGINX_PORT"
for _ in $(seq 1 50); do
    curl -sf -o /dev/null "$NGINX_BASE/v1/token/$FIRST_APPID" && break
    kill -0 "$NGINX_PID" 2>/dev/null || die "nginx exited: $(cat "$WORK/logs/stderr.log")"
    sleep 0.1
done
cmp -s <(curl -s "$NGINX_BASE/v1/token/$FIRST_APPID") "$WORK/www/v1/token/$FIRST_APPID" ||
    die "nginx does not serve the same body"

# --- redis -------------------------------------------------------------------
REDIS_LOADED=1
redis-cli -h "$REDIS_HOST" -p "$REDIS_PORT" --pipe <"$WORK/redis-set.resp" >"$WORK/redis-load.txt" 2>&1 ||
    die "cannot SET the benchmark keys in Redis at $REDIS_HOST:$REDIS_PORT: $(tail -n1 "$WORK/redis-load.txt")"
# redis-benchmark -r N replaces __rand_int__ by a random 12-digit number below N.
REDIS_KEY="$REDIS_PREFIX:__rand_int__"

# --- measuring -----------------------------------------------------------------
# wrk's latency lines look like "     50%  123.00us"; print microseconds.
to_us() {
    awk -v v="$1" 'BEGIN {
        n = v + 0; u = v; sub(/^[0-9.]+/, "", u);
        if (u == "us") m = 1; else if (u == "ms") m = 1000; else if (u == "s") m = 1000000;
        else if (u == "m") m = 60000000; else m = 1;
        printf "%.1f", n * m }'
}

load1() { cut -d' ' -f1 /proc/loadavg; }

# CPU seconds used on the whole machine so far: user, nice, system and steal
# time of all cores. Interrupt time is left out: with IRQ time accounting the
# loopback traffic of wrk and the server is counted there, not in theirs.
machine_cpu() {
    awk -v hz="$(getconf CLK_TCK)" '$1 == "cpu" {
        printf "%.2f", ($2 + $3 + $4 + $9) / hz; exit }' /proc/stat
}

# CPU seconds used so far by the given processes (all their threads).
procs_cpu() {
    local hz pid total=0
    hz="$(getconf CLK_TCK)"
    for pid in "$@"; do
        [[ -r "/proc/$pid/stat" ]] || continue
        total=$((total + $(sed 's/.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
    done
    awk -v t="$total" -v hz="$hz" 'BEGIN {printf "%.2f", t / hz}'
}

# CPU seconds used so far by this script's finished children (wrk, curl, ...).
# `times` must run in this shell, not in a $(...) subshell: it reads to a file.
children_cpu_to() {
    times >"$WORK/times.txt"
    awk 'NR == 2 {
        n = split($1 " " $2, f, " "); s = 0;
        for (i = 1; i <= n; i++) { split(f[i], p, "m"); s += p[1] * 60 + p[2] }
        printf "%.2f", s }' "$WORK/times.txt" >"$1"
}

# The processes of the server under test: wxtoken, or nginx's master and workers.
server_pids() {
    if [[ "$1" == wxtoken ]]; then echo "$WX_PID"; else echo "$NGINX_PID $(pgrep -P "$NGINX_PID" | tr '\n' ' ')"; fi
}

# Runs one wrk round with a random appid per request; appends
# "rps p50_us p99_us errors max_us load1 others_pct" to $2, where others_pct
# is the CPU that neither wrk nor the server used during the round, in
# percent of all cores (the load average counts wrk and the server too).
wrk_round() {
    local name=$1 out=$2 base=$3
    shift 3
    local raw pids m0 s0 c0 m1 s1 c1 others
    raw="$WORK/wrk-$name-$(date +%s%N).txt"
    read -r -a pids <<<"$(server_pids "$name")"
    children_cpu_to "$WORK/c0"
    m0="$(machine_cpu)" s0="$(procs_cpu "${pids[@]}")"
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" -s "$LUA" \
        "$base" -- "$WORK/appids.txt" >"$raw"
    m1="$(machine_cpu)" s1="$(procs_cpu "${pids[@]}")"
    children_cpu_to "$WORK/c1"
    c0="$(cat "$WORK/c0")" c1="$(cat "$WORK/c1")"
    others="$(awk -v a="$m0" -v b="$m1" -v s0="$s0" -v s1="$s1" -v c0="$c0" -v c1="$c1" \
        -v d="$DURATION" -v n="$NPROC" 'BEGIN {
        o = (b - a) - (s1 - s0) - (c1 - c0); if (o < 0) o = 0; printf "%.1f", 100 * o / (d * n) }')"
    local rps p50 p99 errors max load
    rps="$(awk '/^Requests\/sec:/ {print $2}' "$raw")"
    p50="$(to_us "$(awk '$1 == "50%" {print $2}' "$raw")")"
    p99="$(to_us "$(awk '$1 == "99%" {print $2}' "$raw")")"
    max="$(to_us "$(awk '$1 == "Latency" {print $4; exit}' "$raw")")"
    errors="$(awk '/Non-2xx or 3xx responses:/ {e += $NF} /Socket errors:/ {e += 1} END {print e + 0}' "$raw")"
    load="$(load1)"
    echo "$rps $p50 $p99 $errors $max $load $others" >>"$out"
    printf '  %-8s %10.0f req/s  p50 %8.1f us  p99 %8.1f us  max %9.1f us  errors %s  load %s  others %s%%\n' \
        "$name" "$rps" "$p50" "$p99" "$max" "$errors" "$load" "$others"
}

# Runs one redis-benchmark round (random key per GET); appends
# "rps p50_us p99_us 0 max_us load1" to $1.
redis_round() {
    local out=$1
    local csv
    csv="$(redis-benchmark -h "$REDIS_HOST" -p "$REDIS_PORT" -c "$CONNECTIONS" --threads "$THREADS" \
        -n "$REDIS_REQUESTS" -r "$ACCOUNTS" --csv GET "$REDIS_KEY" | tail -n 1 | tr -d '"')"
    # "test,rps,avg_latency_ms,min_latency_ms,p50_latency_ms,p95_latency_ms,p99_latency_ms,max_latency_ms"
    local rps p50 p99 max load
    rps="$(cut -d, -f2 <<<"$csv")"
    p50="$(awk -v v="$(cut -d, -f5 <<<"$csv")" 'BEGIN {printf "%.1f", v * 1000}')"
    p99="$(awk -v v="$(cut -d, -f7 <<<"$csv")" 'BEGIN {printf "%.1f", v * 1000}')"
    max="$(awk -v v="$(cut -d, -f8 <<<"$csv")" 'BEGIN {printf "%.1f", v * 1000}')"
    load="$(load1)"
    echo "$rps $p50 $p99 0 $max $load" >>"$out"
    printf '  %-8s %10.0f req/s  p50 %8.1f us  p99 %8.1f us  max %9.1f us  errors -  load %s\n' \
        redis "$rps" "$p50" "$p99" "$max" "$load"
}

# Median of column $2 of file $1.
median() {
    awk -v c="$2" '{print $c}' "$1" | sort -g | awk '{a[NR] = $1} END {
        if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'
}

ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", (b > 0 ? a / b : 0)}'; }

echo "read-path benchmark: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //')"
echo "  wxtoken $WX_BASE/v1/token/{appid} (demo, $("$WXTOKEN_BIN" --version 2>/dev/null || echo wxtoken), ready after ${READY_SECS}s)"
echo "  nginx   $NGINX_BASE/v1/token/{appid} ($(nginx -v 2>&1 | sed 's/.*: //'), $WORKERS workers)"
echo "  redis   $REDIS_HOST:$REDIS_PORT GET $REDIS_KEY"
echo "  $ACCOUNTS accounts, a random one per request; bodies $BODY_MEAN bytes of JSON on average"
echo "  wrk -t$THREADS -c$CONNECTIONS -d${DURATION}s keep-alive, $ROUNDS alternating rounds"
echo "  load    $(cut -d' ' -f1-3 /proc/loadavg) (1/5/15 min; other work on the machine skews the numbers)"
echo "warm-up (2 s each, not counted)"
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -H "$AUTH" -s "$LUA" "$WX_BASE" -- "$WORK/appids.txt" >/dev/null
wrk -t"$THREADS" -c"$CONNECTIONS" -d2s -s "$LUA" "$NGINX_BASE" -- "$WORK/appids.txt" >/dev/null

: >"$WORK/wxtoken.rounds"
: >"$WORK/nginx.rounds"
: >"$WORK/redis.rounds"
for round in $(seq 1 "$ROUNDS"); do
    echo "round $round/$ROUNDS"
    if ((round % 2)); then
        wrk_round wxtoken "$WORK/wxtoken.rounds" "$WX_BASE" -H "$AUTH"
        wrk_round nginx "$WORK/nginx.rounds" "$NGINX_BASE"
    else
        wrk_round nginx "$WORK/nginx.rounds" "$NGINX_BASE"
        wrk_round wxtoken "$WORK/wxtoken.rounds" "$WX_BASE" -H "$AUTH"
    fi
    redis_round "$WORK/redis.rounds"
    read -r w_rps _ w_p99 _ < <(tail -n1 "$WORK/wxtoken.rounds")
    read -r n_rps _ n_p99 _ < <(tail -n1 "$WORK/nginx.rounds")
    printf '  wxtoken/nginx this round: throughput %s, p99 %s\n' \
        "$(ratio "$w_rps" "$n_rps")" "$(ratio "$w_p99" "$n_p99")"
done

# Tokens must still be served after the load (no error answers counted).
status="$(curl -s -o /dev/null -w '%{http_code}' -H "$AUTH" "$WX_BASE/v1/token/$FIRST_APPID")"
[[ "$status" == 200 ]] || die "after the load GET /v1/token/$FIRST_APPID answered $status"

if [[ "${HOLD:-0}" == 1 ]]; then
    # For profiling by hand: the servers stay up, the key and list are in files.
    echo "$AUTH" >"$WORK/auth-header"
    echo "holding: wxtoken pid $WX_PID at $WX_BASE, nginx pid $NGINX_PID at $NGINX_BASE"
    echo "  wrk -t$THREADS -c$CONNECTIONS -d10s --latency -H \"\$(cat $WORK/auth-header)\" -s $LUA $WX_BASE -- $WORK/appids.txt"
    echo "  touch $WORK/release to finish"
    until [[ -e "$WORK/release" ]]; do sleep 1; done
fi
((ROUNDS > 0)) || exit 0

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
printf '%-28s %12s %10s %10s %8s %10s\n' "" "requests/s" "p50 (us)" "p99 (us)" "errors" "others %"
printf '%-28s %12.0f %10.1f %10.1f %8s %10s\n' "wxtoken GET /v1/token" "$WX_RPS" "$WX_P50" "$WX_P99" "$WX_ERR" \
    "$(median "$WORK/wxtoken.rounds" 7)"
printf '%-28s %12.0f %10.1f %10.1f %8s %10s\n' "nginx static files" "$NG_RPS" "$NG_P50" "$NG_P99" "$NG_ERR" \
    "$(median "$WORK/nginx.rounds" 7)"
printf '%-28s %12.0f %10.1f %10.1f %8s %10s\n' "redis-benchmark GET -r" "$RD_RPS" "$RD_P50" "$RD_P99" "-" "-"
echo "(others %: CPU used by neither wrk nor the server during a round, share of all cores;"
echo " above a few percent the machine was not quiet and the round says little)"
echo
echo "wxtoken / nginx:"
printf '  throughput %s (target >= 1.00: %s)\n' "$R_RPS" "$(verdict "$R_RPS" ">=" 1.00)"
printf '  p50        %s (target <= 1.00: %s)\n' "$R_P50" "$(verdict "$R_P50" "<=" 1.00)"
printf '  p99        %s (target <= 1.00: %s)\n' "$R_P99" "$(verdict "$R_P99" "<=" 1.00)"
