"""A pre-activation ResNet (widths 16, 32, 64, a stride-2 block per resolution) on MNIST, cut at block
boundaries into 2 stage actors, in every mode. Run: python examples/resnet_mnist.py [steps]
(data: $DNI_PIPELINE_DATA or ../shared/data)"""

import os
import sys

import torch

import dni_pipeline

steps = int(sys.argv[1]) if len(sys.argv) > 1 else 300
mnist = dni_pipeline.load_dataset("mnist", os.environ.get("DNI_PIPELINE_DATA", "../shared/data"))
data = ((mnist.x_train, mnist.y_train), (mnist.x_test, mnist.y_test))

for mode in ("backprop", "gpipe", "dni", "cdni", "dgl"):
    torch.manual_seed(0)
    model = dni_pipeline.resnet((1, 28, 28), 10)  # children: stem, 3 blocks, head; cut by compute after the 28x28 block
    result = dni_pipeline.train(model, data, mode=mode, stages=2, split=[2], max_steps=steps, batch_size=128,
                                progress=False)
    print(f"{mode:8s} test accuracy {result.summary['test_accuracy']:.4f}, "
          f"{result.summary['samples_per_sec']:.0f} samples/s")
