"""Building a ``transitions.Machine`` from an engine's transition table.

Every table (the client's, the server's, the client's initial-state ack watch)
is written as rows ``(trigger, sources, dest, before, after)``; this is the one
place that turns such a table into the shared machine that drives it (and
:mod:`leanjoin.adapters.cli.diagrams` draws it), and into the map of which
phases accept each trigger, the only legality check an engine makes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from typing import TypeAlias, TypeVar

from transitions import Machine

P = TypeVar("P", bound=enum.Enum)

# trigger, source phases, destination (None: an internal transition), callbacks
# before the change, callbacks after it. Callbacks are method names on the model.
Row: TypeAlias = tuple[str, tuple[P, ...], P | None, tuple[str, ...], tuple[str, ...]]


def build_machine(
    phases: type[P],
    table: Sequence[Row[P]],
    *,
    initial: P,
    on_enter: Mapping[P, tuple[str, ...]],
    default_on_enter: tuple[str, ...] = (),
    model_attribute: str = "phase",
) -> Machine:
    """One machine for every session of an engine. Sessions are its models
    without being registered (``Machine.events[name].trigger(model)``), since
    registration would keep every session alive for ever."""
    states = [
        {"name": phase, "on_enter": list(on_enter.get(phase, default_on_enter))} for phase in phases
    ]
    machine = Machine(
        model=None,
        states=states,
        initial=initial,
        auto_transitions=False,
        send_event=True,
        model_attribute=model_attribute,
    )
    for trigger, sources, dest, before, after in table:
        machine.add_transition(trigger, list(sources), dest, before=list(before), after=list(after))
    return machine


def sources_by_trigger(table: Sequence[Row[P]]) -> dict[str, frozenset[P]]:
    """For each trigger, the phases that have a row for it."""
    sources: dict[str, set[P]] = {}
    for trigger, from_phases, *_rest in table:
        sources.setdefault(trigger, set()).update(from_phases)
    return {trigger: frozenset(phases) for trigger, phases in sources.items()}
