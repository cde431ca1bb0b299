"""The unlocked trainer: a network split into stages, each a Ray actor that updates from a local
synthetic gradient (or a locked baseline's true one), the driver that feeds them, recovery, the
training loop, its report, and the benchmark."""
