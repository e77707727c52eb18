# Helpers shared by the benchmark scripts (sourced, not run):
# die, a temporary work directory whose processes are stopped on exit,
# free_port, wait_for, and the stand-alone simulator with one app.
#
# The sourcing script sets BENCH (its name, for messages) first.

die() {
    echo "${BENCH:-bench}: $*" >&2
    exit 1
}

# Creates $WORK (mktemp -d with prefix $1) and stops every pid in PIDS, then
# removes $WORK (kept with KEEP_DIR=1), when the script exits.
make_work_dir() {
    WORK="$(mktemp -d "/tmp/$1.XXXXXX")"
    PIDS=()
    trap cleanup EXIT
}
cleanup() {
    for pid in "${PIDS[@]}"; do
        kill -INT "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    if [[ "${KEEP_DIR:-0}" == 1 ]]; then echo "kept $WORK"; else rm -rf "$WORK"; fi
}

free_port() {
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

wait_for() { # url what
    for _ in $(seq 1 300); do
        [[ "$(curl -s -o /dev/null -w '%{http_code}' "$1")" == 200 ]] && return 0
        sleep 0.1
    done
    die "$2 did not come up ($1)"
}

# Starts `$WXTOKEN_BIN simulator` on a free port with app $1 (secret
# bench-secret-not-real) registered; sets SIM_PORT and SIM.
start_simulator() { # appid
    SIM_PORT="$(free_port)"
    RUST_LOG=warn "$WXTOKEN_BIN" simulator --listen "127.0.0.1:$SIM_PORT" >"$WORK/sim.out" 2>&1 &
    PIDS+=($!)
    SIM="http://127.0.0.1:$SIM_PORT"
    wait_for "$SIM/sim/stats" "the simulator"
    curl -sf -X POST "$SIM/sim/apps" -H 'content-type: application/json' \
        -d "{\"appid\":\"$1\",\"secret\":\"bench-secret-not-real\"}" >/dev/null
}

# Starts `$WXTOKEN_BIN serve` on $WORK/accounts.yaml (listening on
# 127.0.0.1:$WX_PORT) and waits for `$1` (a path, default /readyz);
# sets WX_PID and WX.
start_wxtoken() { # ready-path
    RUST_LOG=warn "$WXTOKEN_BIN" serve --config "$WORK/accounts.yaml" >"$WORK/wxtoken.out" 2>&1 &
    WX_PID=$!
    PIDS+=("$WX_PID")
    WX="http://127.0.0.1:$WX_PORT"
    wait_for "$WX${1:-/readyz}" "wxtoken"
}
