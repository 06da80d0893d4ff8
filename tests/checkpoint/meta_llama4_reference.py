"""Meta's own Llama 4 code (llama_models.llama4, on fairscale's model parallelism) as the
reference for Meta's checkpoint layout, run in a process of its own (it starts a one-rank gloo
group). Its attention allocates the KV cache with `.cuda()`; on a machine without CUDA that one
call keeps the tensor where it is, nothing else of the model changes.

    python meta_llama4_reference.py logits FOLDER TOKENS.pt OUT.pt   # load FOLDER, write logits
    python meta_llama4_reference.py init FOLDER SEED                 # random model -> FOLDER
"""

import json
import os
import socket
import sys
from pathlib import Path

import torch
import torch.distributed as dist


def start() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=0, world_size=1)
    import fairscale.nn.model_parallel.initialize as fs_init
    fs_init.initialize_model_parallel(1)


def build(folder: Path):
    from llama_models.llama4.args import ModelArgs
    from llama_models.llama4.model import Transformer
    params = json.loads((folder / "params.json").read_text())
    args = ModelArgs(**{**params, "max_batch_size": 2})
    cuda = torch.Tensor.cuda
    torch.Tensor.cuda = lambda self, *a, **k: self if not torch.cuda.is_available() else cuda(self, *a, **k)
    try:
        return Transformer(args)
    finally:
        torch.Tensor.cuda = cuda


def main() -> None:
    mode, folder = sys.argv[1], Path(sys.argv[2])
    start()
    model = build(folder)
    if mode == "init":
        g = torch.Generator().manual_seed(int(sys.argv[3]))
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g) if name.endswith("norm.weight")
                        else 0.15 * torch.randn(p.shape, generator=g))
        torch.save(model.state_dict(), folder / "consolidated.00.pth")
        return
    from llama_models.llama4.datatypes import TransformerInput
    model.load_state_dict(torch.load(folder / "consolidated.00.pth", weights_only=True), strict=True)
    tokens = torch.load(sys.argv[3], weights_only=True)
    logits = model(TransformerInput(tokens=tokens, tokens_position=0)).logits
    torch.save(logits, sys.argv[4])


if __name__ == "__main__":
    main()
