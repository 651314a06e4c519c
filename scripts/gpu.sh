#!/usr/bin/env bash
# Builds the CUDA backend and runs the GPU tests, on the GPU machine, from the repository root.
# Works on a bare machine with CUDA 13 (nvcc), CMake >= 3.25 and g++, and no network: the library
# dependencies it may lack (PCRE2, nlohmann-json, GoogleTest, pkg-config) come from gpu_carry/,
# which scripts/gpu_carry.sh fills on a machine with apt. Device call:
#   command: bash scripts/gpu.sh        carry: ["gpu_carry"]
# Writes logs under $OUT (default build-gpu/logs): env.txt, build.log, device.txt, gpu_tests.log,
# gpu_tests.json, summary.txt; prints a short table last. Exit status 0 only if every step passed.
# Environment:
#   NIBBLE_CUDA_ARCH       CMAKE_CUDA_ARCHITECTURES (default 90a: H100/H200)
#   NIBBLE_GPU_BUILD_DIR   build folder (default build-gpu)
#   NIBBLE_VENDOR          root of carried dependencies (default gpu_carry/root when present; off = system only)
#   NIBBLE_GPU_TEST_FILTER gtest filter for nibble_gpu_tests (default: all)
#   NIBBLE_GPU_JOBS        build jobs (default: nproc)
#   NIBBLE_GPU_SANITIZE    memcheck|racecheck|synccheck|initcheck: also run the tests (same filter)
#                          under compute-sanitizer --tool <it>, log in sanitizer.log (slow: filter them)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${OUT:-build-gpu/logs}
mkdir -p "$out"
out=$(cd "$out" && pwd)
build=${NIBBLE_GPU_BUILD_DIR:-build-gpu}
arch=${NIBBLE_CUDA_ARCH:-90a}
jobs=${NIBBLE_GPU_JOBS:-$(nproc)}
if ! command -v nvcc >/dev/null && [ -x /usr/local/cuda/bin/nvcc ]; then export PATH=/usr/local/cuda/bin:$PATH; fi
# CMake 4 refuses packages' config files that ask for policies older than 3.5; allow them.
export CMAKE_POLICY_VERSION_MINIMUM=${CMAKE_POLICY_VERSION_MINIMUM:-3.5}

declare -A result
order=()
record() {  # record NAME RC
  order+=("$1")
  if [ "$2" -eq 0 ]; then result[$1]=ok; else result[$1]="FAILED (rc $2)"; fi
}

# ---- environment ----
{
  echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)   host: $(hostname)   cores: $(nproc)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1 || echo "nvidia-smi: not available"
  nvcc --version 2>&1 | tail -2
  cmake --version 2>&1 | head -1
  g++ --version 2>&1 | head -1
  command -v ninja >/dev/null && echo "ninja $(ninja --version)" || echo "ninja: not found (using make)"
  command -v pkg-config >/dev/null && echo "pkg-config: $(command -v pkg-config)" || echo "pkg-config: not found"
  [ -f gpu_carry/MANIFEST ] && cat gpu_carry/MANIFEST
} >"$out/env.txt" 2>&1

# ---- dependencies carried in gpu_carry/ ----
vendor=${NIBBLE_VENDOR:-}
if [ -z "$vendor" ] && [ -d gpu_carry/root ]; then vendor=$root/gpu_carry/root; fi
[ "$vendor" = off ] && vendor=""
cmake_args=(-DCMAKE_BUILD_TYPE=Release -DNIBBLE_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES="$arch" -DNIBBLE_TESTS=ON)
if [ -n "$vendor" ]; then
  ma=$vendor/usr/lib/x86_64-linux-gnu
  export PKG_CONFIG_PATH="$ma/pkgconfig${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
  export LD_LIBRARY_PATH="$ma${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  # Named explicitly so that they are used even where CMake does not search lib/x86_64-linux-gnu.
  cmake_args+=(-DGTest_DIR="$ma/cmake/GTest" -Dnlohmann_json_DIR="$vendor/usr/share/cmake/nlohmann_json")
  if ! command -v pkg-config >/dev/null; then cmake_args+=(-DPKG_CONFIG_EXECUTABLE="$vendor/usr/bin/pkgconf"); fi
  echo "dependencies: carried ($vendor)" >>"$out/env.txt"
else
  echo "dependencies: system" >>"$out/env.txt"
