# Sourced by scripts/slurm/submit.sh and scripts/k8s/render.sh: reads the `vlguard-ort
# run` flags a user gives a cluster launcher, which pass them on to every shard as given.
#
# parse_run_flags CALLER RESERVED...: reads the array run_flags; a flag named in RESERVED
# (set by the launcher itself) is refused, naming CALLER. Sets engine when --engine is
# given, and merge_flags to the --subset, --meta, --out and --limit flags as given
# (`--flag value` or `--flag=value`) that `merge` needs too; --subset all is added to both
# lists when run_flags have no --subset.
parse_run_flags() {
  local caller=$1 i=0 flag name has_subset=0
  shift
  merge_flags=()
  while ((i < ${#run_flags[@]})); do
    flag=${run_flags[$i]}
    name=${flag%%=*}
    if [[ " $* " == *" $name "* ]]; then
      echo "$caller: $name is set by $caller; leave it out of the run flags" >&2
      exit 2
    fi
    case "$flag" in
      --engine=*) engine=${flag#*=} ;;
      --subset=* | --meta=* | --out=* | --limit=*) merge_flags+=("$flag") ;;
      --engine | --subset | --meta | --out | --limit)
        if ((i + 1 >= ${#run_flags[@]})); then
          echo "$caller: $flag needs a value" >&2
          exit 2
        fi
        i=$((i + 1))
        if [ "$flag" = --engine ]; then engine=${run_flags[$i]}; else merge_flags+=("$flag" "${run_flags[$i]}"); fi ;;
    esac
    [ "$name" != --subset ] || has_subset=1
    i=$((i + 1))
  done
  if ((!has_subset)); then
    run_flags+=(--subset all)
    merge_flags+=(--subset all)
  fi
}
