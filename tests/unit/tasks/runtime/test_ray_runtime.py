"""tasks.runtime.ray_runtime: actor sizing and the scoped Ray Data settings."""

from __future__ import annotations

import pytest

from tasks.runtime.ray_runtime import actor_resources, data_context


def test_actor_cpus_leave_room_for_the_read_tasks() -> None:
    assert actor_resources({"CPU": 2.0}, 1) == (1.0, None, 2)
    assert actor_resources({"CPU": 2.0}, 2) == (0.75, None, 1)
    assert actor_resources({"CPU": 1.0}, 3) == (0.5, None, 1)  # floor of half a CPU
    assert actor_resources({"CPU": 16.0}, 4, threads=3) == (1.0, None, 3)
    assert actor_resources({"CPU": 4.0}, 0) == (1.0, None, 4)  # 0 actors counts as one


def test_gpu_only_when_requested_and_present() -> None:
    assert actor_resources({"CPU": 8.0, "GPU": 1.0}, 2, gpus_per_actor=0.5) == (1.0, 0.5, 4)
    assert actor_resources({"CPU": 2.0}, 2, gpus_per_actor=0.5) == (0.75, None, 1)
    assert actor_resources({"CPU": 8.0, "GPU": 1.0}, 2) == (1.0, None, 4)


def test_data_context_restores_settings_also_on_error() -> None:
    import ray.data

    ctx = ray.data.DataContext.get_current()
    before = (ctx.target_max_block_size, ctx.enable_progress_bars)
    with data_context(target_max_block_size=1, enable_progress_bars=not before[1]) as inner:
        assert inner is ctx and ctx.target_max_block_size == 1
    assert (ctx.target_max_block_size, ctx.enable_progress_bars) == before
    with pytest.raises(KeyError), data_context(target_max_block_size=7):
        raise KeyError("stage failed")
    assert ctx.target_max_block_size == before[0]
