"""lcm: a JAX research codebase for long-context language modeling."""

__version__ = "0.1.0"
