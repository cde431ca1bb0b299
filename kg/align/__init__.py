"""Entity alignment between two knowledge graphs, and the merge of the two through an alignment, as plain PyTorch."""
