"""Failure verdicts on real processes: success before patterns, the first failed rank's own
evidence, out of memory only with evidence of it."""

from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

import optuna

from engine.launch import LaunchResult, launch
from tests.helpers import engine_pids, tiny_config, wait_until, write_config
from tuner.config import LauncherConfig
from tuner.failures import classify, is_complete
from tuner.launch import TrialOutcome, run_trial
from tuner.trial_record import finish as _finish

# one rank of the engine, with something around it: a line in the log, a memory limit, an abort
WRAPPER = """
import json, os, resource, sys
from engine.config import RunConfig
from engine.runner import main_rank

mode, config = sys.argv[1], sys.argv[2]
if mode == "say-oom":
    print("warning: out of memory in the page cache, retrying with a smaller buffer")
if mode == "limit-memory":
    # the address space the rank has after its imports, and 1 GiB more
    from engine.metrics.memory import status_bytes
    from engine.units import GIB

    vm = status_bytes("VmSize")
    resource.setrlimit(resource.RLIMIT_AS, (vm + GIB, vm + GIB))
cfg = RunConfig.from_json_file(config)
code = main_rank(cfg)
sys.stdout.flush()
sys.stderr.flush()
if mode == "truncate-then-abort":
    with open(cfg.out) as f:
        result = json.load(f)
    result["losses"] = result["losses"][:1]
    with open(cfg.out, "w") as f:
        json.dump(result, f)
if mode.endswith("abort"):
    os.abort()
os._exit(code)
"""


def _wrapped(tmp_path: Path, mode: str, cfg=None, nproc: int = 1):
    """Launch the wrapped engine: (LaunchResult, the result JSON or None)."""
    script = tmp_path / "wrapper.py"
    script.write_text(WRAPPER)
    cfg, path = write_config(
        cfg or tiny_config(train={"steps": 4, "warmup_steps": 1}, peak_flops=1e12), tmp_path / mode
    )
    res = launch(
        [sys.executable, str(script), mode, str(path)],
        nproc=nproc,
        log_dir=tmp_path / mode,
        timeout_s=180,
    )
    out = Path(cfg.out)
    return res, (json.loads(out.read_text()) if out.exists() else None)


def test_a_finished_run_that_prints_out_of_memory_is_a_success(tmp_path):
    res, result = _wrapped(tmp_path, "say-oom")
    assert "out of memory" in res.log_paths[0].read_text()
    verdict = classify(res, result)
    assert verdict.reason is None, verdict


def test_a_real_cpu_allocation_failure_is_oom(tmp_path):
    # a 2**23-token vocabulary: a 4 GiB embedding, above the rank's 1 GiB of headroom
    big = tiny_config(model={"vocab_size": 2**23})
    res, result = _wrapped(tmp_path, "limit-memory", big)
    assert result is None and res.returncodes == [1]
    verdict = classify(res, result)
    assert verdict.reason == "oom", verdict
    assert verdict.detail.startswith("rank 0: ")
    assert "DefaultCPUAllocator: can't allocate memory" in verdict.detail


def test_abort_after_a_complete_result_is_a_success(tmp_path):
    res, result = _wrapped(tmp_path, "abort")
    assert res.returncodes == [-signal.SIGABRT] and is_complete(result)
    assert classify(res, result).reason is None


def test_abort_after_an_incomplete_result_is_a_crash(tmp_path):
    res, result = _wrapped(tmp_path, "truncate-then-abort")
    assert res.returncodes == [-signal.SIGABRT] and result["status"] == "ok"
    verdict = classify(res, result)
    assert verdict.reason == "crash"
    assert verdict.detail.startswith("rank 0 exited with signal 6 (SIGABRT)")


SEGV_IN_RANK_1 = """
import datetime, os, signal, time
import torch, torch.distributed as dist
dist.init_process_group("gloo", timeout=datetime.timedelta(seconds=60))
if dist.get_rank() == 1:
    os.kill(os.getpid(), signal.SIGSEGV)
time.sleep(0.5)
dist.all_reduce(torch.ones(4))  # rank 0: the peer is gone ("Connection reset by peer")
"""


def test_a_segfault_in_rank_1_is_reported_as_rank_1s_signal(tmp_path):
    res = launch([sys.executable, "-c", SEGV_IN_RANK_1], nproc=2, log_dir=tmp_path, timeout_s=120)
    assert res.returncodes[1] == -signal.SIGSEGV
    assert res.first_failed == 1
    verdict = classify(res, None)
    assert verdict.reason == "crash" and verdict.rank == 1
    assert verdict.detail.startswith("rank 1 exited with signal 11 (SIGSEGV)"), verdict.detail


def _rank_pid(config_path: Path, rank: int) -> int | None:
    """The live rank whose output goes to its log beside ``config_path`` (forked ranks share
    their zygote's command line and environment block, so those do not tell them apart)."""
    log = str(config_path.parent / f"rank{rank}.log")
    for pid in engine_pids():
        try:
            if os.readlink(f"/proc/{pid}/fd/1") == log:
                return pid
        except OSError:
            continue
    return None


