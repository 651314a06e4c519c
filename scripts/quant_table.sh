#!/usr/bin/env bash
# Makes every model of issue 4's quantization table for SmolLM2-135M-Instruct into a folder, evaluates
# each on the WikiText-2 raw test split (ctx 2048) and prints a markdown table.
#
#   scripts/quant_table.sh [--out DIR] [--device cpu|cuda] [--max-windows N] [--metric kld|ppl]
#                          [--rows REGEX] [--nibble BIN] [--model GGUF] [--threads T]
#
# --max-windows N: only the first N windows (the same N for every row); default 0 = the full test split.
# --metric kld (default): `nibble eval kld --ref base` (perplexity, KL divergence vs base, top-1 agreement;
#   runs the base model too, so twice the time); ppl: `nibble eval ppl` only.
# --device: where every row's evaluation runs (W8A8 with per-token INT8 activations and the KV INT8/INT4
#   caches too: the CUDA backend runs them as the CPU does, with --dtype f16 activations around them).
#   The CUDA backend dequantizes W4/W3 weights to f16, which is the same W4A16 arithmetic.
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
data=../shared/data/text/wikitext-2-raw.test.txt
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
    --data) data=$2; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
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
  "awq_w4g64_vo|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on|"
  "awq_w4g64_duo|quantize|--method awq --wbits 4 --group-size 64 --awq-duo-scaling|"
  "awq_w4g64_float|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-float-inputs|"
  "awq_w4g64_linear|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-loss linear|"
  "awq_w4g64_linear_duo|quantize|--method awq --wbits 4 --group-size 64 --awq-vo on --awq-loss linear --awq-duo-scaling|"
  "gptq_w4g64|quantize|--method gptq --wbits 4 --group-size 64 --act-order|"
  "rtn_w4pc|quantize|--method rtn --wbits 4 --group-size -1|"
  "awq_w4pc|quantize|--method awq --wbits 4 --group-size -1|"
  "awq_w4pc_linear|quantize|--method awq --wbits 4 --group-size -1 --awq-vo on --awq-loss linear|"
  "gptq_w4pc|quantize|--method gptq --wbits 4 --group-size -1 --act-order|"
  "rtn_w3g64|quantize|--method rtn --wbits 3 --group-size 64|"
  "awq_w3g64|quantize|--method awq --wbits 3 --group-size 64|"
  "awq_w3g64_vo|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on|"
  "awq_w3g64_duo|quantize|--method awq --wbits 3 --group-size 64 --awq-duo-scaling|"
  "awq_w3g64_linear|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on --awq-loss linear|"
  "awq_w3g64_linear_duo|quantize|--method awq --wbits 3 --group-size 64 --awq-vo on --awq-loss linear --awq-duo-scaling|"
  "gptq_w3g64|quantize|--method gptq --wbits 3 --group-size 64 --act-order|"
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
    "$nibble" convert -m "$model" -o "$dir" --dtype f16 >&2
  else
    log "quantize $name: $flags"
    # shellcheck disable=SC2086
    "$nibble" quantize -m "$model" -o "$dir" $flags -t "$threads" --report "$out/$name.report.json" >&2
  fi
  echo $((SECONDS - t0)) > "$out/$name.make_seconds"
}

evaluate() {  # name kind flags cpu_only
  local name=$1 kind=$2 flags=$3 cpu_only=$4 res=$out/$1.json
  [ -f "$res" ] && return 0
  local dev=$device m=$out/$name kv=f32
  [ -n "$cpu_only" ] && dev=cpu
  if [ "$kind" = kv ]; then m=$out/base; kv=$flags; fi
  local args=(-m "$m" --data "$data" --ctx 2048 --max-windows "$max_windows" --json -t "$threads" --kv-cache-dtype "$kv")
  [ "$dev" != cpu ] && args+=(--device "$dev")
  log "eval $metric $name (device $dev, kv $kv)"
  if [ "$metric" = kld ]; then
    "$nibble" eval kld "${args[@]}" --ref "$out/base" > "$res.tmp"
  else
    "$nibble" eval ppl "${args[@]}" > "$res.tmp"
  fi
  echo "{\"device\": \"$dev\"}" >> "$res.tmp"
  jq -s 'add' "$res.tmp" > "$res" && rm -f "$res.tmp"
}

