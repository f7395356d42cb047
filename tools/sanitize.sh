#!/usr/bin/env bash
# Sanitizer run: build the kernels with AddressSanitizer + UndefinedBehaviorSanitizer in a
# scratch copy of the tree (never in the tree's own qatcore/*.so), then run the hardening
# suite on every CPU target and the kernel tests under it.  Any sanitizer report aborts
# the run (halt_on_error), so "passed" means no report.
#
#   bash tools/sanitize.sh              # scratch copy in /tmp/sanbuild (or $SANBUILD)
#   SAN_TESTS="tests/x.py" bash tools/sanitize.sh
set -euo pipefail
src="$(cd "$(dirname "$0")/.." && pwd)"
dst="${SANBUILD:-/tmp/sanbuild}"
mkdir -p "$dst"
# Copy the tracked sources (no .so, no git data); a previous build/ is reused.
(cd "$src" && git ls-files -z --cached --others --exclude-standard) \
  | (cd "$src" && xargs -0 tar cf - --no-recursion) | (cd "$dst" && tar xf -)
rm -f "$dst"/qatcore/_kernels*.so
cd "$dst"
san="-fsanitize=address,undefined -fno-sanitize-recover=undefined -fno-omit-frame-pointer"
CFLAGS="$san" LDFLAGS="$san" QATCORE_TARGETS="${QATCORE_TARGETS:-avx2,avx512}" \
  python setup.py build_ext --inplace -q >/dev/null
export LD_PRELOAD="$(gcc -print-file-name=libasan.so):$(gcc -print-file-name=libubsan.so)"
export ASAN_OPTIONS="detect_leaks=0:abort_on_error=1:halt_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
tests="${SAN_TESTS:-$(ls tests/test_hardening_*.py)}"
status=0
for target in baseline avx2 avx512; do
  if ! QATCORE_TARGET=$target python -c "import qatcore" 2>/dev/null; then
    echo "sanitize: target $target not available here, skipped"; continue
  fi
  echo "sanitize: QATCORE_TARGET=$target"
  QATCORE_TARGET=$target python -m pytest -q -p no:cacheprovider $tests || status=1
done
python -m pytest -q -p no:cacheprovider tests/test_kernels.py || status=1
exit $status
