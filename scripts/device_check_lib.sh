# The stages of scripts/device_check.sh (sourced by it; reads its variables: mode, ep,
# parts, full, work, out, root, new_tokens, batch_cap, replay, and sets bin, tok, meta).
# shellcheck shell=bash

# The binary with the CUDA / cuDNN folders on its own library path only (the binary also
# preloads them itself); nothing else in the check sees them.
run_bin() { LD_LIBRARY_PATH="${cuda_ld:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$bin" "$@"; }

# zstd from the machine, else the one carried in the parts folder with its libraries
# (on its own library path only).
zst() {
  if command -v zstd >/dev/null; then zstd "$@"
  else LD_LIBRARY_PATH="$parts" "$parts/zstd" "$@"; fi
}

# Every file SHA256SUMS lists must be in $parts: a missing one means the machine was
# given back between the transfer calls (/tmp is gone with it).
check_parts() {
  local list="$parts/SHA256SUMS"
  [ "$full" = 1 ] && list="$parts/SHA256SUMS.full"
  if [ ! -f "$list" ]; then
    echo "COLD: $list is missing: the machine went cold or the last call did not carry it; start the plan over from call 1"
    return 3
  fi
  local missing=() name
  while read -r _ name; do [ -f "$parts/$name" ] || missing+=("$name"); done < "$list"
  echo "  parts held in $parts: $(ls "$parts" | tr '\n' ' ')"
  if [ "${#missing[@]}" -gt 0 ]; then
    echo "COLD: parts missing from $parts: ${missing[*]}: the machine was given back between calls; start the plan over from call 1"
    return 3
  fi
  (cd "$parts" && sha256sum --quiet -c "$list") || { echo "  a part's sha256 differs: send it again"; return 1; }
  echo "  every part's sha256 matches $(basename "$list")"
}

# The CUDA provider reassembled from its parts, its sha256 checked, then the other files.
assemble() {
  check_parts || return
  local lib=cuda dir="$work/ort"
  [ "$full" = 1 ] && lib=cudafull
  mkdir -p "$dir" "$work/carry"
  cat "$parts/$lib.zst.part"* > "$work/$lib.zst"
  (cd "$work" && grep " $lib.zst\$" "$parts/ASSEMBLED.sha256" | sha256sum --quiet -c -) \
    || { echo "  the reassembled $lib.zst does not match its sha256"; return 1; }
  zst -d -q -f "$work/$lib.zst" -o "$dir/libonnxruntime_providers_cuda.so" || return
  rm -f "$work/$lib.zst"
  zst -d -q -f "$parts/libort.zst" -o "$dir/libonnxruntime.so.1.31.1" || return
  cp "$parts"/libonnxruntime_providers_shared.so "$parts"/libonnxruntime_providers_tensorrt.so "$dir/"
  zst -d -q -f "$parts/vlguard-ort.zst" -o "$work/carry/vlguard-ort" && chmod +x "$work/carry/vlguard-ort"
  cp "$parts/tokenizer.model" "$parts/test.json" "$work/carry/"
  echo "  reassembled $lib.zst (sha256 ok) -> $dir ($(du -sm "$dir" | cut -f1) MiB)"
}

