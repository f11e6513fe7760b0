import os
import signal

import torch

from train_sft.cores import CoreRequests, available_cores


def test_sigusr1_asks_for_every_core_once_and_the_old_handler_comes_back():
    handler_before, threads_before = signal.getsignal(signal.SIGUSR1), torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        with CoreRequests() as cores:
            assert cores.take() is None  # nothing asked: nothing changes
            assert torch.get_num_threads() == 1
            os.kill(os.getpid(), signal.SIGUSR1)
            assert cores.take() == (1, available_cores())
            assert torch.get_num_threads() == available_cores()
            assert cores.take() is None  # granted once
        assert signal.getsignal(signal.SIGUSR1) is handler_before
    finally:
        torch.set_num_threads(threads_before)


def test_processes_of_one_machine_share_its_cores(monkeypatch):
    alone = available_cores()
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert available_cores() == max(1, alone // 2)
