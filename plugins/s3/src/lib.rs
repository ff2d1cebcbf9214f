//! `s3`: the blockferry storage provider for Amazon S3 and S3-compatible
//! services. All the work is in `blockferry_s3_api`; this component picks
//! the AWS defaults (virtual-hosted addressing, `region` required). See
//! README.md for the settings and the retry policy.

use blockferry_s3_api::{Addressing, Defaults, Flavor, S3Bucket};

/// AWS S3's defaults.
struct Aws;

impl Flavor for Aws {
    const DEFAULTS: Defaults = Defaults { provider: "s3", addressing: Addressing::Virtual, region: None };
}

/// The component: it exports the `bucket` and `reader` resources.
struct Component;

impl blockferry_guest::Guest for Component {
    type Bucket = S3Bucket<Aws>;
}

impl blockferry_guest::ReaderGuest for Component {
    type Reader = S3Bucket<Aws>;
}

blockferry_guest::export_reading_provider!(Component);
