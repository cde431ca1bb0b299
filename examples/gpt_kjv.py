"""A character GPT (4 blocks of width 128, context 64) on the King James Bible, in 2 stage actors: the
embeddings and two blocks on one, two blocks and the head on the other. Reports validation bits per
character. Run: python examples/gpt_kjv.py [steps] (data: $DNI_PIPELINE_DATA or ../shared/data)"""

import os
import sys

import torch

import dni_pipeline

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 600
text = dni_pipeline.load_dataset("kjv", os.environ.get("DNI_PIPELINE_DATA", "../shared/data"), context=64)
data = ((text.x_train, text.y_train), (text.x_test[:512], text.y_test[:512]))  # (N, 64) tokens, next tokens

torch.manual_seed(0)
model = dni_pipeline.gpt((64,), text.num_classes, layers=4, heads=4, width=128)
for mode in ("backprop", "cdni"):
    result = dni_pipeline.train(model, data, mode=mode, stages=2, max_steps=steps, batch_size=32,
                                eval_every=max(1, steps // 3), progress=False)
    s = result.summary
    print(f"{mode:8s} {s['test_bits']:.3f} bits per character after {s['steps']} steps, "
          f"{s['samples_per_sec'] * 64:.0f} tokens/s")
