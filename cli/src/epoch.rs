//! Replay epochs.
