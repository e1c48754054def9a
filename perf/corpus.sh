# Sourced by perf scripts: `corpus=$(perf_corpus WORKDIR SLUICE BIG_MIB SMALL)`
# generates the perf corpus (one big file of mixed 16 KiB pages, half
# repetitive text and half random, and SMALL files of 4–64 KiB) once per
# size under WORKDIR/corpus and prints its path.
perf_corpus() {
  local work=$1 sluice=$2 big=$3 small=$4
  local corpus=$work/corpus
  mkdir -p "$work"
  if [ ! -f "$corpus/.done-$big-$small" ]; then
    rm -rf "$corpus"
    "$sluice" -q gen-sample --corpus --big-mib "$big" --small "$small" "$corpus" >&2
    touch "$corpus/.done-$big-$small"
  fi
  echo "$corpus"
}
