#!/usr/bin/env bash
# Proxy overhead benchmark: the same WeChat business call
# (GET /cgi-bin/user/info?access_token=...&openid=...) sent to the
# stand-alone simulator directly, through wxtoken's token-injecting proxy,
# and through nginx's proxy_pass (a plain reverse proxy, for reference), in
# alternating wrk rounds; then wxtoken's memory with 1,000 proxied requests
# in flight at once (the simulator holds every call for HOLD_MS).
#
# Usage: bench/proxy.sh        (from the crate root, after cargo build --release)
# Environment (all optional):
#   WXTOKEN_BIN   the release binary            (default target/release/wxtoken)
#   ROUNDS        alternating rounds            (default 3)
#   DURATION      seconds per wrk round         (default 10)
#   CONNECTIONS   wrk connections per round     (default 64)
#   THREADS       wrk threads                   (default 2)
#   IN_FLIGHT     concurrent requests for the memory phase (default 1000)
#   HOLD_MS       how long the simulator holds each call then (default 2000)
#   KEEP_DIR=1    keep the temporary directory
#
# Needs wrk, nginx (Debian's nginx-light), curl, python3 and ss.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH=proxy.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
WXTOKEN_BIN="${WXTOKEN_BIN:-$ROOT/target/release/wxtoken}"
ROUNDS="${ROUNDS:-3}"
DURATION="${DURATION:-10}"
CONNECTIONS="${CONNECTIONS:-64}"
THREADS="${THREADS:-2}"
IN_FLIGHT="${IN_FLIGHT:-1000}"
HOLD_MS="${HOLD_MS:-2000}"
APPID=wx00000000000000b1

for tool in wrk nginx curl python3 ss; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed (Debian: apt-get install wrk nginx-light curl python3 iproute2)"
done
[[ -x "$WXTOKEN_BIN" ]] || die "$WXTOKEN_BIN is missing; run 'cargo build --release' first"
# 1,000 client connections, as many to the simulator, and the simulator's own.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

make_work_dir wxtoken-proxy
chmod 755 "$WORK"

# --- the simulator and wxtoken ------------------------------------------------
start_simulator "$APPID"

WX_PORT="$(free_port)"
cat >"$WORK/accounts.yaml" <<EOF
listen: 127.0.0.1:$WX_PORT
upstream:
  base_urls: [$SIM]
store:
  path: $WORK/data/wxtoken.redb
proxy:
  max_in_flight_per_client: $((IN_FLIGHT * 4))
accounts:
  - appid: $APPID
    name: proxy benchmark
    secret: bench-secret-not-real
EOF
start_wxtoken
# The token through the face (no clients configured: loopback, any key).
TOKEN="$(curl -sf "$WX/cgi-bin/token?grant_type=client_credential&appid=$APPID&secret=loopback" |
    python3 -c 'import json,sys; print(json.load(sys.stdin)["access_token"])')"
CALL="/cgi-bin/user/info?access_token=$TOKEN&openid=o-bench-user&lang=zh_CN"
for base in "$SIM" "$WX"; do
    answer="$(curl -sf "$base$CALL")"
    [[ "$answer" == *'"openid":"o-bench-user"'* ]] || die "$base answered $answer"
done

