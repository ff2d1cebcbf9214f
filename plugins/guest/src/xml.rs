//! The few XML elements S3 answers with (`Error/Code`, `Error/Message`,
//! `UploadId`, `ETag`), read with `quick-xml`'s pull parser.

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
            Event::Text(t) if depth_inside > 0 => out.push_str(&t.decode().ok()?),
            Event::CData(t) if depth_inside > 0 => out.push_str(&t.decode().ok()?),
            Event::GeneralRef(r) if depth_inside > 0 => {
                if let Ok(Some(c)) = r.resolve_char_ref() {
                    out.push(c);
                } else {
                    let name = r.decode().ok()?;
                    out.push_str(quick_xml::escape::resolve_predefined_entity(&name)?);
                }
            }
            Event::Eof => return None,
            _ => {}
        }
    }
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
}
