"""What a run cost and what it read: model FLOPs, utilisation against a matmul measured on the
same device, device-seconds, energy (measured through NVML or RAPL where readable, else
estimated, saying which), CO2e, and the tokens consumed by document, source and license."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from contextlib import closing as _closing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..model import ModelConfig
from ..model.config import attention_params, ffn_params

# Used when nothing can be measured: stated in every record that uses them.
DEFAULT_WATTS = {"cpu": 15.0, "cuda": 700.0}   # per CPU core in use; per GPU (H100 SXM's TDP)
RAPL = Path("/sys/class/powercap")


def matmul_params(c: ModelConfig, mtp: bool = True) -> int:
    """Parameters that take part in a matmul per token: the blocks' matrices and the output head
    (the embedding lookup and the norms cost no matmul FLOPs); of a mixture of experts, the
    router and the experts a token is sent to; with `mtp`, each multi-token prediction module's
    block, input projection and pass through the head."""
    blocks = [*range(c.n_layers), *(range(c.n_layers, c.n_layers + c.mtp_depth) if mtp else ())]
    ahead = (2 * c.dim * c.dim + c.vocab_size * c.dim) * c.mtp_depth if mtp else 0
    return sum(attention_params(c, norms=False) + ffn_params(c, i, active=True) for i in blocks) \
        + c.vocab_size * c.dim + ahead


def flops_per_token(c: ModelConfig, seq_len: int, mtp: bool = True) -> int:
    """Training FLOPs per token, forward and backward: 6N for the matmuls plus 12·L·H·Q·T for
    attention scores and values (PaLM, Chowdhery et al. 2022, appendix B); with latent attention
    the scores take the query/key width and the values their own: 6·L·H·(Q + V)·T. Multi-token
    prediction modules, trained with the model unless `mtp` is false, count as blocks."""
    value_dim = c.v_head_dim if c.latent else c.head_dim
    blocks = c.n_layers + (c.mtp_depth if mtp else 0)
    return 6 * matmul_params(c, mtp) + 6 * blocks * c.n_heads * (c.head_dim + value_dim) * seq_len


def measure_matmul_flops(device: torch.device, dtype: torch.dtype, seconds: float = 0.5, rounds: int = 5,
                         size: int | None = None, clock: Callable[[], float] = time.perf_counter) -> float:
    """FLOP/s of a square matmul on this device: the yardstick for MFU. `seconds` is shared by
    `rounds` timed rounds and the fastest round counts: other work on a busy machine only ever
    slows a round down, so the best is the nearest to what the device can do (a mean would count
    that work against the device and inflate MFU)."""
    n = size or (4096 if device.type == "cuda" else 1024)
    g = torch.Generator(device=device).manual_seed(0)        # leaves the global generator alone
    a = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    b = torch.randn(n, n, device=device, dtype=dtype, generator=g)
    a @ b                                                  # warm-up
    return max(_timed_round(a, b, device, seconds / rounds, clock) for _ in range(rounds))


def _timed_round(a: torch.Tensor, b: torch.Tensor, device: torch.device, seconds: float,
                 clock: Callable[[], float]) -> float:
    """FLOP/s of `a @ b` repeated for `seconds`, and at least three times."""
    _sync(device)
    count, start = 0, clock()
    while count < 3 or clock() - start < seconds:
        a @ b
        count += 1
        if device.type == "cuda" and count % 10:
            continue
        _sync(device)
    _sync(device)
    return 2 * a.shape[0] ** 3 * count / (clock() - start)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class EnergyMeter:
    """Joules used by this process's devices: NVML on GPUs, RAPL package counters on CPUs, or
    device power × time when neither is readable."""

    def __init__(self, device: torch.device, local_rank: int, cores: int, watts: float = 0.0) -> None:
        self.device, self.local_rank, self.cores = device, local_rank, cores
        self._given = bool(watts)
        self.watts = watts or DEFAULT_WATTS[device.type] * (cores if device.type == "cpu" else 1)
        self.method, self._read = self._pick()
        self._start = self._read()

    def _pick(self):
        if self.device.type == "cuda":
            try:
                import pynvml
                pynvml.nvmlInit()
                # NVML numbers the machine's GPUs; CUDA numbers the visible ones
                # (CUDA_VISIBLE_DEVICES), which torch maps back to NVML's index.
                handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda._get_nvml_device_index(self.device))
                pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
                return "nvml", lambda: pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3
            except Exception:
                pass
        else:
            files = sorted(RAPL.glob("intel-rapl:[0-9]/energy_uj"))
            try:
                for f in files:
                    int(f.read_text())
                if files:
                    return "rapl", lambda: sum(int(f.read_text()) for f in files) / 1e6
            except (OSError, ValueError):
                pass
        clock = time.perf_counter
        basis = (f"{DEFAULT_WATTS['cpu']:g} W per core × {self.cores} cores" if self.device.type == "cpu"
                 else f"{self.watts:g} W per GPU")
        if self._given:
            basis = f"{self.watts:g} W as configured"
        return f"estimate: {basis} × time (no power counter readable)", lambda: clock() * self.watts

    def joules(self) -> float:
        """Since this meter started: this process's share, so that the sum over ranks counts
        each device once. That is its own GPU (NVML) or its own estimate; RAPL's counters cover
        the whole CPU package that a node's ranks share, so only local rank 0 reports them."""
        if self.method == "rapl" and self.local_rank != 0:
            return 0.0
        return max(0.0, self._read() - self._start)


