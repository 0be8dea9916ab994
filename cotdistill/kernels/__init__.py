"""What train.py and the engines patch into models, apart from stage code.

attention.py  packed rows: attention inside each example (torch varlen flash on CUDA, per-example SDPA elsewhere)
loss.py    response-only head, chunked linear cross-entropy, tied-embedding lookup (training)
linear.py  large fp32 linear layers through oneDNN with prepacked weights (CPU generation)
cache.py   a KV cache layer living in one preallocated buffer (generation)
recast.py  linear layers under bf16 autocast that keep no bf16 weight copy for the backward (CPU training)
"""
