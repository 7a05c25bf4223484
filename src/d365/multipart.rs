//! `multipart/mixed` (RFC 2046) and `application/http` framing for OData `$batch` (OData 4.0
//! Part 1 §11.7).
//!
//! Used by the client to write `$batch` requests and read their answers, and by the simulator
//! for the other direction. Line endings are CRLF everywhere, on both sides, and the parser is
//! strict about it: a bare LF is not a line break here (F&O's .NET writer emits CRLF, and a
//! lenient parser would hide a client that does not).
//!
//! ```text
//! --batch_X                                  ← delimiter: "--" + boundary, at the start or after CRLF
//! Content-Type: multipart/mixed; boundary=changeset_Y
//!
//! --changeset_Y
//! Content-Type: application/http
//! Content-Transfer-Encoding: binary
//! Content-ID: 1
//!
//! POST https://env/data/LedgerJournalLines HTTP/1.1
//! Content-Type: application/json; charset=utf-8
//!
//! {"…":…}
//! --changeset_Y--                            ← the CRLF before a delimiter belongs to the delimiter
//! --batch_X--
//! ```

use std::fmt;

const CRLF: &[u8] = b"\r\n";

/// A framing problem in a multipart or `application/http` body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FramingError(pub String);

impl fmt::Display for FramingError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for FramingError {}

fn err<T>(msg: impl Into<String>) -> Result<T, FramingError> {
    Err(FramingError(msg.into()))
}

/// Header name/value pairs in the order received.
pub type Headers = Vec<(String, String)>;

/// Case-insensitive header lookup (first occurrence).
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// One body part of a multipart entity: its MIME headers and its raw content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Part {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Part {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The nested boundary when this part is itself `multipart/mixed` (a changeset).
    pub fn multipart_boundary(&self) -> Option<String> {
        self.header("Content-Type").and_then(multipart_boundary)
    }

    /// Whether the part is declared `application/http`.
    pub fn is_http(&self) -> bool {
        self.header("Content-Type")
            .is_some_and(|ct| media_type(ct).eq_ignore_ascii_case("application/http"))
    }
}

/// The media type of a `Content-Type` value, without parameters.
pub fn media_type(content_type: &str) -> &str {
    content_type.split(';').next().unwrap_or("").trim()
}

/// The `boundary` parameter of a `multipart/mixed` content type (quotes removed), if any.
pub fn multipart_boundary(content_type: &str) -> Option<String> {
    let mut it = content_type.split(';');
    let mt = it.next()?.trim();
    if !mt.eq_ignore_ascii_case("multipart/mixed") {
        return None;
    }
    it.find_map(|p| {
        let (k, v) = p.split_once('=')?;
        if !k.trim().eq_ignore_ascii_case("boundary") {
            return None;
        }
        let v = v.trim();
        let v = v
            .strip_prefix('"')
            .and_then(|x| x.strip_suffix('"'))
            .unwrap_or(v);
        (!v.is_empty() && v.len() <= 70).then(|| v.to_string())
    })
}

/// `{prefix}_` followed by 32 random hex digits (RFC 2046 allows up to 70 characters).
pub fn new_boundary(prefix: &str) -> String {
    format!(
        "{prefix}_{:016x}{:016x}",
        fastrand::u64(..),
        fastrand::u64(..)
    )
}

fn write_headers(out: &mut Vec<u8>, headers: &[(String, String)]) {
    for (k, v) in headers {
        out.extend_from_slice(k.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(CRLF);
    }
}

/// Writes a multipart body: `--b CRLF headers CRLF content CRLF` per part, then `--b-- CRLF`.
pub fn write_multipart(boundary: &str, parts: &[Part]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        out.extend_from_slice(b"--");
        out.extend_from_slice(boundary.as_bytes());
        out.extend_from_slice(CRLF);
        write_headers(&mut out, &p.headers);
        out.extend_from_slice(CRLF);
        out.extend_from_slice(&p.body);
        out.extend_from_slice(CRLF);
    }
    out.extend_from_slice(b"--");
    out.extend_from_slice(boundary.as_bytes());
    out.extend_from_slice(b"--");
    out.extend_from_slice(CRLF);
    out
}

