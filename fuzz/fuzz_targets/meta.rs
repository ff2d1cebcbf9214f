//! The `.meta` parser: any bytes are either a `.meta` of block 7 that names
//! block 7's own file and a 16-byte MD5, or an error; never a panic.
#![no_main]

use blockferry::store::BlockMeta;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(meta) = BlockMeta::parse(data, 7) {
        assert_eq!(meta.number, 7);
        assert!(meta.file.starts_with(&format!("{:036}.blk", 7)));
        assert_eq!(meta.md5_bytes().len(), 16);
        let _ = (meta.ext(), meta.status("b"), meta.safe_in_all(["b"].into_iter()));
    }
});
