//! The few XML elements S3 answers with (`Error/Code`, `Error/Message`,
//! `UploadId`, `ETag`, the `Contents` of `ListObjectsV2`, the `Upload`s of
//! `ListMultipartUploads`), read with `quick-xml`'s pull parser.

use quick_xml::events::Event;
use quick_xml::reader::Reader;

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

/// The text of the first element named `name` (local name, any depth),
/// entities resolved.
pub fn element_text(xml: &[u8], name: &str) -> Option<String> {
    let text = std::str::from_utf8(xml).ok()?;
    let mut reader = Reader::from_str(text);
    let mut depth_inside = 0usize;
    let mut out = String::new();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                if depth_inside > 0 {
                    depth_inside += 1;
                } else if e.local_name().as_ref() == name.as_bytes() {
                    depth_inside = 1;
                }
            }
            Event::Empty(e) if depth_inside == 0 && e.local_name().as_ref() == name.as_bytes() => {
                return Some(String::new());
            }
            Event::End(_) if depth_inside > 0 => {
                depth_inside -= 1;
                if depth_inside == 0 {
                    return Some(out);
                }
            }
            Event::Eof => return None,
            other if depth_inside > 0 => push_text(&other, &mut out)?,
            _ => {}
        }
    }
}

/// Every element named `name` (local name, any depth, not inside another
/// one), as the local names and texts of its child elements in document
/// order (a child's text includes that of its own children). `None` when the
/// text is not well-formed XML.
pub fn records(xml: &[u8], name: &str) -> Option<Vec<Vec<(String, String)>>> {
    let text = std::str::from_utf8(xml).ok()?;
    let mut reader = Reader::from_str(text);
    let mut out = Vec::new();
    // Depth inside the current record: 1 = in the record, 2 = in a child, ...
    let mut depth = 0usize;
    let mut fields: Vec<(String, String)> = Vec::new();
    let local = |name: quick_xml::name::LocalName<'_>| String::from_utf8_lossy(name.as_ref()).into_owned();
    loop {
        match reader.read_event().ok()? {
            Event::Start(e) => {
                if depth == 1 {
                    fields.push((local(e.local_name()), String::new()));
                }
                if depth > 0 || e.local_name().as_ref() == name.as_bytes() {
                    depth += 1;
                }
            }
            Event::Empty(e) if depth == 1 => fields.push((local(e.local_name()), String::new())),
            Event::Empty(e) if depth == 0 && e.local_name().as_ref() == name.as_bytes() => out.push(Vec::new()),
            Event::End(_) if depth > 0 => {
                depth -= 1;
                if depth == 0 {
                    out.push(std::mem::take(&mut fields));
                }
            }
            Event::Eof => return (depth == 0).then_some(out),
            other if depth > 1 => push_text(&other, &mut fields.last_mut()?.1)?,
            _ => {}
        }
    }
}

/// The text of the field `name` of a record from [`records`], if it has one.
pub fn field<'a>(record: &'a [(String, String)], name: &str) -> Option<&'a str> {
    record.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// Appends the text an event carries (text, CDATA, a character or predefined
/// entity reference) to `out`; other events add nothing. `None` when the text
/// cannot be decoded.
fn push_text(event: &Event<'_>, out: &mut String) -> Option<()> {
    match event {
        Event::Text(t) => out.push_str(&t.decode().ok()?),
        Event::CData(t) => out.push_str(&t.decode().ok()?),
        Event::GeneralRef(r) => {
            if let Ok(Some(c)) = r.resolve_char_ref() {
                out.push(c);
            } else {
                out.push_str(quick_xml::escape::resolve_predefined_entity(&r.decode().ok()?)?);
            }
        }
        _ => {}
    }
    Some(())
}

