//! The XML documents S3 answers with, read into typed structs with
//! `quick-xml`'s serde support: errors, the upload id of a new multipart
//! upload, the ETag of a completed one, and the two listings. Elements a
//! struct does not name are ignored; text is kept as sent (not trimmed), with
//! entities resolved.

use quick_xml::events::Event;
use quick_xml::reader::{NsReader, Reader};
use serde::Deserialize;
use serde::de::DeserializeOwned;

use crate::settings::Checksum;

/// The name of the document's root element, if the text is XML.
pub fn root_name(xml: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let mut reader = Reader::from_str(text);
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) | Event::Empty(e) => {
                return Some(String::from_utf8_lossy(e.local_name().as_ref()).into_owned());
            }
            Event::Eof => return None,
            _ => {}
        }
    }
}

/// `xml` read as a `T`, when its root element is `T`'s (`T::ROOT`, if it
/// names one) and it has every field `T` requires.
pub fn parse<T: Document>(xml: &[u8]) -> Option<T> {
    let root = root_name(xml)?;
    if T::ROOT.is_some_and(|expected| root != expected) {
        return None;
    }
    let mut de = quick_xml::de::Deserializer::borrowing(NsReader::from_str(std::str::from_utf8(xml).ok()?));
    T::deserialize(&mut de).ok()
}

/// A document S3 answers with, by its root element.
pub trait Document: DeserializeOwned {
    /// The root element's name; `None` where S3-compatible servers differ
    /// (moto answers `CompleteMultipartUpload` with a
    /// `CompleteMultipartUploadResponse`), so any root is read.
    const ROOT: Option<&'static str>;
}

/// An error document: `<Error><Code>…</Code><Message>…</Message></Error>`.
#[derive(Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub struct Error {
    /// The error code (`NoSuchBucket`, `SlowDown`, …); empty when absent.
    #[serde(default)]
    pub code: String,
    /// The message for humans; empty when absent.
    #[serde(default)]
    pub message: String,
}

impl Document for Error {
    const ROOT: Option<&'static str> = Some("Error");
}

/// The answer to `CreateMultipartUpload` (`InitiateMultipartUploadResult`).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct InitiateMultipartUploadResult {
    /// The new upload's id.
    pub upload_id: String,
}

impl Document for InitiateMultipartUploadResult {
    const ROOT: Option<&'static str> = None;
}

/// The answer to `CompleteMultipartUpload` (`CompleteMultipartUploadResult`;
/// the caller rules out an `<Error>`, which S3 may send with a 200).
#[derive(Debug, Deserialize)]
pub struct CompleteMultipartUploadResult {
    /// The completed object's ETag, quoted, if sent.
    #[serde(rename = "ETag")]
    pub etag: Option<String>,
    /// The completed object's CRC-32C (`base64-N` when composite), if sent.
    #[serde(rename = "ChecksumCRC32C")]
    pub checksum_crc32c: Option<String>,
    /// The completed object's SHA-256 (`base64-N` when composite), if sent.
    #[serde(rename = "ChecksumSHA256")]
    pub checksum_sha256: Option<String>,
}

impl CompleteMultipartUploadResult {
    /// The checksum of `algorithm` it carries, if any.
    pub fn checksum(&self, algorithm: Checksum) -> Option<String> {
        match algorithm {
            Checksum::Crc32c => self.checksum_crc32c.clone(),
            Checksum::Sha256 => self.checksum_sha256.clone(),
        }
    }
}

impl Document for CompleteMultipartUploadResult {
    const ROOT: Option<&'static str> = None;
}

/// The answer to `ListObjectsV2`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListBucketResult {
    /// Whether more objects follow this page.
    #[serde(default)]
    pub is_truncated: bool,
    /// The page's objects.
    #[serde(default)]
    pub contents: Vec<Contents>,
}

impl Document for ListBucketResult {
    const ROOT: Option<&'static str> = Some("ListBucketResult");
}

/// One object of a `ListObjectsV2` page.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Contents {
    /// Its key (the `prefix` setting included).
    pub key: String,
    /// Its size in bytes.
    pub size: u64,
}

/// The answer to `ListMultipartUploads`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListMultipartUploadsResult {
    /// The incomplete uploads.
    #[serde(default)]
    pub upload: Vec<Upload>,
}

impl Document for ListMultipartUploadsResult {
    const ROOT: Option<&'static str> = Some("ListMultipartUploadsResult");
}

/// One incomplete multipart upload.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Upload {
    /// The key it uploads to (the `prefix` setting included).
    pub key: String,
    /// Its id.
    pub upload_id: String,
    /// When it was started (RFC 3339), if said.
    pub initiated: Option<String>,
}

