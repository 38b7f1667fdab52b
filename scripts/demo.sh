#!/usr/bin/env bash
# Starts hourglassd with the built-in CPU workers, waits until it is healthy,
# generates one real image with the CLI, and stops the server.
set -euo pipefail
cd "$(dirname "$0")/.."

addr=${HOURGLASS_DEMO_ADDR:-127.0.0.1:50051}
out=${HOURGLASS_DEMO_OUT:-hourglass-demo.png}

bin/hourglassd --listen "$addr" --workers 2 &
server=$!
trap 'kill -TERM $server 2>/dev/null; wait $server 2>/dev/null || true' EXIT

# Wait for SERVING (workers started), at most 30 s.
for _ in $(seq 300); do
  if bin/hourglass health --addr "$addr" --timeout 1s >/dev/null 2>&1; then break; fi
  if ! kill -0 $server 2>/dev/null; then echo "hourglassd exited" >&2; exit 1; fi
  sleep 0.1
done
bin/hourglass health --addr "$addr" --timeout 2s

bin/hourglass generate --addr "$addr" --timeout 60s \
  --prompt "a lighthouse on a cliff at dusk, oil painting" \
  --width 512 --height 512 --seed 42 -o "$out"
echo "demo: wrote $out"
