#!/usr/bin/env bash
# Makes every model of issue 4's quantization table for SmolLM2-135M-Instruct into a folder, evaluates
# each on the WikiText-2 raw test split (ctx 2048) and prints a markdown table.
#
#   scripts/quant_table.sh [--out DIR] [--device cpu|cuda] [--dtype f16|bf16|f32] [--max-windows N]
#                          [--metric kld|ppl] [--rows REGEX] [--nibble BIN] [--model GGUF] [--threads T]
#                          [--jobs J] [--calib FILE] [--data FILE] [--batch-tokens B]
#
# --max-windows N: only the first N windows (the same N for every row); default 0 = the full test split.
# --metric kld (default): `nibble eval kld --ref base` (perplexity, KL divergence vs base, top-1 agreement;
#   runs the base model too, so twice the time); ppl: `nibble eval ppl` only.
# --device: where every row's evaluation runs (W8A8 with per-token INT8 activations and the KV INT8/INT4
#   caches too: the CUDA backend runs them as the CPU does, with --dtype f16 activations around them).
#   The CUDA backend dequantizes W4/W3 weights to --dtype (default f32 there), the same W4A16 arithmetic.
#   On a device `eval kld` runs the base model there too and the logits never leave it.
# --jobs J: make up to J models at once (each quantizing with --threads T), then evaluate row by row.
# --calib FILE: calibration text for AWQ/GPTQ/SmoothQuant (default: nibble quantize's, the WikiText-2
#   validation split beside the checkout). --data: the evaluation text (default the test split).
# --batch-tokens B: `eval --batch-tokens` (a window's forward chunk; same results, default 256).
# Needs python3 (the table); no jq.
# --rows REGEX: only the rows whose name matches (e.g. 'base|kv_'; the base model is always made);
#   the table lists every row that has a result in DIR. A model that exists in DIR is not made again, a result that exists is not recomputed
#   (delete DIR/NAME or DIR/NAME.json to redo one).
set -euo pipefail
cd "$(dirname "$0")/.."

out=quant_table
device=cpu
max_windows=0
metric=kld
rows_re='.*'
nibble=build/nibble
model=models/SmolLM2-135M-Instruct.Q4_1.gguf
threads=2
jobs=1
dtype=f32
calib=
data=../shared/data/text/wikitext-2-raw.test.txt
batch_tokens=256
while [ $# -gt 0 ]; do
  case "$1" in
    --out) out=$2; shift 2 ;;
    --device) device=$2; shift 2 ;;
    --max-windows) max_windows=$2; shift 2 ;;
    --metric) metric=$2; shift 2 ;;
    --rows) rows_re=$2; shift 2 ;;
    --nibble) nibble=$2; shift 2 ;;
    --model) model=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    --jobs) jobs=$2; shift 2 ;;
    --dtype) dtype=$2; shift 2 ;;
    --calib) calib=$2; shift 2 ;;
    --data) data=$2; shift 2 ;;
    --batch-tokens) batch_tokens=$2; shift 2 ;;
    -h|--help) sed -n '2,26p' "$0"; exit 0 ;;
    *) echo "unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$metric" in kld|ppl) ;; *) echo "--metric must be kld or ppl" >&2; exit 2 ;; esac
mkdir -p "$out"

