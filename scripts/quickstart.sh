#!/usr/bin/env bash
# README command 1: set up the environment, then tour the seed's systems on the embedded digits data and
# write one report (runs/quickstart/report.md, pictures under runs/quickstart/tour/):
#   1. unconditional  the digits VP model (configs/digits/vp.py): bits/dim, samples, a sampler ablation
#   2. ddpm           DDPM (configs/digits/ddpm.py): ancestral samples, its variational bound beside the VP model's
#   3. conditional    class-conditional digits (configs/digits/cond_vp.py): a grid per class, class accuracy
#   4. latent         autoencoder + caption-conditioned latent diffusion on the digit canvas: prompts, adherence
# Usage: scripts/quickstart.sh [unconditional|ddpm|conditional|latent] [extra train.py flags for every part]
# With no part, all four run; the latent part (the only one whose U-Net keeps both cores busy) runs beside the
# other three, which are small MLPs that use about one core. Each part reuses a finished run and resumes an
# interrupted one; the report says which. Run folders: $RUNS/quickstart{,_ddpm,_cond,_canvas_ae,_canvas}
# (RUNS defaults to runs).
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)  # the report's total includes the set-up
source scripts/setup_env.sh
RUNS="${RUNS:-runs}"
OUT="$RUNS/quickstart/tour"
parts=(unconditional ddpm conditional latent)
if [ $# -gt 0 ] && [[ " ${parts[*]} " == *" $1 "* ]]; then parts=("$1"); shift; fi

# The tour's budget (15 minutes on 2 cores for all four parts, set-up included) sizes the steps below the
# full configs': the VP model trains 3000 steps instead of 5000 (the same test bits/dim), DDPM and the
# class-conditional model 2500; the canvas models keep their step counts (the caption model needs ~3000 to
# bind words to places, on an autoencoder trained 2000) at half the batch, 32 (docs/results.md, "The
# quick-start tour", has what that costs).
declare -A CONFIG=([quickstart]=configs/digits/vp.py [quickstart_ddpm]=configs/digits/ddpm.py
                   [quickstart_cond]=configs/digits/cond_vp.py [quickstart_canvas_ae]=configs/canvas/autoencoder.py
                   [quickstart_canvas]=configs/canvas/latent_caption.py)
declare -A FLAGS=([quickstart]="--config.training.n_iters=3000" [quickstart_ddpm]="--config.training.n_iters=2500"
                  [quickstart_cond]="--config.training.n_iters=2500"
                  [quickstart_canvas_ae]="--config.training.batch_size=32"
                  [quickstart_canvas]="--config.training.batch_size=32
                                       --config.first_stage.workdir=$RUNS/quickstart_canvas_ae")

kill_tree() {  # SIGTERM to a process and its descendants: a trainer writes a checkpoint and stops
  local c
  for c in $(pgrep -P "$1" 2>/dev/null || true); do kill_tree "$c"; done
  kill -TERM "$1" 2>/dev/null || true
}

newest() {  # the newest checkpoint step of a run folder (0 if none)
  python -c "import sys; from sde_lib.runs import checkpoint_steps
print(max(checkpoint_steps(sys.argv[1]), default=0))" "$1"
}

train() {  # train RUN [train.py flags]: appends "first_step seconds" of this run to the part's record
  local run=$1; shift
  local first t0
  first=$(newest "$RUNS/$run"); t0=$(date +%s)
  # shellcheck disable=SC2086
  python scripts/train.py --config="${CONFIG[$run]}" --workdir="$RUNS/$run" ${FLAGS[$run]} "$@"
  FIRST+=("$first"); SECONDS_+=("$(( $(date +%s) - t0 ))")
}

part() {  # part NAME [train.py flags]: train the part's runs, then measure it and write its section
  local name=$1; shift
  local t0; t0=$(date +%s)
  FIRST=(); SECONDS_=()
  case $name in
    unconditional) train quickstart "$@" ;;
    ddpm) train quickstart_ddpm "$@"; [ -d "$RUNS/quickstart" ] || train quickstart "$@" ;;
    conditional) train quickstart_cond "$@" ;;
    latent) train quickstart_canvas_ae "$@"; train quickstart_canvas "$@" ;;
  esac
  python scripts/tour.py "$name" --runs="$RUNS" --out="$OUT" --first_step "${FIRST[@]}" \
    --train_seconds "${SECONDS_[@]}" --start="$t0"
}

mkdir -p "$OUT"
if [ ${#parts[@]} -eq 4 ]; then
  echo "quickstart: the latent part runs in the background (log: $OUT/latent.log); parts 1-3 here"
  (part latent "$@") > "$OUT/latent.log" 2>&1 &
  latent_pid=$!
  trap 'kill_tree $latent_pid' EXIT
  for p in unconditional ddpm conditional; do part "$p" "$@"; done
  echo "quickstart: waiting for the latent part ($OUT/latent.log)"
  if ! wait "$latent_pid"; then
    echo "quickstart: the latent part failed; the end of its log:" >&2; tail -n 20 "$OUT/latent.log" >&2; exit 1
  fi
  trap - EXIT
  cat "$OUT/latent.md"
else
  part "${parts[0]}" "$@"
fi
python scripts/tour.py report --out="$OUT" --report="$RUNS/quickstart/report.md" \
  --total_seconds=$(( $(date +%s) - start ))
