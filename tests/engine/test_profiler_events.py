"""The light event records read from the profiler's raw results carry what ``prof.events()``
gives for every attribute the communication summary and the timeline read, on a real profile
of training steps with a collective."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.distributed as dist
from torch.profiler import ProfilerActivity, profile, record_function

from engine.config import ModelConfig
from engine.metrics import comm
from engine.metrics.profiler_events import read_events
from engine.metrics.timeline import BACKWARD, FORWARD, PREFIX, STEP, Timeline
from engine.model import GPT

FIELDS = ("name", "thread", "id", "linked_correlation_id", "input_shapes", "input_dtypes")


@pytest.fixture
def group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _record(ev) -> tuple:
    shown = tuple(getattr(ev, f) for f in FIELDS)
    return (*shown, ev.time_range.start, ev.time_range.end, ev.device_type)


def test_records_match_function_events(group) -> None:
    torch.manual_seed(0)
    model = GPT(ModelConfig(n_layers=2))
    x = torch.randint(0, 256, (2, 16))
    # as the engine profiles a CPU rank (engine.hooks)
    with profile(
        activities=[ProfilerActivity.CPU], record_shapes=True, profile_memory=True
    ) as prof:
        for _ in range(2):
            with record_function(PREFIX + STEP):
                with record_function(PREFIX + FORWARD):
                    loss = model(x).float().pow(2).mean()
                with record_function(PREFIX + BACKWARD):
                    loss.backward()
                grads = torch.cat([p.grad.flatten() for p in model.parameters()])
                dist.all_reduce(grads)
    light = read_events(prof)
    # events() adds the allocations outside every op as "[memory]" events; nothing reads them
    full = [e for e in prof.events() if e.name != "[memory]"]
    assert len(light) == len(full) > 100
    assert [_record(e) for e in light] == [_record(e) for e in full]
    ours, theirs = comm.summarize(light), comm.summarize(full)
    assert ours.per_step(2) == theirs.per_step(2) and ours.count >= 2
    a = Timeline.from_events(light, comm.timeline_kind)
    b = Timeline.from_events(full, comm.timeline_kind)
    assert dataclasses.asdict(a) == dataclasses.asdict(b) and a.breakdown() == b.breakdown()