/// `(Code, Message)` of an S3 `<Error>` document; empty strings when absent.
pub fn s3_error(xml: &[u8]) -> (String, String) {
    if root_name(xml).as_deref() != Some("Error") {
        return (String::new(), String::new());
    }
    (element_text(xml, "Code").unwrap_or_default(), element_text(xml, "Message").unwrap_or_default())
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
        let init = br#"<InitiateMultipartUploadResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Bucket>b</Bucket><Key>k</Key><UploadId>VXBsb2FkIElE</UploadId></InitiateMultipartUploadResult>"#;
        assert_eq!(element_text(init, "UploadId").as_deref(), Some("VXBsb2FkIElE"));
        assert_eq!(s3_error(init), (String::new(), String::new()));
        let done = br#"<CompleteMultipartUploadResult><ETag>&quot;3858f62230ac3c915f300c664312c11f-9&quot;</ETag></CompleteMultipartUploadResult>"#;
        assert_eq!(element_text(done, "ETag").as_deref(), Some("\"3858f62230ac3c915f300c664312c11f-9\""));
        assert_eq!(root_name(b"not xml"), None);
        assert_eq!(element_text(b"<a><b/></a>", "b").as_deref(), Some(""));
        assert_eq!(escape("a<&>\""), "a&lt;&amp;&gt;&quot;");
    }

    #[test]
    fn reads_list_objects_v2_contents() {
        let xml = br#"<?xml version="1.0" encoding="UTF-8"?>
<ListBucketResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Name>b</Name><Prefix>p/</Prefix><KeyCount>2</KeyCount><MaxKeys>2</MaxKeys><IsTruncated>true</IsTruncated>
<Contents><Key>p/a&amp;b.blk</Key><LastModified>2024-01-02T03:04:05.000Z</LastModified><ETag>&quot;x&quot;</ETag><Size>10</Size><Owner><ID>o</ID></Owner><StorageClass>STANDARD</StorageClass></Contents>
<Contents><Key>p/c.blk</Key><Size>0</Size><ChecksumAlgorithm/></Contents>
<NextContinuationToken>t</NextContinuationToken></ListBucketResult>"#;
        let contents = records(xml, "Contents").unwrap();
        assert_eq!(contents.len(), 2);
        assert_eq!(field(&contents[0], "Key"), Some("p/a&b.blk"));
        assert_eq!(field(&contents[0], "Size"), Some("10"));
        assert_eq!(field(&contents[0], "ETag"), Some("\"x\""));
        assert_eq!(field(&contents[0], "Owner"), Some("o"));
        assert_eq!(field(&contents[1], "ChecksumAlgorithm"), Some(""));
        assert_eq!(field(&contents[1], "LastModified"), None);
        assert_eq!(element_text(xml, "IsTruncated").as_deref(), Some("true"));
        let empty = b"<ListBucketResult><IsTruncated>false</IsTruncated></ListBucketResult>";
        assert_eq!(records(empty, "Contents"), Some(vec![]));
        assert_eq!(records(b"<a><Contents><Key>k</Key>", "Contents"), None);
    }

    #[test]
    fn reads_list_multipart_uploads() {
        let xml = br#"<ListMultipartUploadsResult><Bucket>b</Bucket><KeyMarker></KeyMarker><UploadIdMarker/>
<Upload><Key>blocks/1.blk</Key><UploadId>VXBsb2Fk</UploadId><Initiator><ID>arn</ID><DisplayName>me</DisplayName></Initiator><StorageClass>STANDARD</StorageClass><Initiated>2010-11-10T20:48:33.000Z</Initiated></Upload>
<Upload><Key>blocks/2.blk</Key><UploadId>b2</UploadId><Initiated>2010-11-10T20:49:33Z</Initiated></Upload>
<IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"#;
        let uploads = records(xml, "Upload").unwrap();
        assert_eq!(uploads.len(), 2);
        assert_eq!(field(&uploads[0], "Key"), Some("blocks/1.blk"));
        assert_eq!(field(&uploads[0], "UploadId"), Some("VXBsb2Fk"));
        assert_eq!(field(&uploads[0], "Initiated"), Some("2010-11-10T20:48:33.000Z"));
        assert_eq!(field(&uploads[0], "Initiator"), Some("arnme"));
        assert_eq!(field(&uploads[1], "UploadId"), Some("b2"));
    }
}
