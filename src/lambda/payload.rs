//! The HTTP side of a webhook delivery: the Function URL body (base64 or not) and the status
//! each delivery problem is answered with. What the body means is the Looker adapter's job
//! ([`crate::looker::delivery`]).

use crate::looker::delivery::{decode_base64, DeliveryError};

/// Decodes the HTTP body as the Function URL handed it over (`isBase64Encoded`).
pub fn decode_body(body: Option<&str>, is_base64_encoded: bool) -> Result<Vec<u8>, DeliveryError> {
    let body = body.unwrap_or("");
    if !is_base64_encoded {
        return Ok(body.as_bytes().to_vec());
    }
    decode_base64(body).map_err(|e| {
        DeliveryError::Body(format!(
            "the body is marked base64-encoded but is not valid base64 ({e})"
        ))
    })
}

/// The HTTP status a delivery problem is answered with.
pub trait DeliveryStatus {
    /// 422 for a well-formed but unusable delivery (it may be truncated), 400 otherwise.
    fn status_code(&self) -> u16;
}

impl DeliveryStatus for DeliveryError {
    fn status_code(&self) -> u16 {
        if self.is_unusable() {
            422
        } else {
            400
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::looker::delivery::parse_delivery;

    #[test]
    fn statuses_and_body_decoding() {
        assert!(decode_body(Some("!!"), true).is_err());
        assert_eq!(decode_body(Some("aGk="), true).unwrap(), b"hi");
        assert_eq!(decode_body(None, false).unwrap(), b"");
        let s = r#"{"scheduled_plan":{"scheduled_plan_id":1,"query":{"limit":"2"}},"attachment":{"mimetype":"application/json","data":[{"v.a":1},{"v.a":2}]}}"#;
        let e = parse_delivery(s.as_bytes()).unwrap_err();
        assert_eq!(e.status_code(), 422, "{e}");
        let e = parse_delivery(b"[1]").unwrap_err();
        assert_eq!(e.status_code(), 400, "{e}");
    }
}