fi
if command -v ninja >/dev/null; then
  cmake_args+=(-G Ninja)
  build_cmd=(ninja -C "$build" -j "$jobs" nibble nibble_gpu_tests)
else
  cmake_args+=(-G "Unix Makefiles")
  build_cmd=(make -C "$build" -j "$jobs" nibble nibble_gpu_tests)
fi

# ---- configure + build ----
t0=$(date +%s)
{ echo "== cmake ${cmake_args[*]}"; cmake -S . -B "$build" "${cmake_args[@]}"; } >"$out/build.log" 2>&1
record configure $?
if [ "${result[configure]}" = ok ]; then
  { echo "== ${build_cmd[*]}"; "${build_cmd[@]}"; } >>"$out/build.log" 2>&1
  record build $?
fi
build_s=$(( $(date +%s) - t0 ))

# ---- device info + GPU tests ----
tests_line="not run"
if [ "${result[build]:-}" = ok ]; then
  "$build/nibble" device >"$out/device.txt" 2>&1
  record device $?
  filter=${NIBBLE_GPU_TEST_FILTER:-*}
  t1=$(date +%s)
  "$build/nibble_gpu_tests" --gtest_filter="$filter" --gtest_output="json:$out/gpu_tests.json" \
    >"$out/gpu_tests.log" 2>&1
  record gpu_tests $?
  tests_s=$(( $(date +%s) - t1 ))
  tests_line=$(python3 - "$out/gpu_tests.json" <<'EOF' 2>/dev/null || grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$out/gpu_tests.log" | tr '\n' ' '
import json, sys
d = json.load(open(sys.argv[1]))
rows, tot = [], [0, 0, 0]
for suite in d["testsuites"]:
    c = [0, 0, 0]
    for t in suite["testsuite"]:
        k = 1 if t.get("failures") else 2 if t.get("result") == "SKIPPED" else 0
        c[k] += 1
        tot[k] += 1
    rows.append(f"  {suite['name']:<22} {c[0]:>3} passed {c[1]:>3} failed {c[2]:>3} skipped  {suite.get('time', '')}")
print(f"{sum(tot)} tests: {tot[0]} passed, {tot[1]} failed, {tot[2]} skipped")
print("\n".join(rows))
EOF
)
  if [ -n "${NIBBLE_GPU_SANITIZE:-}" ]; then
    compute-sanitizer --tool "$NIBBLE_GPU_SANITIZE" --error-exitcode 99 "$build/nibble_gpu_tests" \
      --gtest_filter="$filter" >"$out/sanitizer.log" 2>&1
    record "$NIBBLE_GPU_SANITIZE" $?
  fi
fi

# ---- report: failures first (the device reply keeps the end of the output), table last ----
if [ "${result[configure]}" != ok ] || [ "${result[build]:-ok}" != ok ]; then
  echo "== last lines of $out/build.log"
  tail -40 "$out/build.log"
fi
if [ -f "$out/gpu_tests.log" ] && [ "${result[gpu_tests]:-ok}" != ok ]; then
  echo "== failures in $out/gpu_tests.log"
  grep -E -A12 'Failure$|^\[  FAILED  \]' "$out/gpu_tests.log" | head -150
fi
if [ -f "$out/sanitizer.log" ] && [ "${result[${NIBBLE_GPU_SANITIZE:-}]:-ok}" != ok ]; then
  echo "== compute-sanitizer findings in $out/sanitizer.log"
  grep -E '^=========' "$out/sanitizer.log" | head -60
fi
{
  echo "== nibble GPU run: $(head -1 "$out/env.txt")"
  [ -f "$out/device.txt" ] && head -3 "$out/device.txt"
  printf '%-12s %s\n' step result
  for s in "${order[@]}"; do printf '%-12s %s\n' "$s" "${result[$s]}"; done
  printf '%-12s %s\n' "build time" "${build_s}s (arch $arch, $jobs jobs)"
  printf '%-12s %s\n' "gpu tests" "$(head -1 <<<"$tests_line")${tests_s:+ in ${tests_s}s}"
  tail -n +2 <<<"$tests_line"
  printf '%-12s %s\n' "logs" "$out"
} | tee "$out/summary.txt"
for s in "${order[@]}"; do [ "${result[$s]}" = ok ] || exit 1; done
exit 0