setup_libraries() {
  if [ -n "$parts" ]; then
    assemble; local rc=$?
    [ "$rc" = 3 ] && { summarize; exit 3; }
    [ "$rc" = 0 ] || return "$rc"
    bin="$work/carry/vlguard-ort" tok="$work/carry/tokenizer.model" meta="$work/carry/test.json"
    export ORT_DYLIB_PATH="$work/ort/libonnxruntime.so.1.31.1"
  elif [ "$mode" = gpu ]; then
    echo "  --parts DIR is required on the GPU machine"; return 2
  else
    echo "  no --parts: the binary and ONNX Runtime of this checkout (target/release, .ort)"
    bin="$root/target/release/vlguard-ort" tok="$root/tests/data/llama2-tokenizer/tokenizer.model"
    [ -d "$root/.ort" ] || SETUP_SKIP_BUILD=1 "$root/scripts/setup.sh" > "$work/logs/setup.log" 2>&1
    [ -x "$bin" ] || (cd "$root" && cargo build --release --locked -q)
    meta="$root/data/VLGuard/test.json"
    # A clone without the gated dataset: the mini set's prompts stand in for the real ones.
    [ -f "$meta" ] || { meta="$root/data/mini/test.json"; echo "  no data/VLGuard/test.json: the mini set's prompts instead"; }
  fi
  [ -x "$bin" ] || { echo "  missing $bin"; bin=""; return 1; }
  [ -f "$meta" ] || { echo "  missing $meta (the real test.json: vlguard-ort fetch dataset)"; return 1; }
  if [ "$mode" = gpu ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    local site
    site=$(python3 -c 'import nvidia, os; print(os.path.dirname(list(nvidia.__path__)[0]))' 2>/dev/null)
    for d in "$site/nvidia/cu13/lib" "$site/nvidia/cuda_runtime/lib"; do
      [ -e "$d/libcudart.so.13" ] && export VLGUARD_CUDA_LIB_DIR="$d"
    done
    [ -d "$site/nvidia/cudnn/lib" ] && export VLGUARD_CUDNN_LIB_DIR="$site/nvidia/cudnn/lib"
    cuda_ld="${VLGUARD_CUDA_LIB_DIR:-}:${VLGUARD_CUDNN_LIB_DIR:-}"
    echo "  CUDA libs: ${VLGUARD_CUDA_LIB_DIR:-not found}  cuDNN: ${VLGUARD_CUDNN_LIB_DIR:-not found}"
  fi
  echo "  binary: $bin ($("$bin" --version 2>/dev/null))"
}

# Peak memory of one run: GPU memory sampled by nvidia-smi, else the manifest's peak RSS.
mem_start() {
  [ "$mode" = gpu ] || return 0
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits -lms 200 > "$1" 2>/dev/null &
  mem_pid=$!
}
mem_stop() { # log -> "peak GPU memory N MiB" / nothing
  [ "$mode" = gpu ] || return 0
  kill "$mem_pid" 2>/dev/null; wait "$mem_pid" 2>/dev/null
  echo "peak GPU memory $(sort -n "$1" | tail -n 1) MiB"
}

# One line per run manifest, and the sum over several (the whole set: one per subset).
summary() {
  python3 - "$@" <<'PY'
import json, sys
answers = tokens = seconds = 0
for path in sys.argv[1:]:
    m = json.load(open(path)); t = m["timings"]
    answers += m["n_generated"]; tokens += t["new_tokens"]; seconds += t["total_s"]
    print(f'  {m["subset"]} batch={m["batch_size"]} {m.get("batching", "static")} samples={m["n_generated"]} '
          f'new_tokens={t["new_tokens"]} tok/s={t["tokens_per_s"]:.1f} preprocess={t["preprocess_s"]:.2f}s '
          f'vision={t["vision_s"]:.2f}s prefill={t["prefill_s"]:.2f}s decode={t["decode_s"]:.2f}s '
          f'total={t["total_s"]:.2f}s load={t["session_load_s"]:.1f}s loop_overhead={t["loop_overhead_pct"]:.2f}% '
          f'steps={t.get("decode_steps")} occupancy={t.get("step_occupancy_pct") or 0:.1f}% '
          f'peak_rss={m.get("peak_rss_mb") or 0:.0f}MB providers={sorted(set(m["execution_providers"].values()))}')
if len(sys.argv) > 2:
    print(f'  all subsets: {answers} answers, {tokens} new tokens in {seconds:.1f} s ({tokens / max(seconds, 1e-9):.1f} tok/s)')
PY
}

# Golden agreement of a results folder with the reference answers: "N/30" and each
# departure with the first differing character and the run's smallest logit margin.
agree() {
  python3 - "$1" "$root/tests/data/golden-dev/reference" <<'PY'
import json, os, sys
same = total = 0
diffs = []
for s in ["unsafes", "safe_unsafes", "safe_safes"]:
    ours = json.load(open(os.path.join(sys.argv[1], s, "dev.json")))
    ref = json.load(open(os.path.join(sys.argv[2], s + ".json")))
    margins = {}
    for line in open(os.path.join(sys.argv[1], s, "dev.journal.jsonl")).read().splitlines()[1:]:
        e = json.loads(line); margins[e["image"]] = e.get("min_margin")
    for k, v in ref.items():
        total += 1; same += ours.get(k) == v
        if ours.get(k) != v:
            a, b = ours.get(k) or "", v
            n = next((i for i in range(min(len(a), len(b))) if a[i] != b[i]), min(len(a), len(b)))
            diffs.append(f"{s}/{k}: first difference at char {n}, smallest logit margin {margins.get(k)}")
print(f"agreement with the reference answers: {same}/{total}")
for d in diffs: print("   ", d)
PY
}

golden() { # fp32-plain | fp16-plain | fp16-fused [ep]
  local variant=$1 use_ep=${2:-$ep} dtype=${1%-*} flavour=${1#*-}
  local model="$work/dev-$variant" res="$work/results/dev-$variant-$use_ep" log="$work/logs/golden-$variant-$use_ep.log"
  if [ ! -f "$model/manifest.json" ]; then
    run_bin export --checkpoint models/demo-src/llava-v1.5-tiny --vision-tower models/demo-src/clip-vit-tiny-patch14-336 \
      --out "$model" --dtype "$dtype" --decoder "$flavour" --force > "$work/logs/export-dev-$variant.log" 2>&1 \
      || { tail -n 3 "$work/logs/export-dev-$variant.log"; return 1; }
  fi
  local extra=()
  [ "$use_ep" = tensorrt ] && extra=(--trt-cache "$work/trt-cache")
  run_bin run --model "$model" --engine dev --subset all --meta data/mini/test.json --images data/mini/test \
    --out "$res" --ep "$use_ep" --batch-size 8 --fresh "${replay[@]}" "${extra[@]}" > "$log" 2>&1
  local rc=$?
  [ "$rc" = 0 ] || { tail -n 4 "$log"; return "$rc"; }
  local line; line=$(agree "$res") || return 1
  echo "  $line"
  echo "$variant ($use_ep): ${line%%$'\n'*}" | sed 's/agreement with the reference answers: //' >> "$work/agreement.txt"
  summary "$res/unsafes/dev.run.json"
}

# The 7B's configs, and the real test.json's prompts with the mini set's photos standing in
# for its images. On the rehearsal, the 7B's structure at a size two shared CPU cores run
# in seconds: the same vocabulary, head size (128), MHA, MLP and vision/projector layout,
# with 2 decoder layers, hidden 1024 (8 heads), MLP 2752, and a 2-layer vision tower on
# 112-pixel images (64 image tokens instead of 576).
prepare_7b_inputs() {
  local ck="$work/7b-src"
  [ -f "$ck/llava/config.json" ] && return 0
  mkdir -p "$ck/llava" "$ck/clip"
  python3 - "$root/models/bench-7b" "$ck" "$mode" <<'PY' || return
import json, os, sys
src, dst, mode = sys.argv[1:]
llava = json.load(open(os.path.join(src, "config.json")))
clip = json.load(open(os.path.join(src, "clip", "config.json")))
if mode == "rehearsal":
    llava.update(num_hidden_layers=2, hidden_size=1024, intermediate_size=2752,
                 num_attention_heads=8, num_key_value_heads=8)
    clip.update(num_hidden_layers=2, image_size=112)
    json.dump({"crop_size": 112, "size": {"shortest_edge": 112}},
              open(os.path.join(dst, "clip", "preprocessor_config.json"), "w"))
json.dump(llava, open(os.path.join(dst, "llava", "config.json"), "w"))
json.dump(clip, open(os.path.join(dst, "clip", "config.json"), "w"))
PY
  cp "$tok" "$ck/llava/tokenizer.model"
  python3 - "$meta" "$root/data/mini/test" "$work/vlguard" <<'PY'
import json, os, shutil, sys
meta, src, dst = sys.argv[1:]
entries = json.load(open(meta)); imgs = sorted(os.path.join(d, f) for d, _, fs in os.walk(src) for f in fs)
for i, e in enumerate(entries):
    p = os.path.join(dst, "test", e["image"]); os.makedirs(os.path.dirname(p), exist_ok=True)
    if not os.path.exists(p): shutil.copy(imgs[i % len(imgs)], p)
shutil.copy(meta, os.path.join(dst, "test.json"))
PY
}

export_7b() { # fused | plain
  prepare_7b_inputs || return
  local ck="$work/7b-src" t0; t0=$(date +%s)
  run_bin export --checkpoint "$ck/llava" --vision-tower "$ck/clip" --out "$work/7b-$1" --dtype fp16 \
    --decoder "$1" --random-weights --force > "$work/logs/7b-export-$1.log" 2>&1 \
    || { tail -n 3 "$work/logs/7b-export-$1.log"; return 1; }
  echo "  export ($1 decoder) took $(( $(date +%s) - t0 )) s; $(du -sh "$work/7b-$1" | cut -f1) on disk"
}

# The largest batch whose fused cache fits beside the weights: device memory (GPU: total
# from nvidia-smi; rehearsal: MemTotal) x 0.9 - weights - 6 GiB of activations, over one
# row's cache (2 x layers x kv heads x head dim x (image tokens + 256 text + new tokens) x
# 2 bytes), a multiple of 8, at most batch_cap.
largest_batch() {
  local total weights
  if [ "$mode" = gpu ]; then total=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -n 1)
  else total=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 )); fi
  weights=$(du -sm "$work/7b-fused" | cut -f1)
  python3 - "$work/7b-fused/manifest.json" "$total" "$weights" "$new_tokens" "$batch_cap" <<'PY'
