import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from lamina.data.loader import TokenShards
from lamina.errors import LaminaError
from lamina.model import Transformer, init_weights
from lamina.recipes import builtin_recipes
from lamina.train import TrainConfig, train, train_recipe
from lamina.train import accounting
from lamina.train.accounting import EnergyMeter, TokenLedger
from lamina.train.sizing import compute_dtype, estimate_memory_gb, plan_batches
from lamina.train.optim import build_optimizers, lr_factor
from lamina.train.state import list_checkpoints

LAMINA = [sys.executable, "-m", "lamina.cli"]
# every knob that makes a run short: 20 steps, a checkpoint every 10
SHORT = dict(seq_len=64, batch_size=8, max_steps=20, warmup_steps=2, eval_every=10, eval_tokens=2048,
             save_every=10, log_every=1, sample_tokens=8)


def _config(corpus, out, **kw) -> TrainConfig:
    return train_recipe("debug", data=str(corpus), out=str(out)).replace(**{**SHORT, **kw})


def _cli(corpus, out, *extra, **kw) -> list[str]:
    settings = {**SHORT, **kw}
    return [*LAMINA, "train", "debug", "--data", str(corpus), "--out", str(out), "--quiet",
            *(f"{k}={json.dumps(v)}" for k, v in settings.items()), *extra]


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return load_file(checkpoint / "model.safetensors") | {
        f"state/{k}": v for k, v in load_file(checkpoint / "train_state" / "state.safetensors").items()}


def _wait_for(predicate, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.002)
    return False


