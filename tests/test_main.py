"""create_app: what the lifespan builds and wires."""

from __future__ import annotations

from app.main import create_app
from app.state import AppState
from tests.conftest import SettingsFactory


async def test_lifespan_builds_state_and_registers_the_sweeps(
    make_settings: SettingsFactory,
) -> None:
    app = create_app(make_settings(history_ttl_s=1))
    async with app.router.lifespan_context(app):
        state: AppState = app.state.agenthost
        assert sorted(await state.janitor.run_once()) == [
            "agent_cache", "memory", "memory_threads", "stream_replay", "streams", "stuck_sends"
        ]
        # the embedded store's byte budget is a quarter of the memory limit
        assert state.backend.stats()["max_bytes"] == state.governor.limit.bytes // 4
        assert state.janitor.running  # started by the lifespan
    assert not state.janitor.running  # and stopped with it


async def test_two_apps_share_no_state(make_settings: SettingsFactory) -> None:
    first, second = create_app(make_settings()), create_app(make_settings())
    async with first.router.lifespan_context(first), second.router.lifespan_context(second):
        one: AppState = first.state.agenthost
        two: AppState = second.state.agenthost
        assert one.backend is not two.backend and one.streams is not two.streams
        assert one.agent_factory.graph is not two.agent_factory.graph