import json, sys
m = json.load(open(sys.argv[1])); total, weights, new, cap = map(int, sys.argv[2:])
d = m["decoder"]
row = 2 * d["num_layers"] * d["num_kv_heads"] * d["head_dim"] * (m["vision"]["num_tokens"] + 256 + new) * 2 / 2**20
rows = int((total * 0.9 - weights - 6144) / row) // 8 * 8
print(max(1, min(cap, rows)))
PY
}

# run_7b FLAVOUR BATCH|max BATCHING LIMIT|all RESERVE_S: one run on the random-weight 7B,
# cut RESERVE_S before the budget's end (a cut run still reports the answers it journaled).
run_7b() {
  local flavour=$1 bs=$2 batching=$3 limit=$4 reserve=$5
  [ -f "$work/7b-$flavour/manifest.json" ] || { echo "  no $flavour export to run"; return 1; }
  [ "$bs" = max ] && { bs=$(largest_batch) || return 1; echo "  largest batch that fits: $bs"; }
  [ "$bs" -gt "$batch_cap" ] && bs=$batch_cap
  local name="$flavour-b$2-$batching-$limit" sel=(--subset unsafes --limit "$limit")
  if [ "$limit" = all ]; then sel=(--subset all); [ "$mode" = rehearsal ] && sel+=(--limit 2); fi
  [ "$mode" = rehearsal ] && [ "$limit" != all ] && sel=(--subset unsafes --limit "$(( bs + bs / 2 ))")
  local cap=$(( $(left) - reserve ))
  [ "$cap" -gt 240 ] && cap=240
  [ "$cap" -lt 30 ] && { echo "  only $cap s left for it"; return 1; }
  local log="$work/logs/7b-$name.log" res="$work/results/7b-$name" t0 rc
  t0=$(date +%s); mem_start "$work/logs/mem-$name.log"
  LD_LIBRARY_PATH="${cuda_ld:-}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" timeout "$cap" "$bin" run --model "$work/7b-$flavour" --engine "$name" "${sel[@]}" \
    --meta "$work/vlguard/test.json" --images "$work/vlguard/test" --out "$res" --ep "$ep" \
    --batch-size "$bs" --batching "$batching" --max-new-tokens "$new_tokens" --fresh "${replay[@]}" > "$log" 2>&1
  rc=$?
  echo "  $name at batch $bs: exit $rc, wall $(( $(date +%s) - t0 )) s (cap $cap s) $(mem_stop "$work/logs/mem-$name.log")"
  local manifests; manifests=$(ls "$res"/*/"$name".run.json 2>/dev/null)
  # shellcheck disable=SC2086
  [ -n "$manifests" ] && summary $manifests
  if [ "$rc" = 124 ]; then
    echo "  cut at $cap s: $(cat "$res"/*/"$name".journal.jsonl 2>/dev/null | grep -c '"image"') answers journaled"
  fi
  [ "$rc" = 0 ] || tail -n 3 "$log"
  return "$rc"
}