# Each row is made and evaluated before the next (base is always made: the others compare with it).
for r in "${rows[@]}"; do
  IFS='|' read -r name kind flags cpu_only <<< "$r"
  [[ "$name" =~ ^($rows_re)$ ]] || [ "$name" = base ] || continue
  make_model "$name" "$kind" "$flags"
  [[ "$name" =~ ^($rows_re)$ ]] && evaluate "$name" "$kind" "$flags" "$cpu_only"
done

# The table: every row with a result in $out.
base_ppl=$(jq -r '.ppl' "$out/base.json" 2>/dev/null || echo "")
echo "| model | how | ppl | dppl vs base | KL vs base | top-1 agree | windows (scored tokens) | device | model.safetensors MB |"
echo "|---|---|---|---|---|---|---|---|---|"
for r in "${rows[@]}"; do
  IFS='|' read -r name kind flags cpu_only <<< "$r"
  res=$out/$name.json
  [ -f "$res" ] || continue
  case "$kind" in
    convert) how='`nibble convert --dtype f16`' ;;
    kv) how="base, \`--kv-cache-dtype $flags\`" ;;
    *) how="\`$flags\`" ;;
  esac
  ppl=$(jq -r '.ppl' "$res")
  kl=$(jq -r 'if .kld == null then "-" else (.kld * 1e4 | round / 1e4 | tostring) end' "$res")
  top1=$(jq -r 'if .top1_agreement == null then "-" else (.top1_agreement * 1e4 | round / 1e4 | tostring) end' "$res")
  win=$(jq -r '"\(.windows) (\(.scored_tokens))"' "$res")
  dev=$(jq -r '.device' "$res")
  size=-
  [ -f "$out/$name/model.safetensors" ] && size=$(awk -v b="$(stat -c %s "$out/$name/model.safetensors")" 'BEGIN{printf "%.1f", b/1e6}')
  if [ -n "$base_ppl" ] && [ "$name" != base ]; then
    d=$(awk -v p="$ppl" -v b="$base_ppl" 'BEGIN{printf "%+.3f (%+.2f%%)", p-b, 100*(p-b)/b}')
  else
    d=0
  fi
  printf '| %s | %s | %.3f | %s | %s | %s | %s | %s | %s |\n' "$name" "$how" "$ppl" "$d" "$kl" "$top1" "$win" "$dev" "$size"
done

# Share of RTN's perplexity increase over base that AWQ and GPTQ recover, per configuration.
echo
echo "| config | RTN dppl | AWQ recovery (default) | AWQ --awq-vo on | AWQ --awq-loss linear | AWQ linear + duo scaling | GPTQ (act-order) recovery |"
echo "|---|---|---|---|---|---|---|"
for cfg in w4g64 w4pc w3g64; do
  [ -f "$out/base.json" ] && [ -f "$out/rtn_$cfg.json" ] || continue
  b=$(jq -r .ppl "$out/base.json"); r=$(jq -r .ppl "$out/rtn_$cfg.json")
  rec() { [ -f "$out/$1.json" ] && awk -v b="$b" -v r="$r" -v m="$(jq -r .ppl "$out/$1.json")" 'BEGIN{printf "%.1f%%", 100*(r-m)/(r-b)}' || echo -; }
  echo "| $cfg | $(awk -v b="$b" -v r="$r" 'BEGIN{printf "%+.3f", r-b}') | $(rec "awq_$cfg") | $(rec "awq_${cfg}_vo") | $(rec "awq_${cfg}_linear") | $(rec "awq_${cfg}_linear_duo") | $(rec "gptq_$cfg") |"
done
