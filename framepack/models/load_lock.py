"""One model load (or construction of weights) at a time in this process.

`from_pretrained` is not thread-safe: while a model loads, transformers and diffusers change process-wide state
(torch's current device set to "meta" for empty weights, accelerate's patch of `torch.nn.Module.register_parameter`),
so a load in another thread fails ("Unsupported device type 'meta'") and a module built in another thread meanwhile
gets weights without data ("Cannot copy out of meta tensor"). Several queue workers in one process (`serve --gpus
0,1`) load and build models in their own threads, so whatever makes weights holds `LOAD_LOCK`: the loader (load
and quantization), the enhancer's load, LoRA layers, the RIFE interpolator and the writing of the self-test models.
It is reentrant. The lock guards that state of the libraries; it holds none of its own.
"""

from __future__ import annotations

import threading

LOAD_LOCK = threading.RLock()
