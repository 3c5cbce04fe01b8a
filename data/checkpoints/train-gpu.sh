#!/usr/bin/env bash
# Retraining the demo models on one GPU (issue 14). Not yet run on a GPU: the shipped models are still
# the CPU-trained ones of README.md; checked on the CPU with DEVICE=cpu WORKERS=0
# BENCH_ARGS="--dry-run --variants demo frequency" and 2 steps each.
#   1. benchmarks/autoencoder.py compares autoencoder variants on the demo store's test tiles;
#   2. the variant with the best goal margin (its table's "margin" column) is trained as the demo's
#      autoencoder, then the LDM on it and the U-Net baseline, with configs/demo.yaml;
#   3. the autoencoder's decoder alone is fine-tuned with the spectral term (DECODER_STEPS, 0: none;
#      configs/demo.yaml's demo.decoder_set), as the shipped decoder was on the CPU (README.md);
#   4. each run is exported in the shipped form (fp16 safetensors, model.json, config.yaml, metrics.csv),
#      the ldm with the fine-tuned decoder, and benchmarks/steps.py --quick records its stain_defaults.
#
#   data/checkpoints/train-gpu.sh STORE OUT [AE_STEPS] [LDM_STEPS] [BASELINE_STEPS] [DECODER_STEPS]
#
# STORE: a tile store prepared with configs/demo.yaml (what `stainldm demo` makes in demo-out/store).
# OUT: a new folder: autoencoder.json/.log (the comparison), runs/, checkpoints/ (copy it to
# data/checkpoints/), train.log. PYTHON (default python3) must have stainldm's dependencies;
# DEVICE (default cuda), WORKERS (8), BENCH_ARGS (extra benchmark arguments, e.g. --dry-run).
set -euo pipefail
store=$1
out=$2
ae_steps=${3:-1200}
ldm_steps=${4:-4000}
baseline_steps=${5:-2000}
decoder_steps=${6:-1000}
py=${PYTHON:-python3}
workers=${WORKERS:-8}
device=${DEVICE:-cuda}
mkdir -p "$out"

# 1. The comparison (its JSON lands in bench-out/; a copy goes to OUT).
if timeout "${AE_BENCH_TIMEOUT:-100000}" "$py" benchmarks/autoencoder.py --store "$store" --steps "$ae_steps" \
    --device "$device" --workers "$workers" ${BENCH_ARGS:-} 2>&1 | tee "$out/autoencoder.log"; then
  cp bench-out/autoencoder.json "$out/autoencoder.json"
fi

# 2. The best variant's overrides (none when the comparison did not finish: the demo config as it is).
sets=$("$py" - "$out/autoencoder.json" <<'EOF'
import json, pathlib, sys
path = pathlib.Path(sys.argv[1])
results = json.loads(path.read_text())["results"] if path.is_file() else {}
best = max(results, key=lambda k: results[k]["margin_db"]) if results else None
print(" ".join(results[best]["overrides"]) if best else "")
print(f"autoencoder variant: {best or 'demo (no comparison)'}", file=sys.stderr)
EOF
)
common=(--config configs/demo.yaml --store "$store" --device "$device" --wandb disabled)
{
  echo "autoencoder overrides: ${sets:-none}"
  "$py" -m pipelines.cli train autoencoder "${common[@]}" --out "$out/runs/autoencoder" \
      --set "steps=$ae_steps" "data.workers=$workers" $sets
  "$py" -m pipelines.cli train ldm "${common[@]}" --autoencoder "$out/runs/autoencoder" --out "$out/runs/ldm" \
      --set "steps=$ldm_steps" "data.workers=$workers"
  "$py" -m pipelines.cli train baseline "${common[@]}" --out "$out/runs/baseline" \
      --set "steps=$baseline_steps" "data.workers=$workers"
  if [ "$decoder_steps" -gt 0 ]; then
    "$py" -m pipelines.cli train autoencoder "${common[@]}" --out "$out/runs/decoder" \
        --set "steps=$decoder_steps" "data.workers=$workers" $sets "autoencoder.init=$out/runs/ldm" \
              autoencoder.train_encoder=false autoencoder.frequency_weight=0.1 optim.lr=2.0e-4 optim.warmup_steps=0
  fi
} 2>&1 | tee "$out/train.log"

# 4. The shipped form (the ldm with the fine-tuned decoder), then its sampling defaults from the sweep.
"$py" -c "import sys; from pathlib import Path; from stainldm.models.runs import export_run
out = Path(sys.argv[1]); dec = out / 'runs/decoder'
export_run(out / 'runs/ldm', out / 'checkpoints/ldm', autoencoder=dec if (dec / 'model.json').is_file() else None)
export_run(out / 'runs/baseline', out / 'checkpoints/baseline')" "$out"
"$py" benchmarks/steps.py --quick --run "$out/checkpoints/ldm" --store "$store" --device "$device" --write-defaults \
    ${STEPS_ARGS:-} 2>&1 | tee "$out/steps.log" || echo "steps sweep failed: no stain_defaults recorded"
echo "exported to $out/checkpoints"
