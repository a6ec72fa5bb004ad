"""One model load at a time in this process.

`from_pretrained` is not thread-safe: while a model loads, transformers and diffusers change process-wide state
(a default device "meta" for empty weights, accelerate's patches of `torch.nn.Module`), so a second load in
another thread of the same process fails ("Unsupported device type 'meta'"). Several queue workers in one process
(`serve --gpus 0,1`) load their models in their own threads, so every `from_pretrained` of FramePack holds
`LOAD_LOCK`. The lock guards that state of the libraries; it holds none of its own.
"""

from __future__ import annotations

import threading

LOAD_LOCK = threading.Lock()