# name | how it is made | quantize flags (or the KV cache dtype) | runs on the CPU whatever --device says
rows=(
  "base|convert||"
  "rtn_w4g64|quantize|--method rtn --wbits 4 --group-size 64|"
  "awq_w4g64|quantize|--method awq --wbits 4 --group-size 64|"
  "awq_w4g64_c128|quantize|--method awq --wbits 4 --group-size 64 --calib-samples 128|"
  "awq_w4g64_ts|quantize|--method awq --wbits 4 --group-size 64 --awq-clip two-sided|"
  "awq_w4g64_vo|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on|"
  "awq_w4g64_duo|quantize|--method awq --wbits 4 --group-size 64 --awq-duo-scaling|"
  "awq_w4g64_float|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-float-inputs|"
  "awq_w4g64_linear|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-loss linear|"
  "awq_w4g64_linear_duo|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-loss linear --awq-duo-scaling|"
  "gptq_w4g64|quantize|--method gptq --wbits 4 --group-size 64 --act-order|"
  "gptq_w4g64_mse|quantize|--method gptq --wbits 4 --group-size 64 --act-order --gptq-mse|"
  "rtn_w4pc|quantize|--method rtn --wbits 4 --group-size -1|"
  "awq_w4pc|quantize|--method awq --wbits 4 --group-size -1|"
  "awq_w4pc_c128|quantize|--method awq --wbits 4 --group-size -1 --calib-samples 128|"
  "awq_w4pc_linear|quantize|--method awq --wbits 4 --group-size -1 --awq-vo on --awq-loss linear|"
  "gptq_w4pc|quantize|--method gptq --wbits 4 --group-size -1 --act-order|"
  "gptq_w4pc_mse|quantize|--method gptq --wbits 4 --group-size -1 --act-order --gptq-mse|"
  "rtn_w3g64|quantize|--method rtn --wbits 3 --group-size 64|"
  "awq_w3g64|quantize|--method awq --wbits 3 --group-size 64|"
  "awq_w3g64_c128|quantize|--method awq --wbits 3 --group-size 64 --calib-samples 128|"
  "awq_w3g64_ts|quantize|--method awq --wbits 3 --group-size 64 --awq-clip two-sided|"
  "awq_w3g64_vo|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on|"
  "awq_w3g64_duo|quantize|--method awq --wbits 3 --group-size 64 --awq-duo-scaling|"
  "awq_w3g64_linear|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on --awq-loss linear|"
  "awq_w3g64_linear_duo|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on --awq-loss linear --awq-duo-scaling|"
  "gptq_w3g64|quantize|--method gptq --wbits 3 --group-size 64 --act-order|"
  "gptq_w3g64_mse|quantize|--method gptq --wbits 3 --group-size 64 --act-order --gptq-mse|"
  "naive_w8a8|quantize|--method rtn --wbits 8 --group-size -1 --sym --act-int8|"
  "sq_a0.5|quantize|--method smoothquant --alpha 0.5 --calib-samples 16|"
  "sq_a0.8|quantize|--method smoothquant --alpha 0.8 --calib-samples 16|"
  "sq_search|quantize|--method smoothquant --alpha search --calib-samples 16|"
  "kv_int8|kv|int8|"
  "kv_int4|kv|int4|"
)

log() { echo "[$(date -u +%H:%M:%S)] $*" >&2; }

make_model() {  # name kind flags
  local name=$1 kind=$2 flags=$3 dir=$out/$1
  [ "$kind" = kv ] && return 0
  if [ -f "$dir/model.safetensors" ]; then return 0; fi
  local t0=$SECONDS
  if [ "$kind" = convert ]; then
    log "convert $name"
    "$nibble" convert -m "$model" -o "$dir" --dtype f16 > "$out/$name.make.log" 2>&1 || { log "convert FAILED"; return 1; }
  else
    log "quantize $name: $flags"
    # shellcheck disable=SC2086
    local extra=()
    [ -n "$calib" ] && extra=(--calib "$calib")
    "$nibble" quantize -m "$model" -o "$dir" $flags "${extra[@]}" -t "$threads" --report "$out/$name.report.json" \
      > "$out/$name.make.log" 2>&1 || { log "quantize $name FAILED (see $out/$name.make.log)"; return 1; }
  fi
  echo $((SECONDS - t0)) > "$out/$name.make_seconds"
}

evaluate() {  # name kind flags cpu_only
  local name=$1 kind=$2 flags=$3 cpu_only=$4 res=$out/$1.json
  [ -f "$res" ] && return 0
  local dev=$device m=$out/$name kv=f32
  [ -n "$cpu_only" ] && dev=cpu
  if [ "$kind" = kv ]; then m=$out/base; kv=$flags; fi
  local args=(-m "$m" --data "$data" --ctx 2048 --max-windows "$max_windows" --json -t "$threads" --kv-cache-dtype "$kv"
              --batch-tokens "$batch_tokens")
  [ "$dev" != cpu ] && args+=(--device "$dev" --dtype "$dtype")
  log "eval $metric $name (device $dev, kv $kv)"
  if [ "$metric" = kld ]; then
    "$nibble" eval kld "${args[@]}" --ref "$out/base" > "$res.tmp"
  else
    "$nibble" eval ppl "${args[@]}" > "$res.tmp"
  fi
  [ "$dev" != cpu ] && dev="$dev $dtype"
  python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["device"]=sys.argv[2]; json.dump(d, open(sys.argv[3], "w"))' \
    "$res.tmp" "$dev" "$res" && rm -f "$res.tmp"
}

