"""Which device and numeric precision a process computes in: pure rules over the environment.

    device = resolve_device("cuda", env=os.environ, cuda_count=torch.cuda.device_count())
    precision = resolve_precision("auto", device, bf16_supported=True, where="train.precision")
    with autocast(device, precision):
        loss = model(x)

Under a launcher several processes share one machine, and each must take its own GPU: ``cuda``
means ``cuda:LOCAL_RANK`` under torchrun, ``cuda:SLURM_LOCALID`` under srun, and, for a batch
split with ``shard i/n`` and neither variable, ``cuda:(i - 1) mod n_gpus`` (n shards started by
hand on one n-GPU machine take one GPU each). An explicit ``cuda:N`` is honoured when it exists,
and refused where several training processes would share it.

Precision: ``fp32``, ``bf16`` (autocast; on CPU as well as CUDA) or ``fp16`` (autocast with loss
scaling; CUDA only). ``auto`` is bf16 on a GPU that has it, fp16 on an older GPU, fp32 on a CPU.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from typing import Literal

import torch

from stainldm.errors import InputError

Precision = Literal["fp32", "bf16", "fp16"]
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def local_rank(env: Mapping[str, str]) -> tuple[str, int] | None:
    """The launcher's per-machine process index: ``("LOCAL_RANK", i)`` (torchrun), else
    ``("SLURM_LOCALID", i)`` (srun), else None.

    Raises:
        InputError: the variable is not a non-negative integer.
    """
    for var in ("LOCAL_RANK", "SLURM_LOCALID"):
        if var in env:
            try:
                value = int(env[var])
            except ValueError as exc:
                raise InputError(f"{var}={env[var]!r} is not an integer; fix the launcher's environment") from exc
            if value < 0:
                raise InputError(f"{var}={value} must be 0 or more; fix the launcher's environment")
            return var, value
    return None


def resolve_device(name: str, *, env: Mapping[str, str], cuda_count: int, shard: tuple[int, int] | None = None,
                   processes: int = 1) -> torch.device:
    """The device that ``name`` means for this process.

    Args:
        name: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        env: the process environment (launcher variables, see the module docstring).
        cuda_count: CUDA devices visible to this process (``torch.cuda.device_count()``).
        shard: ``(index, count)`` (0-based) of a batch split, for ``cuda`` without a launcher variable.
        processes: processes that train together (the DDP world size); ``cuda:N`` is refused when
            they would all take the same GPU.

    Raises:
        InputError: an unknown name, no GPU for ``cuda``, or a GPU index this machine lacks; the
            message names the device option and what to do.
    """
    name = name.strip().lower()
    if name == "auto":
        name = "cuda" if cuda_count > 0 else "cpu"
    if name == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", name)
    if match is None:
        raise InputError(f"device '{name}': use cpu, cuda, cuda:N or auto")
    if cuda_count == 0:
        raise InputError(f"device {name}: no CUDA GPU is visible to this process; use device cpu (or check "
                         "CUDA_VISIBLE_DEVICES and the driver)")
    have = "1 CUDA GPU (cuda:0)" if cuda_count == 1 else f"{cuda_count} CUDA GPUs (cuda:0 … cuda:{cuda_count - 1})"
    rank = local_rank(env)
    if match.group(1) is not None:
        index = int(match.group(1))
        if index >= cuda_count:
            raise InputError(f"device {name}: this machine has {have}; use cuda (one GPU per process) or an index "
                             "it has")
        if processes > 1 and (rank is None or rank[1] != index):
            raise InputError(f"device {name} with {processes} training processes: every process would use that one "
                             "GPU; use device cuda, and each process takes cuda:LOCAL_RANK")
        return torch.device("cuda", index)
    if rank is not None:
        var, index = rank
        if index >= cuda_count:
            raise InputError(f"device cuda: {var}={index} but this machine has {have}; start at most {cuda_count} "
                             "processes per machine (torchrun --nproc_per_node, srun --ntasks-per-node)")
        return torch.device("cuda", index)
    if shard is not None:
        return torch.device("cuda", shard[0] % cuda_count)
    return torch.device("cuda", 0)


def resolve_precision(name: str, device: torch.device, *, bf16_supported: bool, where: str = "precision") -> Precision:
    """``fp32``, ``bf16`` or ``fp16`` for ``name`` (one of :data:`PRECISIONS`) on ``device``.

    Args:
        bf16_supported: whether the device computes in bf16 (``torch.cuda.is_bf16_supported()`` on a
            GPU; CPU autocast always has it).
        where: the option's name in messages: a config key (``train.precision``) or a parameter in
            backticks (``"`precision`"``, which the CLI shows as its flag).

    Raises:
        InputError: an unknown name, fp16 on a CPU, or bf16 on a GPU without it.
    """
    if name not in PRECISIONS:
        raise InputError(f"{where} '{name}' is not one of {', '.join(PRECISIONS)}")
    if name == "auto":
        if device.type != "cuda":
            return "fp32"
        return "bf16" if bf16_supported else "fp16"
    if name == "fp16" and device.type != "cuda":
        raise InputError(f"{where} fp16 needs a CUDA GPU (fp16 with loss scaling); on {device.type} use bf16 or fp32")
    if name == "bf16" and device.type == "cuda" and not bf16_supported:
        raise InputError(f"{where} bf16: this GPU ({device}) does not compute in bf16; use fp16 or fp32")
    return name  # type: ignore[return-value]


def bf16_supported(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 (CPU autocast always does)."""
    return device.type != "cuda" or torch.cuda.is_bf16_supported()


def autocast(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """Mixed-precision autocast for ``precision`` on ``device`` (no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=DTYPES[precision])


def describe(device: torch.device) -> str:
    """A device's name for provenance: ``cpu`` or ``cuda:0 (NVIDIA H200)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)
