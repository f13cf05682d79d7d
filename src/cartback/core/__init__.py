"""The pure core: no I/O, no clock, no randomness. Time and ids are arguments."""
