"""The garbage-collector tuning of a rollout command: only when the command owns its process.

Run through ``main()`` a rollout's set-up runs without cyclic collection and what it built is
frozen once the engine starts; invoked in-process (as here, or by the daemon) nothing changes.
"""

from __future__ import annotations

import gc
from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from orchestrator.cli.process import OwnProcess, rollout_collector_tuning


@pytest.fixture(autouse=True)
def collector_restored() -> Iterator[None]:
    yield
    gc.unfreeze()
    gc.enable()


def observing_command(seen: dict[str, object], *, fail_in_setup: bool = False) -> click.Command:
    @click.command()
    def command() -> None:
        with rollout_collector_tuning() as setup_done:
            seen["during_setup"] = gc.isenabled()
            if fail_in_setup:
                raise click.ClickException("set-up failed")
            frozen_before = gc.get_freeze_count()
            setup_done()
            seen["after_setup"] = gc.isenabled()
            seen["newly_frozen"] = gc.get_freeze_count() - frozen_before
        seen["after_block"] = gc.isenabled()

    return command


def test_a_command_that_owns_its_process_sets_up_without_collection_then_freezes() -> None:
    seen: dict[str, object] = {}

    result = CliRunner().invoke(observing_command(seen), [], obj=OwnProcess())

    assert result.exit_code == 0, result.output
    assert seen["during_setup"] is False
    assert seen["after_setup"] is True
    assert isinstance(seen["newly_frozen"], int)
    assert seen["newly_frozen"] > 0
    assert seen["after_block"] is True


def test_a_failed_set_up_turns_the_collector_back_on() -> None:
    seen: dict[str, object] = {}
    frozen_before = gc.get_freeze_count()

    result = CliRunner().invoke(observing_command(seen, fail_in_setup=True), [], obj=OwnProcess())

    assert result.exit_code == 1
    assert seen["during_setup"] is False
    assert gc.isenabled()
    assert gc.get_freeze_count() == frozen_before


def test_a_command_invoked_in_process_leaves_the_collector_alone() -> None:
    seen: dict[str, object] = {}

    result = CliRunner().invoke(observing_command(seen), [])

    assert result.exit_code == 0, result.output
    assert seen == {
        "during_setup": True,
        "after_setup": True,
        "newly_frozen": 0,
        "after_block": True,
    }
