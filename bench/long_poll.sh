#!/usr/bin/env bash
# Long-poll benchmark (contract §8): HELD clients hold
# GET /v1/token/{appid}?wait=300s&after=<fetched_at> at once against one
# `wxtoken serve` (release build) and the stand-alone simulator. Prints
# wxtoken's RSS idle and with every request held, the CPU it spends over
# HOLD_SECS while they are held, and how long after a rotation (an admin
# refresh) the held requests are all answered with the new token.
#
# Usage: bench/long_poll.sh    (from the crate root, after cargo build --release)
# Environment (all optional):
#   WXTOKEN_BIN   the release binary                       (default target/release/wxtoken)
#   HELD          long-polls held at once                  (default 10000)
#   HOLD_SECS     how long they are held before the rotation (default 10)
#   KEEP_DIR=1    keep the temporary directory
#
# Needs curl and python3.

set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BENCH=long_poll.sh
# shellcheck source=bench/lib.sh
source "$ROOT/bench/lib.sh"
WXTOKEN_BIN="${WXTOKEN_BIN:-$ROOT/target/release/wxtoken}"
HELD="${HELD:-10000}"
HOLD_SECS="${HOLD_SECS:-10}"
APPID=wx00000000000000c1

for tool in curl python3; do
    command -v "$tool" >/dev/null 2>&1 || die "'$tool' is not installed"
done
[[ -x "$WXTOKEN_BIN" ]] || die "$WXTOKEN_BIN is missing; run 'cargo build --release' first"
# HELD client sockets here and as many in wxtoken.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
(($(ulimit -n) > HELD + 100)) || die "the open-file limit $(ulimit -n) is below HELD=$HELD"

make_work_dir wxtoken-longpoll

start_simulator "$APPID"

WX_PORT="$(free_port)"
cat >"$WORK/accounts.yaml" <<EOF
listen: 127.0.0.1:$WX_PORT
upstream:
  base_urls: [$SIM]
store:
  path: $WORK/data/wxtoken.redb
accounts:
  - appid: $APPID
    name: long-poll benchmark
    secret: bench-secret-not-real
EOF
start_wxtoken "/readyz?strict=1"

python3 - "$WX_PORT" "$WX_PID" "$APPID" "$HELD" "$HOLD_SECS" <<'EOF'
import asyncio, json, os, sys, time, urllib.request

port, pid, appid, held, hold_secs = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), float(sys.argv[5])
base = f"http://127.0.0.1:{port}"
tick = os.sysconf("SC_CLK_TCK")

def rss_mib():
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024

def cpu_secs():
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / tick  # utime + stime

def threads():
    return int(next(l for l in open(f"/proc/{pid}/status") if l.startswith("Threads")).split()[1])

def get(path, method="GET"):
    req = urllib.request.Request(base + path, method=method)
    with urllib.request.urlopen(req) as r:
        return r.read().decode()

def waits():
    for line in get("/metrics").splitlines():
        if line.startswith("wxtoken_long_polls_held "):
            return int(float(line.split()[1]))
    return 0

first = json.loads(get(f"/v1/token/{appid}"))
request = (f"GET /v1/token/{appid}?wait=300s&after={first['fetched_at']} HTTP/1.1\r\n"
           f"Host: 127.0.0.1\r\n\r\n").encode()

async def hold(answers):
    reader, writer = await asyncio.open_connection("127.0.0.1", int(port))
    writer.write(request)
    await writer.drain()
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(int(l.split(b":")[1]) for l in head.split(b"\r\n") if l.lower().startswith(b"content-length"))
    body = json.loads(await reader.readexactly(length))
    answers.append((time.monotonic(), head.split(b" ")[1], body["access_token"]))
    writer.close()

async def main():
    idle_rss, idle_threads = rss_mib(), threads()
    answers, tasks = [], []
    opened = time.monotonic()
    for i in range(held):
        tasks.append(asyncio.create_task(hold(answers)))
        if i % 500 == 499:
            await asyncio.sleep(0.05)
    while waits() < held:
        await asyncio.sleep(0.2)
        if time.monotonic() - opened > 120:
            sys.exit(f"only {waits()} of {held} requests held after 120 s")
    print(f"{held} long-polls held after {time.monotonic() - opened:.1f} s")
    cpu0, t0 = cpu_secs(), time.monotonic()
    await asyncio.sleep(hold_secs)
    cpu1, t1 = cpu_secs(), time.monotonic()
    held_rss = rss_mib()
    assert not answers, f"{len(answers)} answered before any rotation"
    rotated = time.monotonic()
    new = json.loads(get(f"/v1/accounts/{appid}/refresh", method="POST"))
    refreshed = time.monotonic()
    await asyncio.gather(*tasks)
    last = max(a[0] for a in answers)
    wrong = sum(1 for a in answers if a[1] != b"200" or a[2] != new["access_token"])
    print(f"wxtoken RSS idle {idle_rss:.1f} MiB, with {held} held {held_rss:.1f} MiB "
          f"({(held_rss - idle_rss) * 1024 / held:.1f} KiB per held request)")
    print(f"wxtoken threads idle {idle_threads}, with {held} held {threads()}")
    print(f"wxtoken CPU while holding: {cpu1 - cpu0:.2f} s over {t1 - t0:.1f} s "
          f"({100 * (cpu1 - cpu0) / (t1 - t0):.1f}% of one core)")
    print(f"rotation: the admin refresh (a call to the simulator) answered in "
          f"{(refreshed - rotated) * 1000:.0f} ms; the last of the {len(answers)} held requests "
          f"was answered {(last - rotated) * 1000:.0f} ms after the refresh was sent "
          f"({wrong} without the new token)")

asyncio.run(main())
EOF
