//! Webhook signatures: HMAC-SHA256 over `"<timestamp>.<body>"` with the owner's secret.
//!
//! Header: `Chronicle-Signature: t=<unix seconds>,v1=<lowercase hex>`. A receiver recomputes
//! the HMAC over the timestamp, a dot and the raw body bytes, compares in constant time, and
//! rejects timestamps too far from its clock (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The header that carries the signature.
pub const SIGNATURE_HEADER: &str = "Chronicle-Signature";

/// The signature header value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "t={timestamp},v1={}",
        hex::encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::sign;

    #[test]
    fn signs_timestamp_dot_body() {
        // python3: hmac.new(b"whsec_test", b"1700000000.{\"a\":1}", hashlib.sha256).hexdigest()
        assert_eq!(
            sign("whsec_test", 1_700_000_000, br#"{"a":1}"#),
            "t=1700000000,v1=38877139021993b830af32feea6e18a8da83eb2f6e49ee50bd9e4cf4ca4d3789"
        );
    }
}
