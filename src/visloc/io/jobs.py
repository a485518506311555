"""What a batch job did, for any layer that runs one (pipelines, data preparation)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass
class JobSummary:
    """What a batch job did: counts and every skipped item with its one-line reason."""

    out: Path
    done: int = 0
    already_done: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """False only when nothing could be done and something failed."""
        return not (self.done == 0 and self.already_done == 0 and self.failed)

    def lines(self, what: str) -> list[str]:
        """Human-readable summary lines for the CLI."""
        out = [f"{what}: {self.done} new, {self.already_done} already done, {len(self.failed)} skipped -> "
               f"{self.out}"]
        out += [f"  skipped {name}: {reason}" for name, reason in self.failed]
        return out