@dataclass
class Compute:
    """Running totals, carried in the training state so a resumed run adds to them."""
    model_flops: float = 0.0
    device_seconds: dict[str, float] = field(default_factory=dict)   # by device type
    energy_joules: float = 0.0
    energy_method: str = ""
    wall_seconds: float = 0.0

    def record(self, grid_intensity: float) -> dict:
        kwh = self.energy_joules / 3.6e6
        return {"model_flops": self.model_flops, "device_seconds": self.device_seconds,
                "wall_seconds": round(self.wall_seconds, 3), "energy_kwh": kwh,
                "energy_method": self.energy_method, "grid_intensity_g_per_kwh": grid_intensity,
                "co2e_kg": kwh * grid_intensity / 1000}


class TokenLedger:
    """Tokens read by training, by document, so the checkpoint can say which sources and licenses
    it actually consumed (not what was merely available). Counts are windows' tokens, inputs and
    the final target included, as the shard ranges in the data ledger record them. `order` is the
    data order's digest: sha256 chained over every step's reads (the windows, or the documents),
    so two runs with equal digests read the same data in the same order."""

    def __init__(self, data_dir: str | Path, shard_names: list[str]) -> None:
        from ..data.ledger import Ledger
        self.data_dir = Path(data_dir)
        with _closing(Ledger.open(self.data_dir)) as ledger:
            self.n_docs = int(ledger.q("SELECT COALESCE(MAX(id), 0) FROM documents")[0][0]) + 1
            self.ranges = []                      # per shard: (starts, ends, doc ids), sorted by start
            for name in shard_names:
                rows = np.array(ledger.q("SELECT start, end, doc_id FROM ranges WHERE shard = ? ORDER BY start",
                                         name), dtype=np.int64).reshape(-1, 3)
                self.ranges.append((rows[:, 0], rows[:, 1], rows[:, 2]))
        self.tokens = np.zeros(self.n_docs, dtype=np.int64)
        self.order = np.zeros(32, dtype=np.uint8)

    def chain(self, read: np.ndarray) -> None:
        """Fold one step's reads into the order digest (in place: the training state holds the same array)."""
        step = hashlib.sha256(self.order.tobytes() + np.ascontiguousarray(read, dtype=np.int64).tobytes())
        self.order[:] = np.frombuffer(step.digest(), dtype=np.uint8)

    def add(self, windows: list[tuple[int, int]], length: int) -> None:
        """Count the tokens of windows (shard index, start) of `length` tokens."""
        self.chain(np.array(windows, dtype=np.int64).reshape(-1, 2))
        for shard, start in windows:
            starts, ends, docs = self.ranges[shard]
            i = max(0, int(np.searchsorted(starts, start, side="right")) - 1)
            stop = start + length
            while i < len(starts) and starts[i] < stop:
                overlap = min(ends[i], stop) - max(starts[i], start)
                if overlap > 0:
                    self.tokens[docs[i]] += overlap
                i += 1

    def summary(self) -> dict:
        """Tokens consumed by source and by license (a record's own, else its source's), from the data ledger."""
        from ..data.ledger import LICENSE, Ledger
        used = np.flatnonzero(self.tokens)
        by_source: dict[str, int] = {}
        by_license: dict[str, int] = {}
        with _closing(Ledger.open(self.data_dir)) as ledger:
            digest = ledger.content_digest()
            for start in range(0, len(used), 500):
                chunk = used[start:start + 500].tolist()
                marks = ",".join("?" * len(chunk))
                for doc, source, license in ledger.q(
                        f"SELECT d.id, d.source_id, {LICENSE} FROM documents d JOIN sources s ON s.id = d.source_id "
                        f"LEFT JOIN {ledger.table('records')} rec ON rec.doc_id = d.id WHERE d.id IN ({marks})",
                        *chunk):
                    n = int(self.tokens[doc])
                    by_source[source] = by_source.get(source, 0) + n
                    by_license[license] = by_license.get(license, 0) + n
        return {"data": str(self.data_dir), "ledger_digest": digest, "tokens": int(self.tokens.sum()),
                "documents": int(len(used)), "order_digest": self.order.tobytes().hex() if self.order.any() else None,
                "tokens_by_source": dict(sorted(by_source.items(), key=lambda kv: -kv[1])),
                "tokens_by_license": dict(sorted(by_license.items(), key=lambda kv: -kv[1]))}
