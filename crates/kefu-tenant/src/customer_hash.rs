//! Verified customers: where a tenant sets `customer_hmac_secret_env`, a customer call
//! carries `x-kefu-customer-hash`, hex(HMAC-SHA256(secret, customer_id)), which the
//! tenant's own backend computes for its signed-in customers (and the channel service
//! for the customers it brings).
use hmac::{Hmac, Mac};
use sha2::Sha256;

fn mac(secret: &str, customer_id: &str) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key");
    mac.update(customer_id.as_bytes());
    mac
}

/// The hash a call for `customer_id` carries.
pub fn customer_hash(secret: &str, customer_id: &str) -> String {
    hex::encode(mac(secret, customer_id).finalize().into_bytes())
}

/// Whether `hash` is the customer's, compared in constant time.
pub fn customer_hash_matches(secret: &str, customer_id: &str, hash: &str) -> bool {
    hex::decode(hash.trim())
        .is_ok_and(|expected| mac(secret, customer_id).verify_slice(&expected).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hash_matches_its_customer_only() {
        let hash = customer_hash("s3cret", "c-42");
        assert_eq!(hash.len(), 64);
        assert!(customer_hash_matches("s3cret", "c-42", &hash));
        assert!(customer_hash_matches(
            "s3cret",
            "c-42",
            &format!(" {hash}\n")
        ));
        assert!(!customer_hash_matches("s3cret", "c-43", &hash));
        assert!(!customer_hash_matches("other", "c-42", &hash));
        assert!(!customer_hash_matches("s3cret", "c-42", "not hex"));
    }
}
