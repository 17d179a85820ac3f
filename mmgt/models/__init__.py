"""Networks (``nn.Module`` with a config dataclass, no I/O): SMGA now, stage-2 nets later."""
