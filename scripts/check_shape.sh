#!/usr/bin/env bash
# The shape of the production code (daemon/, libclient/, tools/; tests and
# benches aside): no file over 700 lines, no function over 80 lines.
# Functions are measured by clang-tidy's readability-function-size on the
# build's compile_commands.json. Usage: scripts/check_shape.sh BUILD_DIR
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: check_shape.sh BUILD_DIR}
max_file_lines=700
max_function_lines=80

status=0
while IFS= read -r f; do
  n=$(wc -l < "$f")
  if [ "$n" -gt "$max_file_lines" ]; then
    echo "$f: $n lines, over $max_file_lines: split it by concern"
    status=1
  fi
done < <(git ls-files 'daemon/*' 'libclient/*' 'tools/*' | grep -E '\.(c|h|cpp|hpp)$')

sources=$(git ls-files 'daemon/*.cpp' 'libclient/*.cpp' 'tools/*.cpp')
config="{Checks: '-*,readability-function-size',
  HeaderFilterRegex: '/(daemon|libclient|tools)/',
  CheckOptions: [{key: readability-function-size.LineThreshold, value: $max_function_lines}]}"
# A file clang-tidy cannot compile is measured by nobody: that fails too.
out=$(mktemp)
trap 'rm -f "$out"' EXIT
if ! printf '%s\n' $sources |
  xargs -P "${KVS_JOBS:-2}" -n 8 clang-tidy -p "$build" --quiet --config="$config" >"$out" 2>&1; then
  if grep -E '(^|: )error:' "$out" | grep -v 'warnings treated as errors' >/dev/null; then
    grep -E '(^|: )error:' "$out" | sort -u | head -20
    echo "clang-tidy could not read the files above: their functions were not measured"
    status=1
  fi
fi
report=$(grep -E 'warning: function .* exceeds' "$out" | sort -u || true)
if [ -n "$report" ]; then
  echo "$report" | sed -E "s/ exceeds recommended.*/ is over $max_function_lines lines/"
  status=1
fi
[ "$status" = 0 ] && echo "shape: files <= $max_file_lines lines, functions <= $max_function_lines lines"
exit "$status"
