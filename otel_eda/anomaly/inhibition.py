"""Inhibition: a firing alert mutes related, less important ones (Alertmanager's model).

An :class:`Inhibition` names its source alerts and its target alerts by exact label
matches, and the labels both must share; while a *source* alert fires, every *target*
alert with the same values of the ``equal`` labels is held back (a label missing on both
counts as equal, as in Alertmanager). An alert never inhibits itself. In a rules file::

    inhibit:
      - source_match: {alertname: ConsumerLagCritical}
        target_match: {alertname: ConsumerLagGrowing}
        equal: [messaging.destination.name, messaging.destination.partition.id,
                messaging.consumer.group.name]

Matchers compare any alert label: ``alertname``, ``rule``, ``severity``, ``service``,
``host``, ``scope`` and the rule's series labels.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

__all__ = ["Inhibition"]


@dataclasses.dataclass(frozen=True)
class Inhibition:
    """While an alert matching ``source_match`` fires, alerts matching ``target_match`` with
    the same ``equal`` labels are muted."""

    source_match: Mapping[str, str]
    target_match: Mapping[str, str]
    equal: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        for name in ("source_match", "target_match"):
            value = getattr(self, name)
            if not isinstance(value, Mapping) or not value:
                raise ValueError(f"{name} must be a non-empty mapping of label to value")
            object.__setattr__(self, name, MappingProxyType({str(k): str(v) for k, v in value.items()}))
        if isinstance(self.equal, str) or not isinstance(self.equal, Iterable):
            raise ValueError("equal must be a list of label names")
        object.__setattr__(self, "equal", tuple(str(label) for label in self.equal))

    @classmethod
    def from_mapping(cls, raw: Mapping[str, Any]) -> Inhibition:
        unknown = set(raw) - {"source_match", "target_match", "equal"}
        if unknown:
            raise ValueError(f"unknown field(s) {', '.join(sorted(map(str, unknown)))}")
        for required in ("source_match", "target_match"):
            if required not in raw:
                raise ValueError(f"missing field {required!r}")
        return cls(raw["source_match"], raw["target_match"], raw.get("equal") or ())

    def is_target(self, labels: Mapping[str, str]) -> bool:
        return all(labels.get(k) == v for k, v in self.target_match.items())

    def mutes(self, source: Mapping[str, str], target: Mapping[str, str]) -> bool:
        """Whether a firing alert labelled ``source`` mutes the alert labelled ``target``."""
        return (
            all(source.get(k) == v for k, v in self.source_match.items())
            and self.is_target(target)
            and all(source.get(label) == target.get(label) for label in self.equal)
        )
