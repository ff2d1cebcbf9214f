//! The config parser: any text is either a config or a clear error, never a
//! panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = blockferry::config::Config::parse(text, Path::new("fuzz.toml"), Path::new("/nonexistent"));
    }
});
