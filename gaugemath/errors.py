"""Errors raised by gaugemath. Every error names the gauge, block and reason at fault."""

from __future__ import annotations


class GaugeError(ValueError):
    """A gauge was used on input it cannot handle.

    The message always has the form ``gauge '<name>', block '<block>': <reason>``
    so that a user sees at once which construction and which parameter failed.
    """

    def __init__(self, gauge: str, block: str | None, reason: str):
        self.gauge = gauge
        self.block = block
        self.reason = reason
        where = f"gauge '{gauge}'" + (f", block '{block}'" if block else "")
        super().__init__(f"{where}: {reason}")


class ProofError(AssertionError):
    """A symbolic check failed; the message carries the residual expression."""

    def __init__(self, gauge: str, check: str, residual: str):
        self.gauge = gauge
        self.check = check
        self.residual = residual
        super().__init__(f"gauge '{gauge}': check '{check}' failed; residual = {residual}")