selected() { [[ "$1" =~ ^($rows_re)$ ]]; }

# The models first (base always: the others compare with it), up to --jobs at a time, then each row's
# evaluation in table order.
make_model base convert ""
pids=()
for r in "${rows[@]}"; do
  IFS='|' read -r name kind flags cpu_only <<< "$r"
  selected "$name" && [ "$name" != base ] || continue
  while [ "$(jobs -rp | wc -l)" -ge "$jobs" ]; do sleep 1; done
  make_model "$name" "$kind" "$flags" &
  pids+=($!)
done
for p in "${pids[@]}"; do wait "$p" || true; done
for r in "${rows[@]}"; do
  IFS='|' read -r name kind flags cpu_only <<< "$r"
  selected "$name" || continue
  if [ "$kind" != kv ] && [ ! -f "$out/$name/model.safetensors" ]; then log "no model for $name: skipped"; continue; fi
  evaluate "$name" "$kind" "$flags" "$cpu_only" || log "eval $name FAILED"
done

# The tables: every row with a result in $out.
python3 - "$out" "${rows[@]}" <<'PY'
import json, os, sys
out = sys.argv[1]
rows = [r.split("|") for r in sys.argv[2:]]
def load(name):
    try:
        return json.load(open(os.path.join(out, name + ".json")))
    except (OSError, ValueError):
        return None
base = load("base")
print("| model | how | ppl | dppl vs base | KL vs base | top-1 agree | windows (scored tokens) | device | model.safetensors MB |")
print("|---|---|---|---|---|---|---|---|---|")
for name, kind, flags, _ in rows:
    r = load(name)
    if r is None:
        continue
    how = {"convert": "`nibble convert --dtype f16`", "kv": f"base, `--kv-cache-dtype {flags}`"}.get(kind, f"`{flags}`")
    d = "0"
    b = base["ppl"] if base is not None else r.get("ref_ppl")  # kld rows carry the base's perplexity
    if b is not None and name != "base":
        d = f"{r['ppl'] - b:+.3f} ({100 * (r['ppl'] - b) / b:+.2f}%)"
    kl = "-" if r.get("kld") is None else f"{r['kld']:.4g}"
    top1 = "-" if r.get("top1_agreement") is None else f"{r['top1_agreement']:.4f}"
    f = os.path.join(out, name, "model.safetensors")
    size = f"{os.path.getsize(f) / 1e6:.1f}" if os.path.exists(f) else "-"
    print(f"| {name} | {how} | {r['ppl']:.3f} | {d} | {kl} | {top1} | {r['windows']} ({r['scored_tokens']}) | {r['device']} | {size} |")

# Share of RTN's perplexity increase over base that AWQ and GPTQ recover, per configuration.
print()
print("| config | RTN dppl | AWQ recovery (default) | AWQ 128 samples | AWQ --awq-clip two-sided | AWQ --awq-vo on | AWQ --awq-loss linear | AWQ linear + duo scaling | GPTQ (act-order) recovery | GPTQ --gptq-mse |")
print("|---|---|---|---|---|---|---|---|---|---|")
for cfg in ("w4g64", "w4pc", "w3g64"):
    rtn = load("rtn_" + cfg)
    if base is None or rtn is None:
        continue
    b, q = base["ppl"], rtn["ppl"]
    def rec(name):
        m = load(name)
        return "-" if m is None else f"{100 * (q - m['ppl']) / (q - b):.1f}%"
    print(f"| {cfg} | {q - b:+.3f} | {rec('awq_' + cfg)} | {rec('awq_' + cfg + '_c128')} | {rec('awq_' + cfg + '_ts')} | {rec('awq_' + cfg + '_vo')} | "
          f"{rec('awq_' + cfg + '_linear')} | {rec('awq_' + cfg + '_linear_duo')} | {rec('gptq_' + cfg)} | {rec('gptq_' + cfg + '_mse')} |")
PY
