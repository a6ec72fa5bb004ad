"""The prompt enhancer: a vision-language model turns a short prompt and the image a section starts from into a
detailed video prompt, once per distinct section prompt.

- `prompts`: what is enhanced (the plan's distinct section prompts with their image), the built-in instructions and
  the cleaning of the model's answer; no torch.
- `source`: which model the request's `enhancer` names (hub repo id, local folder or the self-test model) and
  whether its files are on this machine; no torch.
- `vlm`: loading a model (the same code for the real and the tiny one), writing the prompts, releasing it;
  `processor`: the Qwen-VL processor that loads without torchvision.
- `stage`: the enhance stage of a job, as the runner calls it before the text encoders.
"""
