"""Print the first and last logged value of every loss in RUN/metrics.jsonl (used by `make demo`)."""

import json
import sys
from pathlib import Path

run = Path(sys.argv[1])
rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
first, last = rows[0], rows[-1]
keys = [k for k in first if k not in ("step", "lr", "samples_per_s", "step_time") and "/" not in k]
print(f"{'metric':<12} {'step ' + str(first['step']):>10} {'step ' + str(last['step']):>10} {'ratio':>7}")
for k in keys:
    ratio = first[k] / last[k] if last[k] else float("inf")
    print(f"{k:<12} {first[k]:>10.4f} {last[k]:>10.4f} {ratio:>6.2f}x")
print(f"throughput: {last['samples_per_s']:.1f} samples/s; checkpoints in {run / 'checkpoints'}")
