//! Checks shared by the providers' `put_block`: the host's block info against
//! its body, and what an object found under the key means.

use crate::{BlockBody, BlockInfo, Outcome, RemoteObject, UploadError};

/// The size of `body` once the block info is checked against it (an MD5 of
/// 16 bytes, the same size); errors begin with `op` and the object's `location`.
pub fn checked_size(op: &str, location: &str, block: &BlockInfo, body: &BlockBody) -> Result<u64, UploadError> {
    if block.md5.len() != 16 {
        return Err(UploadError::Permanent(format!(
            "{op} {location}: the host gave an MD5 of {} bytes, not 16",
            block.md5.len()
        )));
    }
    let size = body.size();
    if size != block.size {
        return Err(UploadError::Permanent(format!(
            "{op} {location}: block-info says {} bytes but the body has {size}",
            block.size
        )));
    }
    Ok(size)
}

/// The outcome of a conditional create that found an object under the key:
/// `there` as read back afterwards; `vanished` is the message when it is gone.
pub fn existing_outcome(
    block: &BlockInfo,
    there: Option<RemoteObject>,
    vanished: impl FnOnce() -> String,
) -> Result<Outcome, UploadError> {
    match there {
        Some(there) if there.size == block.size && there.md5.as_deref() == Some(&block.md5[..]) => {
            Ok(Outcome::AlreadyPresent)
        }
        Some(there) => Err(UploadError::HashMismatch(there)),
        None => Err(UploadError::Transient(vanished())),
    }
}
