//! The replicator's library surface: only the session codec, so that the
//! fuzz targets (`fuzz/fuzz_targets/frame_codec.rs`) drive the very code the
//! `lsync` binary runs. Everything else stays private to the binary.

pub mod protocol;
