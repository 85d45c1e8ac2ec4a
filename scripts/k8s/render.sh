#!/usr/bin/env bash
# Writes the Kubernetes recipe for one evaluation into DIR, with the shard count N in one
# place (this command's argument) and the run flags passed to every shard as given:
#
#   scripts/k8s/render.sh DIR N IMAGE MODEL [run flags ...]
#   e.g. scripts/k8s/render.sh k8s-run 8 REGISTRY/vlguard-ort:0.1.0 llava15-7b-mixed \
#          --subset all --batch-size 64
#
# IMAGE: built from scripts/k8s/Dockerfile. MODEL: a `vlguard-ort prepare` name (its
# folder on the models volume and the engine name, unless the flags give --engine).
# --ep cuda is added when the flags have no --ep, --subset all when they have no --subset;
# --model, --shard, --out, --meta and --images are set here (the volumes) and refused.
# DIR gets volumes.yaml (the three claims), prepare.yaml (fetch + export + a one-sample
# check, run once) and eval.yaml (the Indexed Job of N pods, the merge Job, its Role):
#
#   kubectl apply -f DIR/volumes.yaml -f DIR/prepare.yaml
#   kubectl wait --for=condition=complete --timeout=6h job/vlguard-prepare
#   kubectl apply -f DIR/eval.yaml
#   kubectl wait --for=condition=complete --timeout=48h job/vlguard-merge
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
usage="usage: render.sh DIR N IMAGE MODEL [run flags ...]"
(($# >= 4)) || { echo "$usage" >&2; exit 2; }
dir=$1 n=$2 image=$3 model=$4
shift 4
die() { echo "render.sh: $*" >&2; exit 2; }
[[ "$n" =~ ^[1-9][0-9]*$ ]] || die "N must be a positive whole number, got \`$n\`"
[[ "$image" =~ ^[^[:space:]\"\'\\]+$ ]] || die "IMAGE must be an image reference, got \`$image\`"
[[ "$model" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "MODEL must be a plain folder name, got \`$model\`"
# shellcheck source=../run_flags.sh
source "$here/../run_flags.sh"
engine=$model
run_flags=("$@")
parse_run_flags render.sh --model --shard --out --meta --images
[[ " ${run_flags[*]} " == *" --ep "* || " ${run_flags[*]} " == *" --ep="* ]] || run_flags+=(--ep cuda)
[[ "$engine" =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]] || die "--engine must be a plain name, got \`$engine\`"
# The merge needs --subset and --limit; --meta and --out are the volumes'.
merge_args=()
for flag in "${merge_flags[@]}"; do
  case "$flag" in --meta* | --out*) ;; *) merge_args+=("$flag") ;; esac
done

# `, "a", "b"`: JSON strings, which YAML reads as they are, after the template's list.
json_tail() {
  local arg
  for arg in "$@"; do
    arg=${arg//\\/\\\\}
    printf ', "%s"' "${arg//\"/\\\"}"
  done
}
shopt -u patsub_replacement 2>/dev/null || true
render() { # template -> output
  local text
  text=$(<"$here/$1")
  text=${text//__SHARDS__/$n}
  text=${text//__IMAGE__/$image}
  text=${text//__MODEL__/$model}
  text=${text//__ENGINE__/$engine}
  text=${text//__RUN_ARGS__/$(json_tail "${run_flags[@]}")}
  text=${text//__MERGE_ARGS__/$(json_tail "${merge_args[@]}")}
  printf '%s\n' "$text" >"$dir/$2"
}
mkdir -p "$dir"
cp "$here/volumes.yaml" "$dir/volumes.yaml"
render prepare.yaml.in prepare.yaml
render eval.yaml.in eval.yaml
echo "wrote $dir/volumes.yaml, $dir/prepare.yaml, $dir/eval.yaml ($n shards of $model)"
