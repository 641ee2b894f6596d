//! The C ABI of vmta (`include/vmta.h`), following the conventions of rustls-ffi and curl: a `vmta_`
//! prefix, opaque handles, `vmta_result` codes, NULL checks and panics caught at the boundary.

/// The version of the library as `major * 10000 + minor * 100 + patch`.
#[unsafe(no_mangle)]
pub extern "C" fn vmta_version() -> u32 {
    let major: u32 = env!("CARGO_PKG_VERSION_MAJOR").parse().unwrap_or(0);
    let minor: u32 = env!("CARGO_PKG_VERSION_MINOR").parse().unwrap_or(0);
    let patch: u32 = env!("CARGO_PKG_VERSION_PATCH").parse().unwrap_or(0);
    major * 10000 + minor * 100 + patch
}

#[cfg(test)]
mod tests {
    #[test]
    fn version_number_is_computed_from_the_package_version() {
        assert_eq!(super::vmta_version(), 100);
    }
}
