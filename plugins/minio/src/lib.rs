//! `minio`: the blockferry storage provider for MinIO. It is the S3 provider
//! (`blockferry_s3_api`) with MinIO's defaults: path-style addressing and
//! region `us-east-1`, so no `region` setting is needed. See README.md.

use blockferry_s3_api::{Addressing, Defaults, Flavor, S3Bucket};

/// MinIO's defaults.
struct Minio;

impl Flavor for Minio {
    const DEFAULTS: Defaults = Defaults { provider: "minio", addressing: Addressing::Path, region: Some("us-east-1") };
}

/// The component: it exports the `bucket` and `reader` resources.
struct Component;

impl blockferry_guest::Guest for Component {
    type Bucket = S3Bucket<Minio>;
}

impl blockferry_guest::ReaderGuest for Component {
    type Reader = S3Bucket<Minio>;
}

blockferry_guest::export_reading_provider!(Component);
