"""Step kinds: each turns a step (and earlier outputs) into a completion."""