def test_kill_9_of_one_rank_is_a_crash_naming_it_not_oom(tmp_path):
    cfg = tiny_config(parallel={"dp": 2}, train={"steps": 2000})
    config = tmp_path / "config.json"
    outcomes = []
    trial = threading.Thread(
        target=lambda: outcomes.append(
            run_trial(cfg, trial_dir=tmp_path, launcher=LauncherConfig(timeout_s=300))
        )
    )
    trial.start()
    try:
        assert wait_until(lambda: _rank_pid(config, 1) is not None, timeout_s=60)
        time.sleep(3.0)  # into its start-up or training: either way it is a kill, not an OOM
        os.kill(_rank_pid(config, 1), signal.SIGKILL)
        trial.join(timeout=60)
    finally:
        for rank in (0, 1):  # only if the launcher did not end the trial itself
            pid = _rank_pid(config, rank)
            if pid is not None:
                os.kill(pid, signal.SIGKILL)
        trial.join(timeout=60)
    (outcome,) = outcomes
    assert outcome.reason == "crash", outcome
    assert outcome.detail.startswith("rank 1 was killed by signal 9 (SIGKILL)"), outcome.detail


def _launched(tmp_path: Path, codes, exit_s, logs: list[str]) -> LaunchResult:
    paths = []
    for rank, text in enumerate(logs):
        paths.append(tmp_path / f"rank{rank}.log")
        paths[-1].write_text(text)
    return LaunchResult(codes, False, 1.0, paths, exit_s=exit_s, pids=[-1] * len(codes))


def test_the_first_rank_to_fail_by_time_is_the_cause(tmp_path):
    reset = "RuntimeError: Connection reset by peer\n"
    oom = "RuntimeError: DefaultCPUAllocator: can't allocate memory: you tried to allocate 8\n"
    launched = _launched(tmp_path, [1, 1], [2.5, 2.0], [reset, oom])
    verdict = classify(launched, None)
    assert (verdict.reason, verdict.rank) == ("oom", 1)
    # the same logs, rank 0 first: its own error is the cause, rank 1's message a consequence
    launched = _launched(tmp_path, [1, 1], [2.0, 2.5], [reset, oom])
    verdict = classify(launched, None)
    assert (verdict.reason, verdict.rank) == ("crash", 0)
    assert verdict.detail == "rank 0: RuntimeError: Connection reset by peer"


def test_allocator_messages_are_oom_and_a_user_line_is_not(tmp_path):
    for line in (
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB",
        "MemoryError",
        "terminate called after throwing an instance of 'std::bad_alloc'",
        "OSError: [Errno 12] Cannot allocate memory",
    ):
        launched = _launched(tmp_path, [1], [1.0], [f"{line}\n"])
        assert classify(launched, None).reason == "oom", line
    launched = _launched(
        tmp_path, [1], [1.0], ["print: the cache ran out of memory\nValueError: x\n"]
    )
    verdict = classify(launched, None)
    assert (verdict.reason, verdict.detail) == ("crash", "rank 0: ValueError: x")


def test_sigkill_is_oom_only_with_the_kernels_record_of_that_pid(tmp_path):
    kmsg = tmp_path / "kmsg"
    # the kernel's two lines for one kill (mm/oom_kill.c), in /dev/kmsg's record format
    kmsg.write_text(
        "6,811,5120000,-;oom-kill:constraint=CONSTRAINT_MEMCG,nodemask=(null),cpuset=/,"
        "mems_allowed=0,oom_memcg=/trial,task_memcg=/trial,task=python,pid=4243,uid=0\n"
        "3,812,5120001,-;Memory cgroup out of memory: Killed process 4243 (python) "
        "total-vm:9000000kB, anon-rss:8000000kB, file-rss:0kB, shmem-rss:0kB\n"
    )
    launched = _launched(tmp_path, [1, -signal.SIGKILL], [3.0, 2.0], ["", ""])
    launched.pids = [4242, 4243]
    verdict = classify(launched, None, kmsg=kmsg)
    assert (verdict.reason, verdict.rank) == ("oom", 1), verdict
    assert verdict.detail == "rank 1 was killed by the kernel's OOM killer"
    launched.pids = [4242, 4244]  # another pid: a kill by someone
    verdict = classify(launched, None, kmsg=kmsg)
    assert (verdict.reason, verdict.detail) == ("crash", "rank 1 was killed by signal 9 (SIGKILL)")
    verdict = classify(launched, None, kmsg=tmp_path / "unreadable")
    assert verdict.reason == "crash" and "kernel log is unreadable" in verdict.detail


def test_complete_means_status_ok_every_success_key_and_every_step():
    full = {
        "status": "ok",
        "tokens_per_s": 1.0,
        "step_time_s": 1.0,
        "step_times_s": [1.0] * 3,
        "peak_mem_bytes": 1,
        "final_loss": 1.0,
        "losses": [1.0] * 3,
        "first_step": 0,
        "config": {"train": {"steps": 3}},
    }
    assert is_complete(full)
    assert not is_complete({**full, "status": "nan"})
    assert not is_complete({**full, "losses": [1.0] * 2})
    assert is_complete({**full, "losses": [1.0], "first_step": 2})
    assert not is_complete({k: v for k, v in full.items() if k != "tokens_per_s"})
    assert not is_complete(None)


def test_the_progress_line_keeps_the_allocator_message(tmp_path):
    study = optuna.create_study(direction="maximize")
    detail = (
        "rank 0: RuntimeError: [enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: "
        "can't allocate memory: you tried to allocate 4294967296 bytes."
    )
    outcome = TrialOutcome(ok=False, result=None, reason="oom", detail=detail, log_dir=tmp_path)
    line = _finish(study, study.ask(), outcome, ["tokens_per_s"])
    assert "DefaultCPUAllocator: can't allocate memory" in line
