"""Device and precision rules, through the launcher variables: torchrun, srun and shards."""

from __future__ import annotations

import pytest
import torch

from stainldm.device import autocast, local_rank, resolve_device, resolve_precision
from stainldm.errors import InputError

CPU, GPU0 = torch.device("cpu"), torch.device("cuda", 0)


@pytest.mark.parametrize(("name", "env", "count", "shard", "expected"), [
    ("auto", {}, 0, None, "cpu"),
    ("auto", {}, 2, None, "cuda:0"),
    ("cpu", {"LOCAL_RANK": "3"}, 4, None, "cpu"),
    ("cuda", {}, 1, None, "cuda:0"),
    ("cuda", {"LOCAL_RANK": "3", "RANK": "11"}, 4, None, "cuda:3"),  # torchrun: the local rank, not the global one
    ("CUDA", {"SLURM_LOCALID": "1", "SLURM_PROCID": "5"}, 2, None, "cuda:1"),  # srun
    ("cuda", {"LOCAL_RANK": "0", "SLURM_LOCALID": "1"}, 2, None, "cuda:0"),  # torchrun inside a SLURM job
    ("auto", {"LOCAL_RANK": "1"}, 2, None, "cuda:1"),
    ("cuda", {}, 4, (2, 8), "cuda:2"),  # --shard 3/8 started by hand: one GPU per shard
    ("cuda", {}, 4, (6, 8), "cuda:2"),
    ("cuda", {"LOCAL_RANK": "1"}, 4, (6, 8), "cuda:1"),  # the launcher's variable wins over the shard
    ("cuda:1", {}, 2, None, "cuda:1"),  # one process: an explicit GPU is honoured
    ("cuda:1", {"LOCAL_RANK": "0"}, 2, (0, 2), "cuda:1"),  # sharded staining: processes are independent
])
def test_resolve_device(name, env, count, shard, expected):
    assert resolve_device(name, env=env, cuda_count=count, shard=shard) == torch.device(expected)


def test_an_explicit_gpu_under_a_training_launcher_is_honoured_only_where_it_is_the_ranks_own():
    assert resolve_device("cuda:1", env={"LOCAL_RANK": "1"}, cuda_count=2, processes=2) == torch.device("cuda", 1)
    with pytest.raises(InputError, match=r"^device cuda:1 with 2 training processes: every process would use that "
                                         r"one GPU; use device cuda, and each process takes cuda:LOCAL_RANK$"):
        resolve_device("cuda:1", env={"LOCAL_RANK": "0"}, cuda_count=2, processes=2)


@pytest.mark.parametrize(("name", "env", "count", "message"), [
    ("cuda:7", {}, 1, r"^device cuda:7: this machine has 1 CUDA GPU \(cuda:0\); use cuda"),
    ("cuda:2", {}, 2, r"^device cuda:2: this machine has 2 CUDA GPUs \(cuda:0 … cuda:1\)"),
    ("cuda", {}, 0, r"^device cuda: no CUDA GPU is visible to this process; use device cpu"),
    ("cuda:0", {}, 0, r"^device cuda:0: no CUDA GPU"),
    ("cuda", {"LOCAL_RANK": "2"}, 2, r"^device cuda: LOCAL_RANK=2 but this machine has 2 CUDA GPUs .*start at most 2 "
                                     r"processes per machine"),
    ("cuda", {"SLURM_LOCALID": "x"}, 2, r"^SLURM_LOCALID='x' is not an integer"),
    ("cuda", {"LOCAL_RANK": "-1"}, 2, r"^LOCAL_RANK=-1 must be 0 or more"),
    ("tpu", {}, 1, r"^device 'tpu': use cpu, cuda, cuda:N or auto$"),
    ("cuda:", {}, 1, r"^device 'cuda:': use cpu, cuda, cuda:N or auto$"),
])
def test_bad_devices_are_one_line_errors_naming_the_option(name, env, count, message):
    with pytest.raises(InputError, match=message) as exc:
        resolve_device(name, env=env, cuda_count=count)
    assert "\n" not in str(exc.value)


def test_local_rank_reads_torchrun_then_slurm():
    assert local_rank({}) is None
    assert local_rank({"SLURM_LOCALID": "2"}) == ("SLURM_LOCALID", 2)
    assert local_rank({"LOCAL_RANK": "1", "SLURM_LOCALID": "2"}) == ("LOCAL_RANK", 1)


@pytest.mark.parametrize(("name", "device", "bf16", "expected"), [
    ("auto", CPU, True, "fp32"),
    ("auto", GPU0, True, "bf16"),
    ("auto", GPU0, False, "fp16"),  # an older GPU (V100, T4)
    ("bf16", CPU, True, "bf16"),  # CPU autocast computes in bf16
    ("fp32", GPU0, False, "fp32"),
    ("fp16", GPU0, False, "fp16"),
])
def test_resolve_precision(name, device, bf16, expected):
    assert resolve_precision(name, device, bf16_supported=bf16) == expected


def test_bad_precisions_name_the_option():
    with pytest.raises(InputError, match=r"^--precision fp16 needs a CUDA GPU \(fp16 with loss scaling\); on cpu use "
                                         r"bf16 or fp32$"):
        resolve_precision("fp16", CPU, bf16_supported=True, where="--precision")
    with pytest.raises(InputError, match=r"^train.precision 'half' is not one of auto, fp32, bf16, fp16$"):
        resolve_precision("half", CPU, bf16_supported=True, where="train.precision")


def test_bf16_on_a_gpu_without_it_is_refused():
    with pytest.raises(InputError, match=r"^--precision bf16: this GPU \(cuda:0\) does not compute in bf16; use fp16 "
                                         r"or fp32$"):
        resolve_precision("bf16", GPU0, bf16_supported=False, where="--precision")


def test_autocast_computes_a_convolution_in_bf16_on_the_cpu_and_fp32_is_untouched():
    conv = torch.nn.Conv2d(2, 4, 3)
    x = torch.randn(1, 2, 8, 8)
    with autocast(CPU, "bf16"):
        assert conv(x).dtype == torch.bfloat16
    with autocast(CPU, "fp32"):
        assert conv(x).dtype == torch.float32