# --- nginx as a plain reverse proxy, for reference ----------------------------
NGINX_PORT="$(free_port)"
mkdir -p "$WORK/nginx-tmp" "$WORK/logs"
WORKERS=$(($(nproc) < 4 ? $(nproc) : 4))
cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/logs/error.log warn;
events { worker_connections 8192; }
http {
    access_log off;
    keepalive_requests 100000000;
    client_body_temp_path $WORK/nginx-tmp/body;
    proxy_temp_path $WORK/nginx-tmp/proxy;
    fastcgi_temp_path $WORK/nginx-tmp/fastcgi;
    uwsgi_temp_path $WORK/nginx-tmp/uwsgi;
    scgi_temp_path $WORK/nginx-tmp/scgi;
    upstream sim { server 127.0.0.1:$SIM_PORT; keepalive 128; }
    server {
        listen 127.0.0.1:$NGINX_PORT;
        location / {
            proxy_pass http://sim;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }
    }
}
EOF
nginx -c "$WORK/nginx.conf" -g 'daemon off;' &
NGINX_PID=$!
PIDS+=("$NGINX_PID")
NGINX="http://127.0.0.1:$NGINX_PORT"
wait_for "$NGINX$CALL" "nginx"

# --- rounds --------------------------------------------------------------------
run_wrk() { # name base round
    wrk -t"$THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$2$CALL" >"$WORK/wrk-$1-$3.txt"
}
echo "warming up"
for base in "$SIM" "$WX" "$NGINX"; do wrk -t"$THREADS" -c"$CONNECTIONS" -d2s "$base$CALL" >/dev/null; done
for round in $(seq 1 "$ROUNDS"); do
    run_wrk direct "$SIM" "$round"
    run_wrk wxtoken "$WX" "$round"
    run_wrk nginx "$NGINX" "$round"
done
python3 - "$WORK" "$ROUNDS" <<'EOF'
import re, statistics, sys
work, rounds = sys.argv[1], int(sys.argv[2])
def ms(v):
    n, unit = re.match(r"([\d.]+)(us|ms|s)", v).groups()
    return float(n) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
def parse(path):
    text = open(path).read()
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p50 = ms(re.search(r"50%\s+(\S+)", text).group(1))
    p99 = ms(re.search(r"99%\s+(\S+)", text).group(1))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, p50, p99, int(errors.group(1)) if errors else 0
medians = {}
for name in ["direct", "wxtoken", "nginx"]:
    runs = [parse(f"{work}/wrk-{name}-{r}.txt") for r in range(1, rounds + 1)]
    for r, (rps, p50, p99, errs) in enumerate(runs, 1):
        print(f"round {r} {name:8} {rps:10.0f} req/s  p50 {p50:7.3f} ms  p99 {p99:7.3f} ms  non-2xx {errs}")
    medians[name] = [statistics.median(x[i] for x in runs) for i in range(3)]
print()
print(f"{'median':16} {'req/s':>10} {'p50 ms':>9} {'p99 ms':>9}")
for name, (rps, p50, p99) in medians.items():
    print(f"{name:16} {rps:10.0f} {p50:9.3f} {p99:9.3f}")
d, w, n = medians["direct"], medians["wxtoken"], medians["nginx"]
print(f"wxtoken overhead  p50 +{w[1]-d[1]:.3f} ms, p99 +{w[2]-d[2]:.3f} ms, throughput {w[0]/d[0]:.2f}x of direct")
print(f"nginx overhead    p50 +{n[1]-d[1]:.3f} ms, p99 +{n[2]-d[2]:.3f} ms, throughput {n[0]/d[0]:.2f}x of direct")
print(f"wxtoken / nginx   throughput {w[0]/n[0]:.2f}x, p50 {w[1]/n[1]:.2f}x, p99 {w[2]/n[2]:.2f}x")
EOF

# --- memory with IN_FLIGHT proxied requests at once -------------------------------
# nginx's idle connections to the simulator would be counted below.
kill -QUIT "$NGINX_PID" 2>/dev/null || true
wait "$NGINX_PID" 2>/dev/null || true
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$WX_PID/status"; }
IDLE_RSS="$(rss_kib)"
curl -sf -X POST "$SIM/sim/faults" -H 'content-type: application/json' \
    -d "{\"api\":\"business\",\"delay_ms\":$HOLD_MS}" >/dev/null
wrk -t"$THREADS" -c"$IN_FLIGHT" -d"$((HOLD_MS * 4 / 1000 + 2))s" --timeout 30s --latency "$WX$CALL" >"$WORK/wrk-inflight.txt" &
WRK_PID=$!
PEAK_RSS=0
PEAK_UPSTREAM=0
while kill -0 "$WRK_PID" 2>/dev/null; do
    rss="$(rss_kib)"
    ((rss > PEAK_RSS)) && PEAK_RSS=$rss
    upstream="$(ss -Htn state established "( dport = :$SIM_PORT )" | wc -l)"
    ((upstream > PEAK_UPSTREAM)) && PEAK_UPSTREAM=$upstream
    sleep 0.1
done
wait "$WRK_PID" || true
curl -sf -X DELETE "$SIM/sim/faults" >/dev/null
echo
grep -E "Requests/sec|Non-2xx|Socket errors" "$WORK/wrk-inflight.txt" || true
echo "in flight: $IN_FLIGHT client connections, each call held ${HOLD_MS} ms by the simulator;"
echo "  peak upstream connections from wxtoken to the simulator: $PEAK_UPSTREAM"
echo "  wxtoken RSS idle $((IDLE_RSS / 1024)) MiB, peak $((PEAK_RSS / 1024)) MiB," \
    "$(((PEAK_RSS - IDLE_RSS) / (PEAK_UPSTREAM > 0 ? PEAK_UPSTREAM : 1))) KiB per request in flight"
