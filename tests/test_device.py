"""Device choice: cuda, then mps, then cpu; overridable; described for people."""

from __future__ import annotations

import threading

import pytest
import torch

from napari_unet.core.device import available_devices, describe_device, keep_freed_memory, select_device


def test_auto_picks_the_best_available(monkeypatch):
    monkeypatch.delenv("NAPARI_UNET_DEVICE", raising=False)
    best = available_devices()[0]
    assert select_device().type == best
    assert select_device("auto").type == best
    assert available_devices()[-1] == "cpu"


def test_cpu_override_and_environment(monkeypatch):
    monkeypatch.setenv("NAPARI_UNET_DEVICE", "cpu")
    assert select_device() == torch.device("cpu")
    assert select_device("cpu") == torch.device("cpu")


def test_describe_cpu_mentions_threads():
    before = torch.get_num_threads()
    try:
        for n, said in ((2, "CPU, 2 threads"), (1, "CPU, 1 thread")):  # (not "1 threads")
            torch.set_num_threads(n)
            assert describe_device("cpu") == said
    finally:
        torch.set_num_threads(before)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_torch_threads_follow_a_cpu_quota(monkeypatch):
    """torch starts a thread per core of the machine: in a container or job given two cores of 64, 64
    threads shared two cores' time. The first device chosen lowers them to the quota (never raises them,
    and not when OMP_NUM_THREADS says how many)."""
    import napari_unet.core.device as device
    import napari_unet.core.engine as engine

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(engine, "cpu_threads", lambda: 1)  # (what a quota of one core gives)
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        monkeypatch.setattr(device, "_QUOTA_FOLLOWED", threading.local())
        select_device("cpu")
        assert torch.get_num_threads() == 2  # the user's setting stands
        monkeypatch.delenv("OMP_NUM_THREADS")
        monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
        monkeypatch.setattr(device, "_QUOTA_FOLLOWED", threading.local())
        select_device("cpu")
        assert torch.get_num_threads() == 1
        torch.set_num_threads(2)  # set later, by a user: it stays
        select_device("cpu")
        assert torch.get_num_threads() == 2
        monkeypatch.setattr(engine, "cpu_threads", lambda: 8)
        monkeypatch.setattr(device, "_QUOTA_FOLLOWED", threading.local())
        select_device("cpu")
        assert torch.get_num_threads() == 2  # only ever lowered
        # a worker thread's first choice lowers its own (with OpenMP, each thread has its count)
        monkeypatch.setattr(engine, "cpu_threads", lambda: 1)
        seen = []
        worker = threading.Thread(target=lambda: (select_device("cpu"), seen.append(torch.get_num_threads())))
        worker.start()
        worker.join()
        assert seen == [1]
    finally:
        torch.set_num_threads(threads)


def test_missing_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        select_device("cuda")


def test_unknown_device_is_a_clear_error():
    with pytest.raises(ValueError, match="choose one of"):
        select_device("tpu")


def test_keep_freed_memory_takes_effect_with_glibc():
    """In a child process: the setting lasts for the process, and the test session must not run faster
    (or slower) than users' napari after it."""
    import platform
    import subprocess
    import sys

    glibc = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"
    code = ("import torch; from napari_unet.core.device import keep_freed_memory; ok = keep_freed_memory(); "
            "block = torch.empty(64 << 20, dtype=torch.uint8); block.fill_(1); print(ok, int(block[-1]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == [str(glibc), "1"]  # took effect with glibc; memory is handed out as usual afterwards


def test_a_device_asked_through_the_environment_is_named_in_the_message(monkeypatch):
    """NAPARI_UNET_DEVICE set to a device that is not there (or no device): the message names the
    variable, not an 'auto' or None the user never typed; describe_device of an absent GPU is the
    same clear ValueError (torch's AssertionError before)."""
    monkeypatch.setenv("NAPARI_UNET_DEVICE", "gpu")
    with pytest.raises(ValueError, match=r"NAPARI_UNET_DEVICE='gpu' is not a device.*unset NAPARI_UNET_DEVICE"):
        select_device(None)
    if not torch.cuda.is_available():
        monkeypatch.setenv("NAPARI_UNET_DEVICE", "cuda")
        with pytest.raises(ValueError, match=r"NAPARI_UNET_DEVICE='cuda' was requested but no CUDA GPU"):
            select_device("auto")
        with pytest.raises(ValueError, match=r"Device 'cuda' was requested but no CUDA GPU"):
            describe_device("cuda")
    monkeypatch.delenv("NAPARI_UNET_DEVICE")
    with pytest.raises(ValueError, match=r"Device 'cuda:x' is not a device"):
        select_device("cuda:x")


def test_a_device_given_back_with_its_index_or_empty_is_taken():
    """``model.device`` on a Mac is mps:0 (a CPU tensor's may be cpu:0): taken back as the device;
    an empty string means auto, as before."""
    assert select_device("cpu:0") == torch.device("cpu")
    assert select_device(torch.device("cpu", 0)) == torch.device("cpu")
    assert select_device("") == select_device("auto")
    with pytest.raises(ValueError, match="does not exist"):
        select_device("cpu:3")


def test_bf16_is_chosen_only_on_gpus_that_compute_it():
    """``torch.cuda.is_bf16_supported()`` says yes on every CUDA GPU (emulated, slowly, on a T4 or
    V100); the choice asks the GPU's compute capability. Without CUDA: no bf16 from the GPU side."""
    from napari_unet.core.device import cuda_has_fast_bf16
    from napari_unet.core.optimise import autocast_dtype

    assert not cuda_has_fast_bf16("cpu")
    if torch.cuda.is_available():
        fast = torch.cuda.get_device_capability(0) >= (8, 0)
        assert cuda_has_fast_bf16("cuda:0") == fast
        assert autocast_dtype(torch.device("cuda:0"), None) == (torch.bfloat16 if fast else torch.float16)
    else:
        assert not cuda_has_fast_bf16("cuda")


def test_work_on_apples_gpu_takes_turns_and_other_devices_hold_nothing():
    """Two threads on MPS at once abort the process inside Metal (Segment while Fine-tune trains):
    the network's work there is done under one lock; the CPU and CUDA hold none."""
    import threading
    import time

    from napari_unet.core.device import device_lock

    assert device_lock("mps") is device_lock(torch.device("mps")) and device_lock("mps") is not device_lock("cpu")
    inside, overlaps = [], []

    def work() -> None:
        for _ in range(5):
            with device_lock("mps"):
                inside.append(1)
                overlaps.append(len(inside))
                time.sleep(0.002)
                inside.pop()

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(overlaps) == 15 and max(overlaps) == 1
    with device_lock("cpu"), device_lock("cuda:0"):  # (nothing held: no turns to take)
        pass
