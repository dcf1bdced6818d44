"""Batch 1 of ``bench_predict_action.py``'s inputs, accelerated, in this process: ids and margins, to
compare between processes (bitwise equal in every process = reproducible beyond one process's replays).

```bash
for i in 1 2 3; do python3 benchmarks/b1_across_processes.py b1_$i.json; done   # then compare the files
```

Session 15 (H200, ``results/h200_s15_b1_process{1,2,3}.json``, run when the batch-1 GEMV was still
autotuned, with the autotuner's picks recorded): the same ids in all three processes, the margins
of process 3 different; its autotuner had picked another configuration for o_proj.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_predict_action import INSTRUCTION, UNNORM_KEY, build_random_openvla, openvla_7b_config  # noqa: E402
from vla_spec.model.fast_decoding import accelerate  # noqa: E402


def main(out: str) -> int:
    model = accelerate(build_random_openvla(openvla_7b_config(), "cuda", torch.bfloat16))
    image = np.random.default_rng(0).integers(0, 256, (224, 224, 3), dtype=np.uint8)  # the benchmark's batch-1 draw
    prediction = model.predict_action([image], [INSTRUCTION], UNNORM_KEY)
    result = {"ids": prediction.token_ids.tolist(), "margins": prediction.margins.tolist()}
    Path(out).write_text(json.dumps(result, indent=1))
    print(result, flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1]))
