"""The training loop's seam for other stages, and the MFU yardstick: measured as the best of
several rounds, shown as a doubt when utilisation comes out above 100%."""

from dataclasses import replace

import torch
from safetensors.torch import load_file

from lamina.train import train_recipe, train
from lamina.train.accounting import measure_matmul_flops
from lamina.train.distributed import Cluster
from lamina.train.loop import pretrain_step, run_loop, setup
from lamina.train.metrics import format_mfu, read_metrics

SHORT = dict(seq_len=64, batch_size=8, max_steps=3, warmup_steps=1, eval_every=3, eval_tokens=1024,
             save_every=3, log_every=1, sample_tokens=4)


class Clock:
    """A clock whose every reading is `tick` seconds after the last, plus a stall on the readings
    named in `stalls`: another process taking the cores for a while."""

    def __init__(self, tick: float, stalls: dict[int, float] | None = None) -> None:
        self.tick, self.stalls, self.now, self.reads = tick, stalls or {}, 0.0, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.tick + self.stalls.get(self.reads, 0.0)
        return self.now


def step_with_a_figure_of_its_own(run):
    """What a post-training stage brings: its own step, reporting a figure of its own."""
    return replace(pretrain_step(run), metrics={"reward": float(run.progress.step)})


def test_a_stage_brings_its_own_step_to_the_same_loop(corpus, tmp_path):
    config = train_recipe("debug", data=str(corpus), out=str(tmp_path / "own")).replace(**SHORT)
    own = run_loop(setup(config, Cluster(0, 1, 0, torch.device("cpu")), resume=False, show=False),
                   step_with_a_figure_of_its_own)
    plain = train(config.replace(out=str(tmp_path / "plain")), progress=False)
    assert [r["reward"] for r in read_metrics(own.run) if "loss" in r] == [0.0, 1.0, 2.0]
    assert own.val_loss == plain.val_loss
    a, b = (load_file(r.checkpoint / "model.safetensors") for r in (own, plain))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_matmul_yardstick_is_its_fastest_round():
    def measure(clock: Clock, rounds: int) -> float:
        # 3.5 clock seconds a round; integer ticks keep the arithmetic exact
        return measure_matmul_flops(torch.device("cpu"), torch.float32, seconds=3.5 * rounds, rounds=rounds,
                                    size=64, clock=clock)
    quiet = measure(Clock(1.0), rounds=1)
    busy = measure(Clock(1.0, stalls={3: 10.0}), rounds=1)     # the third reading waits out a stall
    assert busy < quiet
    assert measure(Clock(1.0, stalls={3: 10.0}), rounds=3) == quiet > (busy + 2 * quiet) / 3


def test_mfu_above_100_percent_shows_as_a_doubt():
    assert format_mfu(0.42) == "42%"
    assert format_mfu(1.0) == "100%"
    assert format_mfu(1.09) == ">100%?"
