#!/usr/bin/env bash
# README command 1: set up the environment, train the digits VP model, sample it with two samplers,
# compute its test bits/dim and write report.md with the sample grids and the numbers.
# Usage: scripts/quickstart.sh [extra train.py flags, e.g. --config.training.n_iters=500]
# The run directory is $WORKDIR (default runs/quickstart); a second call resumes or reuses its checkpoint.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/setup_env.sh
WORKDIR="${WORKDIR:-runs/quickstart}"
start=$(date +%s)

# The newest checkpoint before training: the report says whether this call trained, resumed or reused.
first_step=$(python -c "import sys; from sde_lib.runs import checkpoint_steps; print(max(checkpoint_steps(sys.argv[1]), default=0))" "$WORKDIR")
python scripts/train.py --config=configs/digits/vp.py --workdir="$WORKDIR" "$@"
train_end=$(date +%s)
mkdir -p "$WORKDIR/quickstart"
python scripts/sample.py --workdir="$WORKDIR" --sampler=ode_tsit5 --steps=25 --num=100 --overwrite \
  --out="$WORKDIR/quickstart/ode_tsit5" > "$WORKDIR/quickstart/ode_tsit5.json"
python scripts/sample.py --workdir="$WORKDIR" --sampler=dpm_solver_pp_3m --steps=20 --num=100 --overwrite \
  --out="$WORKDIR/quickstart/dpm_solver_pp_3m" > "$WORKDIR/quickstart/dpm_solver_pp_3m.json"

python - "$WORKDIR" "$start" "$train_end" "$first_step" <<'PY'
import json, os, sys, time

from sde_lib import load_run
from sde_lib.runs import RunFolder

workdir, start, train_end, first_step = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
bpd = load_run(workdir).bpd()
samples = [json.load(open(os.path.join(workdir, "quickstart", f"{name}.json"))) for name in ("ode_tsit5", "dpm_solver_pp_3m")]
metrics = RunFolder(workdir).read_metrics()
losses = [r for r in metrics if "loss" in r]
evals = [r for r in metrics if "eval_loss" in r]
done = bpd["step"] - first_step
if first_step == 0:
    trained = f"- trained {done} steps in {train_end - start} s (wall, including set-up and compilation)"
elif done > 0:
    trained = f"- resumed at step {first_step} and trained {done} more steps, to {bpd['step']}, in {train_end - start} s"
else:
    trained = f"- reused the finished run at step {bpd['step']} (no training; {train_end - start} s to check it)"
trained += f"; final training loss {losses[-1]['loss']:.4f}" if losses else ""
trained += f", held-out loss {evals[-1]['eval_loss']:.4f}" if evals else ""
lines = [
    "# Quick start: sklearn digits 8x8, VP SDE (configs/digits/vp.py)", "", trained,
    f"- **test bits/dim {bpd['bpd']:.3f} ± {bpd['bpd_stderr']:.3f}** ({bpd['num']} {bpd['split']} digits, "
    f"PF-ODE with {bpd['trace']} trace, {bpd['nfe']:.0f} score evaluations per example, {bpd['seconds']:.0f} s)",
    f"- total wall time {int(time.time()) - start} s", "",
    "| sampler | steps | NFE | seconds | samples |", "|---|---|---|---|---|",
]
for s in samples:
    png = os.path.relpath(s["png"], workdir)
    lines.append(f"| {s['sampler']} | {s['steps']} | {s['nfe']:.0f} | {s['seconds']:.1f} | ![{s['sampler']}]({png}) |")
with open(os.path.join(workdir, "report.md"), "w") as f:
    f.write("\n".join(lines) + "\n")
print("\n".join(lines))
PY
echo "report: $WORKDIR/report.md"
