#!/usr/bin/env bash
# Set up .venv (runtime dependencies only) and screen a sample archive with the
# bundled Triton server: the real CT from ../shared/data plus generated phantoms
# at every grade (NIfTI and DICOM series). Results go to out/demo/.
# Extra arguments go to `hepascreen screen` (e.g. --concurrency 2).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh ""
SAMPLE=out/demo_sample
rm -rf "$SAMPLE" out/demo out/demo_sample_truth.json out/demo_sample_truth_masks
.venv/bin/python scripts/make_sample.py "$SAMPLE" --n-phantoms 4
set +e
.venv/bin/hepascreen screen "$SAMPLE" -o out/demo "$@"
rc=$?
set -e
echo
echo "results:  $(pwd)/out/demo/results.csv"
echo "report:   $(pwd)/out/demo/report.html"
echo "truth of the phantoms (for comparison): $(pwd)/out/demo_sample_truth.json"
exit $rc