# TensorRT needs libnvinfer.so.10 on the machine: the check carries ONNX Runtime's
# TensorRT provider library (1 MB) but not TensorRT itself (not on PyPI, ~1 GB).
trt_found() {
  [ -n "${VLGUARD_TRT_LIB_DIR:-}" ] && [ -e "$VLGUARD_TRT_LIB_DIR/libnvinfer.so.10" ] && return 0
  ldconfig -p 2>/dev/null | grep -q 'libnvinfer.so.10 '
}

# TensorRT runs fp16 models only (fp32 would get TF32, see README): the golden fp16 plain
# bundle with TensorRT then CUDA registered.
tensorrt_step() { golden fp16-plain tensorrt; }

summarize() {
  {
    echo "== summary ($mode, ep $ep): $(( $(date +%s) - start )) s"
    column -t -s $'\t' "$out/stages.tsv" 2>/dev/null || cat "$out/stages.tsv"
    echo "golden agreement per flavour (ep $ep):"
    sed 's/^/  /' "$work/agreement.txt" 2>/dev/null || echo "  none"
    awk -F'\t' 'NR > 1 && $2 !~ /^not run/ { s += $4 } END {
      printf "GPU time the stages take by their estimates: %d s of the 600 s command limit (margin %d s); each stage past the budget check runs only if its estimate fits the time left\n", s, 600 - s }' "$out/stages.tsv"
    if [ "${#failed[@]}" -gt 0 ]; then echo "FAILED stages: ${failed[*]}"; else echo "every stage passed"; fi
  } | tee "$out/summary.txt"
  tar czf "$out/details.tar.gz" -C "$work" logs $(cd "$work" && ls -d results agreement.txt 2>/dev/null)
}
