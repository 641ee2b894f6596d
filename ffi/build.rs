//! Gives the shared library its soname, the way C libraries are versioned: `libvmta.so.0.MINOR`
//! while the version is 0.x (each minor release may break the ABI, as cargo-c does), then
//! `libvmta.so.MAJOR`. `make install` installs the file under that name with the usual links.

fn main() {
    let major = std::env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
    let minor = std::env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
    let soname = if major == "0" {
        format!("libvmta.so.0.{minor}")
    } else {
        format!("libvmta.so.{major}")
    };
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,{soname}");
    }
    println!("cargo:rerun-if-changed=build.rs");
}