/// `(Code, Message)` of an S3 `<Error>` document; empty strings when absent.
pub fn s3_error(xml: &[u8]) -> (String, String) {
    let error = parse::<Error>(xml).unwrap_or_default();
    (error.code, error.message)
}

/// Escapes text for an XML element's content.
pub fn escape(text: &str) -> String {
    quick_xml::escape::escape(text).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_errors_upload_ids_and_etags() {
        let error = br#"<?xml version="1.0" encoding="UTF-8"?>
<Error><Code>SlowDown</Code><Message>Please reduce your request rate &amp; retry.</Message><RequestId>x</RequestId></Error>"#;
        assert_eq!(s3_error(error), ("SlowDown".to_string(), "Please reduce your request rate & retry.".to_string()));
        assert_eq!(s3_error(b"<Error><Resource>/b</Resource></Error>"), (String::new(), String::new()));
        let init = br#"<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2FkIElE</UploadId></InitiateMultipartUploadResult>"#;
        assert_eq!(parse::<InitiateMultipartUploadResult>(init).unwrap().upload_id, "VXBsb2FkIElE");
        assert_eq!(s3_error(init), (String::new(), String::new()));
        assert!(parse::<InitiateMultipartUploadResult>(b"<Error><Code>x</Code></Error>").is_none());
        // moto's root for this answer is not AWS's; the ETag is read all the same.
        let moto = br#"<?xml version="1.0" encoding="utf-8"?>
<CompleteMultipartUploadResponse xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Location>http://b.s3.amazonaws.com/k</Location><Bucket>b</Bucket><Key>k</Key><ETag>"cb8d7289925309a05b2db09b7709c264-1"</ETag></CompleteMultipartUploadResponse>"#;
        assert_eq!(
            parse::<CompleteMultipartUploadResult>(moto).unwrap().etag.as_deref(),
            Some("\"cb8d7289925309a05b2db09b7709c264-1\"")
        );
        let done = br#"<CompleteMultipartUploadResult><Location>l</Location><ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag></CompleteMultipartUploadResult>"#;
        assert_eq!(
            parse::<CompleteMultipartUploadResult>(done).unwrap().etag.as_deref(),
            Some("\"3858f62230ac3c915f300c664312c11f-9\"")
        );
        assert_eq!(root_name(b"not xml"), None);
        assert!(parse::<Error>(b"").is_none());
        assert_eq!(escape("a<&>\""), "a&lt;&amp;&gt;&quot;");
    }

    #[test]
    fn reads_list_objects_v2_contents() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a&amp;b.blk</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>10</Size><Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key> p/c d.blk </Key><Size>0</Size><ChecksumAlgorithm/></Contents>
<NextContinuationToken>t</NextContinuationToken></ListBucketResult>"#;
        let page = parse::<ListBucketResult>(xml).unwrap();
        assert!(page.is_truncated);
        let got: Vec<(&str, u64)> = page.contents.iter().map(|c| (c.key.as_str(), c.size)).collect();
        assert_eq!(got, [("p/a&b.blk", 10), (" p/c d.blk ", 0)]);
        let empty = parse::<ListBucketResult>(b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>");
        assert!(empty.is_some_and(|e| !e.is_truncated && e.contents.is_empty()));
        assert!(parse::<ListBucketResult>(b"<ListBucketResult><Contents><Key>k</Key>").is_none());
        assert!(
            parse::<ListBucketResult>(b"<ListBucketResult><Contents><Key>k</Key></Contents></ListBucketResult>")
                .is_none()
        );
    }

    #[test]
    fn reads_list_multipart_uploads() {
        let xml = br#"<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker/>
<Upload><Key>blocks/1.blk</Key><UploadId>VXBsb2Fk</UploadId><Initiator><ID>arn</ID><DisplayName>me</DisplayName></Initiator><StorageClass>STANDARD</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>
<Upload><Key>blocks/2.blk</Key><UploadId>b2</UploadId></Upload>
<IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let uploads = parse::<ListMultipartUploadsResult>(xml).unwrap().upload;
        let got: Vec<(&str, &str, Option<&str>)> =
            uploads.iter().map(|u| (u.key.as_str(), u.upload_id.as_str(), u.initiated.as_deref())).collect();
        assert_eq!(got, [("blocks/1.blk", "VXBsb2Fk", Some("2010-11-10T20:48:33.000Z")), ("blocks/2.blk", "b2", None)]);
        assert!(parse::<ListMultipartUploadsResult>(b"<ListBucketResult/>").is_none());
    }
}
