#!/usr/bin/env bash
# zoogate's main job with built-in defaults: builds zoogate, generates an example checkpoint that
# carries a (harmless) code-execution payload, and sanitizes it with the default policy.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
"$here/scripts/install-deps.sh" run
"$here/scripts/build.sh"
example="$here/example"
/usr/bin/python3 "$here/scripts/make_example.py" "$example"
status=0
"$here/build/proxy/zoogate" sanitize "$example/pytorch_model.bin" -o "$example/pytorch_model.sanitized.bin" || status=$?
echo
echo "input:  $example/pytorch_model.bin"
echo "output: $example/pytorch_model.sanitized.bin (load it with torch.load(path, weights_only=True))"
exit $status
