"""The built-in local renderer: procedural, deterministic media made offline."""
