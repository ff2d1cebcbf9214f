//! Checking that a file is a component implementing a compatible `provider`
//! world, and describing what it imports and exports.

use std::path::Path;

use wasmtime::Engine;
use wasmtime::component::Component;

use super::error::LoadError;

/// The WIT package providers are built against.
pub const PACKAGE: &str = "blockferry:uploader";
/// The interface every provider exports.
pub const UPLOADER_INTERFACE: &str = "bucket-uploader";
/// The optional interface of providers that can read their bucket back.
pub const READER_INTERFACE: &str = "bucket-reader";
/// What a provider without the `bucket-reader` cannot offer.
pub const READER_FEATURES: &str = "restore, verify --deep, serving old blocks to block nodes, \
     bucket health checks and cleanup of abandoned uploads";
/// The version of the WIT package this host implements.
pub const CONTRACT_VERSION: semver::Version = semver::Version::new(0, 1, 3);

/// What a component implements, as `blockferry plugin check` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ComponentReport {
    /// Contract version the component was built against (from its export).
    pub version: semver::Version,
    /// Everything the component imports, by name.
    pub imports: Vec<String>,
    /// Everything the component exports, by name.
    pub exports: Vec<String>,
    /// Whether it exports a compatible `bucket-reader`.
    pub reader: bool,
}

impl ComponentReport {
    /// The world the component implements, with its version.
    pub fn world(&self) -> String {
        let world = if self.reader { "reading-provider" } else { "provider" };
        format!("{PACKAGE}/{world}@{}", self.version)
    }
}

/// Whether a contract version is one this host can run: same major and, for
/// `0.x`, same minor (semver's compatibility rule).
pub fn compatible(version: &semver::Version) -> bool {
    let host = CONTRACT_VERSION;
    version.major == host.major && (host.major > 0 || version.minor == host.minor)
}

/// Longest provider name (the `provider` function's result) the host accepts.
pub const MAX_PROVIDER_NAME: usize = 32;

/// Why `name` is not a provider name the host accepts, if it is not: one to
/// [`MAX_PROVIDER_NAME`] ASCII letters, digits, `-`, `_` or `.`, starting
/// with a letter or digit (`s3`, `gcs`, `my-store`).
pub fn provider_name_problem(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name.len() > MAX_PROVIDER_NAME {
        return Some(format!("it is {} bytes long, more than {MAX_PROVIDER_NAME}", name.len()));
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric())
        || !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Some(
            "only ASCII letters, digits, `-`, `_` and `.` are allowed, starting with a letter or digit".into(),
        );
    }
    None
}

/// Text a plugin chose, made safe to show on one line: quoted, control
/// characters escaped, cut to `max` bytes (saying how much was cut).
pub fn shown(text: &str, max: usize) -> String {
    let kept = super::logs::cut_to(text, max);
    let mut out = format!("{:?}", kept);
    if kept.len() < text.len() {
        out.push_str(&format!("… ({} more bytes)", text.len() - kept.len()));
    }
    out
}

/// Tell a core module or a non-wasm file from a component, by its header.
pub fn check_header(path: &Path, bytes: &[u8]) -> Result<(), LoadError> {
    let not = |detail: &str| Err(LoadError::NotAComponent { path: path.to_path_buf(), detail: detail.to_string() });
    if bytes.len() < 8 || &bytes[..4] != b"\0asm" {
        return not("the file has no WebAssembly header");
    }
    if bytes[6..8] == [0, 0] {
        return not("it is a core WebAssembly module");
    }
    Ok(())
}

/// Describe `component` and check that it exports a compatible uploader.
pub fn inspect(engine: &Engine, path: &Path, component: &Component) -> Result<ComponentReport, LoadError> {
    let ty = component.component_type();
    let imports: Vec<String> = ty.imports(engine).map(|(name, _)| name.to_string()).collect();
    let exports: Vec<String> = ty.exports(engine).map(|(name, _)| name.to_string()).collect();
    let incompatible = |detail: String| LoadError::Incompatible { path: path.to_path_buf(), detail };
    let wanted = format!("{PACKAGE}/{UPLOADER_INTERFACE}");
    let Some(export) = exports.iter().find(|e| e.split('@').next() == Some(wanted.as_str())) else {
        return Err(incompatible(format!(
            "it exports {exports:?} but a provider must export {wanted}@{CONTRACT_VERSION} (world `provider` of wit/uploader.wit)"
        )));
    };
    let version = export.split_once('@').and_then(|(_, v)| semver::Version::parse(v).ok()).ok_or_else(|| {
        incompatible(format!("its export {export} has no version; rebuild it against wit/uploader.wit"))
    })?;
    if !compatible(&version) {
        return Err(incompatible(format!(
            "it was built against {PACKAGE}@{version} but this host implements {PACKAGE}@{CONTRACT_VERSION} \
             (compatible: {}.{}.x); rebuild the provider against this host's wit/ directory",
            CONTRACT_VERSION.major, CONTRACT_VERSION.minor
        )));
    }
    let reader_export = format!("{PACKAGE}/{READER_INTERFACE}");
    let reader = exports.iter().any(|e| {
        e.split_once('@')
            .is_some_and(|(name, v)| name == reader_export && semver::Version::parse(v).is_ok_and(|v| compatible(&v)))
    });
    Ok(ComponentReport { version, imports, exports, reader })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_names_are_short_identifiers() {
        for ok in ["s3", "gcs", "my-store_2.0", "fs"] {
            assert_eq!(provider_name_problem(ok), None, "{ok}");
        }
        for bad in ["", "-x", "x\"} 1\nblockferry_injected_metric 1\nok: fake", "a b", "é", &"x".repeat(33)] {
            assert!(provider_name_problem(bad).is_some(), "{bad:?}");
        }
        let forged = "x\"} 1\nok: fake";
        assert_eq!(shown(forged, 64), r#""x\"} 1\nok: fake""#);
        let long = shown(&"y".repeat(10 << 20), 64);
        assert!(long.len() < 100 && long.ends_with(&format!("… ({} more bytes)", (10 << 20) - 64)), "{long}");
    }

    #[test]
    fn versions_follow_semver_for_zero_major() {
        assert!(compatible(&semver::Version::new(0, 1, 0)));
        assert!(compatible(&semver::Version::new(0, 1, 7)));
        assert!(!compatible(&semver::Version::new(0, 2, 0)));
        assert!(!compatible(&semver::Version::new(1, 1, 0)));
    }

    #[test]
    fn headers_tell_modules_from_components() {
        let p = Path::new("x.wasm");
        assert!(matches!(check_header(p, b"hello world"), Err(LoadError::NotAComponent { .. })));
        let module = [0, b'a', b's', b'm', 1, 0, 0, 0];
        let err = check_header(p, &module).unwrap_err().to_string();
        assert!(err.contains("core WebAssembly module"), "{err}");
        let component = [0, b'a', b's', b'm', 0x0d, 0, 1, 0];
        assert!(check_header(p, &component).is_ok());
    }
}