@pytest.mark.slow
def test_resume_after_sigkill_is_bit_exact(corpus, tmp_path):
    """20 steps straight, against 10 steps, SIGKILL, --resume and 10 more: identical weights,
    optimizer state, generator state and token counts, bit for bit."""
    straight = train(_config(corpus, tmp_path / "straight"), progress=False)

    run = tmp_path / "killed"
    proc = subprocess.Popen(_cli(corpus, run, seq_len=64))
    seen = _wait_for(lambda: (run / "checkpoints" / "step-000010").is_dir(), proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert seen, "the first run ended before its step-10 checkpoint appeared"
    assert [p.name for p in list_checkpoints(run)] == ["step-000010"]
    subprocess.run(_cli(corpus, run, "--resume"), check=True)

    a, b = _weights(straight.checkpoint), _weights(run / "checkpoints" / "step-000020")
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert different == []
    losses = [[r["loss"] for r in map(json.loads, (p / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
              for p in (straight.run, run)]
    assert losses[0] == losses[1]
    # the data order's digest is carried across the kill: the same windows in the same order
    orders = [json.loads((c / "lamina.json").read_text())["made_by"]["data"]["order_digest"]
              for c in (straight.checkpoint, run / "checkpoints" / "step-000020")]
    assert orders[0] == orders[1] and len(orders[0]) == 64


@pytest.mark.slow
def test_a_killed_save_never_looks_whole(corpus, tmp_path):
    """Kill the process while it writes its second checkpoint: that checkpoint does not exist
    under its name, the first one loads, and --resume finishes the run."""
    run = tmp_path / "run"
    big = {"model_overrides": {"dim": 512, "n_layers": 6, "n_heads": 8, "n_kv_heads": 4, "ffn_dim": 1536},
           "max_steps": 2, "save_every": 1, "eval_every": 100, "batch_size": 2}
    cmd = _cli(corpus, run, **big)
    cmd = [c for c in cmd if not c.startswith("model_overrides=")] + [
        f"model_overrides.{k}={v}" for k, v in big["model_overrides"].items()]
    proc = subprocess.Popen(cmd)
    partial = lambda: any(run.glob("checkpoints/.step-000002.partial-*"))   # noqa: E731
    caught = _wait_for(partial, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert caught, "the run finished before its second save could be interrupted"
    assert [p.name for p in list_checkpoints(run)] == ["step-000001"]
    assert not (run / "checkpoints" / "step-000002").exists()
    from lamina.checkpoint import read_hf
    assert read_hf(run / "checkpoints" / "step-000001").config.dim == 512
    subprocess.run(cmd + ["--resume"], check=True)
    assert [p.name for p in list_checkpoints(run)] == ["step-000001", "step-000002"]
    assert not any(run.glob("checkpoints/.step-*"))


@pytest.mark.slow
@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_gloo_ranks_follow_the_loss_curve_of_one_process(corpus, tmp_path, parallel):
    one = train(_config(corpus, tmp_path / "one", max_steps=8, eval_every=100, save_every=100), progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                "-m", "lamina.cli"]
    cmd = _cli(corpus, tmp_path / "two", max_steps=8, eval_every=100, save_every=100, parallel=parallel)
    subprocess.run([*torchrun, *cmd[len(LAMINA):]], check=True, env=env, timeout=300)

    def curve(run):
        return [r["loss"] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    assert len(curve(tmp_path / "two")) == 8
    np.testing.assert_allclose(curve(tmp_path / "two"), curve(one.run), rtol=1e-4)
    a = load_file(one.checkpoint / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step-000008" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)
    compute = json.loads((tmp_path / "two" / "checkpoints" / "step-000008" / "lamina.json").read_text())["made_by"]["compute"]
    # saving sums energy over the ranks in a collective both must reach (else the run hangs)
    assert compute["energy_kwh"] > 0 and compute["device_seconds"]["cpu"] > 0


@pytest.mark.slow
def test_fsdp_on_two_ranks_trains_a_latent_mixture_with_prediction_modules_as_one_process(corpus, tmp_path):
    """debug-mla (latent attention, 8 sigmoid-routed experts with the balancing bias) with a
    multi-token prediction module and the sequence-wise balance loss: the loss, the module's loss,
    the weights and the bias of two FSDP2 ranks follow one process."""
    model = ['model="debug-mla"', "model_overrides.mtp_depth=1", "model_overrides.seq_aux_loss=0.0001"]
    steps = dict(max_steps=6, eval_every=100, save_every=100)
    one = train(train_recipe("debug", model, data=str(corpus), out=str(tmp_path / "one")).replace(**{**SHORT, **steps}),
                progress=False)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = _cli(corpus, tmp_path / "two", *model, **steps, parallel="fsdp")
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                    "-m", "lamina.cli", *cmd[len(LAMINA):]], check=True, env=env, timeout=300)

    def logged(run, key):
        return [r[key] for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()) if key in r]
    for key in ("loss", "mtp_loss_1", "expert_load_max_over_mean"):
        assert len(logged(tmp_path / "two", key)) == 6
        np.testing.assert_allclose(logged(tmp_path / "two", key), logged(one.run, key), rtol=1e-3)
    a = load_file(one.checkpoint / "model.safetensors")
    b = load_file(tmp_path / "two" / "checkpoints" / "step-000006" / "model.safetensors")
    assert a.keys() == b.keys() and any("layers.3." in k for k in a)        # the module, past the last layer
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-3, atol=1e-4)


def test_debug_preset_overfits_a_single_batch(corpus):
    config = _config(corpus, "unused", optimizer="adamw", lr=3e-3)
    data = TokenShards(corpus)
    x, y = (torch.from_numpy(a) for a in data.random_batch(np.random.default_rng(0), 4, 32))
    model = init_weights(Transformer(config.model_config(768, None, None)), seed=0)
    (opt,) = build_optimizers(model, config, torch.device("cpu"))
    first = None
    for _ in range(150):
        loss = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert first > 6.0 and loss.item() < 0.1


def test_checkpoint_records_compute_and_the_data_it_consumed(corpus, tmp_path):
    result = train(_config(corpus, tmp_path / "run", max_steps=5, save_every=5, eval_every=5), progress=False)
    record = json.loads((result.checkpoint / "lamina.json").read_text())["made_by"]
    data = record["data"]
    assert data["tokens"] == 5 * 8 * (64 + 1)          # every window, targets included
    assert data["tokens_by_license"] == {"LicenseRef-Public-Domain": data["tokens"]}
    assert data["tokens_by_source"] == {"shakespeare": data["tokens"]}
    compute = record["compute"]
    assert compute["model_flops"] == compute["flops_per_token"] * 5 * 8 * 64
    assert compute["device_seconds"]["cpu"] > 0 and compute["energy_kwh"] > 0 and compute["co2e_kg"] > 0
    assert compute["energy_method"]
    assert 0 < record["validation"]["bits_per_byte"] < 20
    assert record["step"] == 5 and len(record["samples"]) == 1


def test_energy_meter_counts_each_cpu_package_once_per_node(tmp_path, monkeypatch):
    counter = tmp_path / "intel-rapl:0" / "energy_uj"        # the powercap layout RAPL exposes
    counter.parent.mkdir()
    counter.write_text("1000000\n")
    monkeypatch.setattr(accounting, "RAPL", tmp_path)
    first, second = (EnergyMeter(torch.device("cpu"), local_rank=r, cores=1) for r in (0, 1))
    assert first.method == second.method == "rapl"
    counter.write_text("3500000\n")
    assert first.joules() == pytest.approx(2.5)
    assert second.joules() == 0.0     # same package: the node's local rank 0 reports it
    counter.unlink()                  # no counter: each rank estimates its own share
    estimate = EnergyMeter(torch.device("cpu"), local_rank=1, cores=1, watts=50.0)
    assert estimate.method.startswith("estimate") and estimate.joules() > 0


def test_memory_estimate_follows_the_dtype_training_resolves():
    config = train_recipe("llama-3.2-1b")
    model, plan = config.model_config(128256, 0, 1), plan_batches(config, 1)
    gpu, cpu = torch.device("cuda"), torch.device("cpu")
    assert compute_dtype(config.replace(dtype="auto"), gpu) == torch.bfloat16
    assert compute_dtype(config.replace(dtype="auto"), cpu) == torch.float32
    bf16 = estimate_memory_gb(model, config, plan, 1, compute_dtype(config.replace(dtype="auto"), gpu))
    fp32 = estimate_memory_gb(model, config, plan, 1, torch.float32)
    assert bf16 < fp32
    assert bf16 == estimate_memory_gb(model, config, plan, 1, compute_dtype(config.replace(dtype="bfloat16"), cpu))


def test_token_ledger_traces_every_window_to_documents(corpus):
    data = TokenShards(corpus)
    ledger = TokenLedger(corpus, data.names)
    windows = data.random_windows(np.random.default_rng(1), 64, 100)
    ledger.add(windows, 101)
    assert ledger.tokens.sum() == 64 * 101
    summary = ledger.summary()
    assert summary["tokens_by_source"] == {"shakespeare": 64 * 101}


@pytest.mark.slow
def test_transformers_loads_a_training_checkpoint_with_equal_logits(corpus, tmp_path):
    from transformers import AutoModelForCausalLM

    from lamina.serve import load
    result = train(_config(corpus, tmp_path / "run", max_steps=3, save_every=3, eval_every=3), progress=False)
    hf = AutoModelForCausalLM.from_pretrained(result.checkpoint, torch_dtype=torch.float32)
    ours = load(result.checkpoint)
    ids = torch.tensor([ours.tokenizer.encode("To be, or not to be")])
    with torch.no_grad():
        torch.testing.assert_close(ours.model(ids), hf(ids).logits, rtol=1e-4, atol=1e-4)


def test_metrics_loss_curve_and_tensorboard_are_written(corpus, tmp_path, capsys, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lamina import progress
    monkeypatch.setattr(progress, "EVERY_S", 0.0)     # a progress line at every logged step
    result = train(_config(corpus, tmp_path / "run", max_steps=4, save_every=4, eval_every=2, tensorboard=True),
                   progress=True)
    # stdout is not a terminal here: the bar's numbers come as plain lines
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("train: ")]
    assert lines[0] == "train: 0/4" and len(lines) == 5
    assert lines[2].startswith("train: 2/4 (50%), loss ") and " tok/s, MFU " in lines[2] and lines[2].endswith(" left")
    assert lines[4].startswith("train: 4/4 (100%), loss ") and "left" not in lines[4]
    rows = [json.loads(line) for line in (result.run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]
    steps = [r for r in rows if "loss" in r]
    assert all({"tokens_per_s", "mfu", "matmul_flop_per_s", "lr", "grad_norm"} <= r.keys() for r in steps)
    # MFU against the yardstick written beside it, which only rises as the run re-measures it
    per_token = json.loads((result.checkpoint / "lamina.json").read_text())["made_by"]["compute"]["flops_per_token"]
    assert all(r["mfu"] == pytest.approx(r["tokens_per_s"] * per_token / r["matmul_flop_per_s"]) for r in steps)
    yardsticks = [r["matmul_flop_per_s"] for r in steps]
    assert yardsticks == sorted(yardsticks)
    assert [r["step"] for r in rows if "val_bpb" in r] == [2, 4]
    assert (result.run / "loss.png").read_bytes()[:4] == b"\x89PNG"
    events = EventAccumulator(str(result.run / "tensorboard"))
    events.Reload()
    assert [e.step for e in events.Scalars("loss")] == [1, 2, 3, 4]


def test_schedules_warm_up_then_decay_to_the_floor():
    cosine = TrainConfig(max_steps=100, warmup_steps=10, schedule="cosine", min_lr_ratio=0.1)
    factors = [lr_factor(s, cosine) for s in range(100)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == 1.0
    assert all(a >= b for a, b in zip(factors[9:], factors[10:])) and factors[-1] == pytest.approx(0.1, abs=1e-3)
    wsd = TrainConfig(max_steps=100, warmup_steps=10, schedule="wsd", decay_fraction=0.2, min_lr_ratio=0.0)
    factors = [lr_factor(s, wsd) for s in range(100)]
    assert factors[10:80] == [1.0] * 70 and factors[-1] == 0.0 and factors[90] == pytest.approx(0.45)


def test_muon_takes_the_block_matrices_and_adamw_the_rest(corpus):
    config = _config(corpus, "unused", optimizer="muon")
    model = Transformer(config.model_config(768, None, None))
    muon, adamw = build_optimizers(model, config, torch.device("cpu"))
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for g in muon.param_groups for p in g["params"]}
    for name, p in model.named_parameters():
        assert (id(p) in in_muon) == (p.ndim == 2 and name.startswith("layers.")), name


@pytest.mark.parametrize("name", builtin_recipes("train"))
def test_every_recipe_parses(name):
    config = train_recipe(name)
    model = config.model_config(32000, 1, 2)
    assert estimate_memory_gb(model, config, plan_batches(config, 8 if "8b" in name else 1), 8) > 0


@pytest.mark.parametrize("change, message", [
    ({"model": "llama-9000"}, "unknown model preset"),
    ({"optimizer": "sgd"}, "optimizer"),
    ({"batch_size": 6, "micro_batch_size": 4}, "does not divide"),
    ({"max_memory_gb": 0.001}, "GiB"),
])
def test_bad_recipes_fail_before_any_work(corpus, tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises(LaminaError, match=message):
        train(_config(corpus, out).replace(**change), progress=False)
    assert not out.exists()


def test_missing_shards_and_unknown_settings_are_one_clear_error(tmp_path):
    with pytest.raises(LaminaError, match="manifest.json"):
        train(train_recipe("debug", data=str(tmp_path), out=str(tmp_path / "run")), progress=False)
    with pytest.raises(LaminaError, match="unknown settings"):
        train_recipe("debug", ["learning_rate=3"])
    with pytest.raises(LaminaError, match="unknown training recipe"):
        train_recipe("no-such-recipe")
    result = subprocess.run([*LAMINA, "train", "debug", "--data", str(tmp_path / "nope")],
                            capture_output=True, text=True)
    assert result.returncode == 1 and result.stderr.startswith("lamina: error:") and "Traceback" not in result.stderr


def test_a_diverging_run_stops_and_names_the_last_good_checkpoint(corpus, tmp_path):
    config = _config(corpus, tmp_path / "run", lr=1e4, grad_clip=0.0, warmup_steps=0, max_steps=50,
                     save_every=1, eval_every=100, optimizer="adamw")
    with pytest.raises(LaminaError, match=r"loss became (nan|inf).*last good checkpoint is .*step-"):
        train(config, progress=False)


def test_an_existing_run_is_not_overwritten_without_resume(corpus, tmp_path):
    train(_config(corpus, tmp_path / "run", max_steps=2, save_every=2, eval_every=2), progress=False)
    with pytest.raises(LaminaError, match="--resume"):
        train(_config(corpus, tmp_path / "run", max_steps=2), progress=False)


def test_activation_checkpointing_changes_memory_not_results(corpus, tmp_path):
    plain = train(_config(corpus, tmp_path / "plain", max_steps=3, save_every=3, eval_every=3), progress=False)
    recomputed = train(_config(corpus, tmp_path / "ckpt", max_steps=3, save_every=3, eval_every=3,
                               activation_checkpointing=True), progress=False)
    a, b = (load_file(r.checkpoint / "model.safetensors") for r in (plain, recomputed))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)
