//! Benchmarks of vmta live in this package: criterion benches for the hot paths (`cargo bench -p
//! vmta-benches`). The end-to-end harness is `vmta bench`.
