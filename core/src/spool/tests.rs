//! Unit tests of the spool (integration tests with crashes and full disks are in `tests/spool_*.rs`).
