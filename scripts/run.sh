#!/usr/bin/env bash
# zoogate's main job with built-in defaults: builds zoogate and runs the gateway (`zoogate serve`):
# the Hub endpoint on 127.0.0.1:8080 in front of the public Hub, the admin listener (metrics, health)
# on 127.0.0.1:9090, a cache folder ./zoogate-cache, the built-in policy and layout variation on.
# Extra arguments go to `zoogate serve` (for example --config zoogate.yaml).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/install-deps.sh" build
"$here/scripts/build.sh"
echo "Point Hub clients at zoogate:  export HF_ENDPOINT=http://127.0.0.1:8080"
echo "Metrics: http://127.0.0.1:9090/metrics    Stop: Ctrl-C (drains requests in flight)"
exec "$here/build/proxy/zoogate" serve "$@"
