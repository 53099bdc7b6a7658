//! Placeholder: filled in by the checkpoint-reader work.