fn find(hay: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > hay.len() {
        return None;
    }
    hay[from..]
        .windows(needle.len())
        .position(|w| w == needle)
        .map(|p| p + from)
}

/// What follows a delimiter at `at` (just after `--boundary`): `Some(true)` for the close
/// delimiter, `Some(false)` for a part delimiter (padding + CRLF), `None` when the text only
/// starts with the boundary (e.g. a longer boundary).
fn after_delimiter(body: &[u8], at: usize) -> Option<(bool, usize)> {
    let rest = &body[at..];
    if rest.starts_with(b"--") {
        return Some((true, at + 2));
    }
    let pad = rest
        .iter()
        .take_while(|b| **b == b' ' || **b == b'\t')
        .count();
    if rest[pad..].starts_with(CRLF) {
        return Some((false, at + pad + 2));
    }
    None
}

/// Splits a multipart body into its parts (preamble and epilogue ignored).
pub fn parse_multipart(body: &[u8], boundary: &str) -> Result<Vec<Part>, FramingError> {
    let dash = format!("--{boundary}").into_bytes();
    let delim = format!("\r\n--{boundary}").into_bytes();
    // First delimiter: at the very start, or after a CRLF ending the preamble.
    let mut pos = if body.starts_with(&dash) && after_delimiter(body, dash.len()).is_some() {
        dash.len()
    } else {
        let mut from = 0;
        loop {
            let Some(p) = find(body, &delim, from) else {
                return err(format!(
                    "no `--{boundary}` delimiter line in the multipart body"
                ));
            };
            if after_delimiter(body, p + delim.len()).is_some() {
                break p + delim.len();
            }
            from = p + 1;
        }
    };
    let mut parts = Vec::new();
    loop {
        let (close, start) = after_delimiter(body, pos).expect("checked");
        if close {
            return Ok(parts);
        }
        // The part runs to the next CRLF--boundary that really is a delimiter.
        let mut from = start;
        let end = loop {
            let Some(p) = find(body, &delim, from) else {
                return err(format!(
                    "the multipart body ends without the closing `--{boundary}--` delimiter"
                ));
            };
            if after_delimiter(body, p + delim.len()).is_some() {
                break p;
            }
            from = p + 1;
        };
        parts.push(parse_part(&body[start..end])?);
        pos = end + delim.len();
    }
}

/// Headers up to the first empty line, then the content.
fn parse_headers_and_body(raw: &[u8]) -> Result<(Headers, Vec<u8>), FramingError> {
    if raw.starts_with(CRLF) {
        return Ok((vec![], raw[2..].to_vec()));
    }
    let (head, body) = match find(raw, b"\r\n\r\n", 0) {
        Some(p) => (&raw[..p], raw[p + 4..].to_vec()),
        None if raw.is_empty() => return Ok((vec![], vec![])),
        None => return err("a header block is not ended by an empty line (CRLF CRLF)"),
    };
    let head =
        std::str::from_utf8(head).map_err(|_| FramingError("headers are not UTF-8".into()))?;
    let mut headers = Vec::new();
    for line in head.split("\r\n") {
        if line.contains('\n') || line.contains('\r') {
            return err(format!("header line with a bare CR or LF: {line:?}"));
        }
        let Some((k, v)) = line.split_once(':') else {
            return err(format!("malformed header line {line:?}"));
        };
        if k.is_empty() || k.contains(' ') {
            return err(format!("malformed header name in {line:?}"));
        }
        headers.push((k.to_string(), v.trim().to_string()));
    }
    Ok((headers, body))
}

