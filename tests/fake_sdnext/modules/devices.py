import torch

device = torch.device("cpu")
dtype = torch.float32
