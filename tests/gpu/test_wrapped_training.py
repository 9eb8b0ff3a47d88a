"""DDP and FSDP on CUDA with NCCL, on one GPU: a one-rank process group in this process and the model wrapped as for
several ranks (`distributed.wrap` wraps only when `Hardware.world_size > 1`, so a one-process CLI run never does).
The wrapped model follows the plain model's bf16 training steps, and its gathered state (what checkpoints and the
saved model hold) equals the plain model's weights after them.

Tolerance: over one rank the collectives change no value, so both runs do the same arithmetic up to the order of
the sums inside the wrappers (a gradient norm over shards); the same comparison on the CPU in fp32 (gloo) gives
identical numbers. RTOL = 1e-3 leaves room for bf16 autocast, while gradients scaled by 2 (a wrapper averaging over
the wrong world size) move the logged gradient norms by 100% and the weights after 3 steps by 2% (measured on the CPU).
"""

from __future__ import annotations

import pytest
import torch

RTOL = 1e-3


@pytest.fixture
def nccl_group():
    import torch.distributed as dist

    dist.init_process_group("nccl", rank=0, world_size=1, store=dist.HashStore(), device_id=torch.device("cuda", 0))
    yield
    dist.destroy_process_group()


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_wrapped_model_trains_like_the_plain_one(nccl_group, strategy):
    from omegaconf import OmegaConf

    from llmlab import distributed
    from llmlab.config import LMArch
    from llmlab.hardware import Hardware
    from llmlab.models.lm import LM
    from llmlab.runners.pretrain import next_token_logits, param_groups
    from llmlab.train.step import StepSettings, optimizer_step

    device = torch.device("cuda", 0)
    arch = OmegaConf.structured(LMArch(n_layer=2, d_model=64, n_head=2, ffn_hidden=128))
    data = torch.randint(0, 256, (8, 33), generator=torch.Generator().manual_seed(0))
    micro = [((data[j * 4 : (j + 1) * 4],), 4 * 32) for j in range(2)]
    settings = StepSettings(device=device, clip=1.0, accum=2, amp=torch.bfloat16)

    def train(wrapped: bool) -> tuple[list[float], dict]:
        torch.manual_seed(0)
        model = LM(arch, 256, 32).to(device)
        trained = distributed.wrap(model, Hardware(device, torch.bfloat16, 0, 2, strategy)) if wrapped else model
        assert (trained is not model or distributed.is_fsdp(model)) == wrapped
        opt = torch.optim.AdamW(param_groups(model, 0.1), lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        curve = []
        for step in range(3):
            curve += map(float, optimizer_step(trained, opt, sched, micro, next_token_logits, settings, step=step + 1))
        return curve, distributed.full_state(model)

    plain, plain_state = train(False)
    wrapped, wrapped_state = train(True)
    assert wrapped == pytest.approx(plain, rel=RTOL)
    assert wrapped_state.keys() == plain_state.keys()
    assert all(torch.allclose(wrapped_state[k], plain_state[k], rtol=RTOL, atol=1e-5) for k in plain_state)