fn parse_part(raw: &[u8]) -> Result<Part, FramingError> {
    let (headers, body) = parse_headers_and_body(raw)?;
    Ok(Part { headers, body })
}

/// An HTTP request or response carried in an `application/http` part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpMessage {
    /// `POST https://… HTTP/1.1` or `HTTP/1.1 201 Created`.
    pub start_line: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpMessage {
    #[cfg_attr(not(feature = "sandbox"), allow(dead_code))] // used by the simulator
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    /// The status code of a response start line (`HTTP/1.1 201 Created` → 201).
    pub fn status(&self) -> Result<u16, FramingError> {
        let mut it = self.start_line.split(' ');
        let version = it.next().unwrap_or("");
        let code = it.next().unwrap_or("");
        if !version.starts_with("HTTP/") || code.len() != 3 {
            return err(format!("not an HTTP status line: {:?}", self.start_line));
        }
        match code.parse::<u16>() {
            Ok(c) if (100..600).contains(&c) => Ok(c),
            _ => err(format!("not an HTTP status line: {:?}", self.start_line)),
        }
    }

    /// Method and target of a request start line (`POST url HTTP/1.1`).
    #[cfg_attr(not(feature = "sandbox"), allow(dead_code))] // used by the simulator
    pub fn request_line(&self) -> Result<(&str, &str), FramingError> {
        let mut it = self.start_line.split(' ');
        match (it.next(), it.next(), it.next(), it.next()) {
            (Some(m), Some(t), Some(v), None)
                if !m.is_empty() && !t.is_empty() && v.starts_with("HTTP/") =>
            {
                Ok((m, t))
            }
            _ => err(format!("not an HTTP request line: {:?}", self.start_line)),
        }
    }

    pub fn body_text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// Serializes as `start line CRLF headers CRLF body`.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.body.len() + 256);
        out.extend_from_slice(self.start_line.as_bytes());
        out.extend_from_slice(CRLF);
        write_headers(&mut out, &self.headers);
        out.extend_from_slice(CRLF);
        out.extend_from_slice(&self.body);
        out
    }

    /// Parses an `application/http` part's content. With `Content-Length`, the body is exactly
    /// that long (extra trailing bytes ignored); without it, the rest of the part.
    pub fn parse(raw: &[u8]) -> Result<HttpMessage, FramingError> {
        let Some(eol) = find(raw, CRLF, 0) else {
            return err("the embedded HTTP message has no CRLF after its first line");
        };
        let start_line = std::str::from_utf8(&raw[..eol])
            .map_err(|_| FramingError("the embedded HTTP start line is not UTF-8".into()))?
            .to_string();
        if start_line.contains('\n') || start_line.trim().is_empty() {
            return err(format!("malformed HTTP start line {start_line:?}"));
        }
        let (headers, mut body) = parse_headers_and_body(&raw[eol + 2..])?;
        if let Some(len) = header(&headers, "Content-Length") {
            let n: usize = len
                .parse()
                .map_err(|_| FramingError(format!("invalid Content-Length {len:?}")))?;
            if body.len() < n {
                return err(format!(
                    "the embedded HTTP body has {} bytes, Content-Length says {n}",
                    body.len()
                ));
            }
            body.truncate(n);
        }
        Ok(HttpMessage {
            start_line,
            headers,
            body,
        })
    }
}

/// An `application/http` MIME part (with `Content-Transfer-Encoding: binary` and an optional
/// `Content-ID`) carrying `msg`.
pub fn http_part(content_id: Option<&str>, msg: &HttpMessage) -> Part {
    let mut headers = vec![
        ("Content-Type".to_string(), "application/http".to_string()),
        (
            "Content-Transfer-Encoding".to_string(),
            "binary".to_string(),
        ),
    ];
    if let Some(id) = content_id {
        headers.push(("Content-ID".to_string(), id.to_string()));
    }
    Part {
        headers,
        body: msg.to_bytes(),
    }
}

/// A `multipart/mixed` MIME part (a changeset) holding `parts`.
pub fn nested_part(boundary: &str, parts: &[Part]) -> Part {
    Part {
        headers: vec![(
            "Content-Type".to_string(),
            format!("multipart/mixed; boundary={boundary}"),
        )],
        body: write_multipart(boundary, parts),
    }
}

/// The reason phrase for the status codes a `$batch` answer uses.
#[cfg_attr(not(feature = "sandbox"), allow(dead_code))] // used by the simulator
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        412 => "Precondition Failed",
        413 => "Payload Too Large",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Unknown",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(k: &str, v: &str) -> (String, String) {
        (k.to_string(), v.to_string())
    }

    #[test]
    fn boundary_parameter() {
        assert_eq!(
            multipart_boundary("multipart/mixed; boundary=batch_abc").as_deref(),
            Some("batch_abc")
        );
        assert_eq!(
            multipart_boundary("Multipart/Mixed;charset=utf-8; Boundary=\"changeset_1\"")
                .as_deref(),
            Some("changeset_1")
        );
        assert_eq!(multipart_boundary("application/json; boundary=x"), None);
        assert_eq!(multipart_boundary("multipart/mixed"), None);
        assert_eq!(multipart_boundary("multipart/mixed; boundary="), None);
        let b = new_boundary("batch");
        assert!(b.starts_with("batch_") && b.len() == 6 + 32, "{b}");
        assert_ne!(b, new_boundary("batch"));
    }

    /// The exact bytes of a batch with one changeset of two POSTs and a standalone GET.
    #[test]
    fn writer_produces_crlf_framing_and_nested_changesets() {
        let post = |id: &str, body: &str| {
            http_part(
                Some(id),
                &HttpMessage {
                    start_line: "POST https://env/data/LedgerJournalLines HTTP/1.1".into(),
                    headers: vec![h("Content-Type", "application/json")],
                    body: body.as_bytes().to_vec(),
                },
            )
        };
        let cs = nested_part("changeset_1", &[post("1", "{\"a\":1}"), post("2", "{}")]);
        let get = http_part(
            None,
            &HttpMessage {
                start_line: "GET Ledgers HTTP/1.1".into(),
                headers: vec![],
                body: vec![],
            },
        );
        let bytes = write_multipart("batch_1", &[cs, get]);
        let expected = "--batch_1\r\n\
Content-Type: multipart/mixed; boundary=changeset_1\r\n\
\r\n\
--changeset_1\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 1\r\n\
\r\n\
POST https://env/data/LedgerJournalLines HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{\"a\":1}\r\n\
--changeset_1\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 2\r\n\
\r\n\
POST https://env/data/LedgerJournalLines HTTP/1.1\r\n\
Content-Type: application/json\r\n\
\r\n\
{}\r\n\
--changeset_1--\r\n\
\r\n\
--batch_1\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
GET Ledgers HTTP/1.1\r\n\
\r\n\
\r\n\
--batch_1--\r\n";
        assert_eq!(String::from_utf8(bytes.clone()).unwrap(), expected);
        // No bare LF anywhere.
        for (i, b) in bytes.iter().enumerate() {
            if *b == b'\n' {
                assert_eq!(bytes[i - 1], b'\r', "bare LF at {i}");
            }
        }

        // And it parses back to the same structure.
        let top = parse_multipart(&bytes, "batch_1").unwrap();
        assert_eq!(top.len(), 2);
        let cb = top[0].multipart_boundary().unwrap();
        assert_eq!(cb, "changeset_1");
        let ops = parse_multipart(&top[0].body, &cb).unwrap();
        assert_eq!(ops.len(), 2);
        assert!(ops[0].is_http());
        assert_eq!(ops[1].header("content-id"), Some("2"));
        let m = HttpMessage::parse(&ops[0].body).unwrap();
        assert_eq!(
            m.request_line().unwrap(),
            ("POST", "https://env/data/LedgerJournalLines")
        );
        assert_eq!(m.body, b"{\"a\":1}");
        let g = HttpMessage::parse(&top[1].body).unwrap();
        assert_eq!(g.request_line().unwrap(), ("GET", "Ledgers"));
        assert!(g.headers.is_empty());
        assert!(g.body.is_empty());
    }

    /// A response shaped like the OData 4.0 spec's example: preamble, a changeset response, an
    /// error part, an epilogue, `Content-Length` shorter than the content.
    #[test]
    fn parses_a_spec_shaped_response() {
        let body = "preamble to ignore\r\n\
--batchresponse_b\r\n\
Content-Type: multipart/mixed; boundary=changesetresponse_c\r\n\
\r\n\
--changesetresponse_c\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
Content-ID: 1\r\n\
\r\n\
HTTP/1.1 201 Created\r\n\
Content-Type: application/json; odata.metadata=minimal\r\n\
Content-Length: 9\r\n\
\r\n\
{\"x\":1.5}\r\n\
\r\n\
--changesetresponse_c--\r\n\
--batchresponse_b\r\n\
Content-Type: application/http\r\n\
Content-Transfer-Encoding: binary\r\n\
\r\n\
HTTP/1.1 400 Bad Request\r\n\
Content-Type: application/json\r\n\
\r\n\
{\"error\":{\"message\":\"x\"}}\r\n\
--batchresponse_b--\r\n\
epilogue";
        let top = parse_multipart(body.as_bytes(), "batchresponse_b").unwrap();
        assert_eq!(top.len(), 2);
        let inner = parse_multipart(&top[0].body, "changesetresponse_c").unwrap();
        assert_eq!(inner.len(), 1);
        let m = HttpMessage::parse(&inner[0].body).unwrap();
        assert_eq!(m.status().unwrap(), 201);
        assert_eq!(m.body, b"{\"x\":1.5}");
        assert!(top[1].is_http() && top[1].multipart_boundary().is_none());
        let e = HttpMessage::parse(&top[1].body).unwrap();
        assert_eq!(e.status().unwrap(), 400);
        assert!(e.body_text().starts_with("{\"error\""));
    }

    #[test]
    fn framing_errors() {
        // Bare LF line endings are not accepted.
        let lf = "--b\nContent-Type: application/http\n\nHTTP/1.1 201 Created\n\n{}\n--b--\n";
        assert!(parse_multipart(lf.as_bytes(), "b").is_err());
        // Missing close delimiter.
        let open = "--b\r\nX: y\r\n\r\nbody\r\n";
        let e = parse_multipart(open.as_bytes(), "b").unwrap_err();
        assert!(e.0.contains("closing"), "{e}");
        // A longer boundary that starts with ours is not a delimiter.
        let nested = "--b\r\nX: 1\r\n\r\n--bb\r\n--b--\r\n";
        let p = parse_multipart(nested.as_bytes(), "b").unwrap();
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].body, b"--bb");
        // Status lines.
        let msg = |s: &str| HttpMessage {
            start_line: s.into(),
            headers: vec![],
            body: vec![],
        };
        assert_eq!(msg("HTTP/1.1 204 No Content").status().unwrap(), 204);
        assert_eq!(msg("HTTP/1.1 429").status().unwrap(), 429);
        assert!(msg("HTTP/1.1 20x OK").status().is_err());
        assert!(msg("POST x HTTP/1.1").status().is_err());
        assert!(msg("HTTP/1.1 201 Created").request_line().is_err());
        // Truncated body per Content-Length.
        let short = b"HTTP/1.1 201 Created\r\nContent-Length: 10\r\n\r\n{}";
        assert!(HttpMessage::parse(short).is_err());
        // Header block without an empty line.
        assert!(HttpMessage::parse(b"HTTP/1.1 201 Created\r\nA: b").is_err());
        assert!(parse_multipart(b"no delimiter here", "b").is_err());
    }
}
