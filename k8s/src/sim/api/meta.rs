//! Object metadata the server assigns: timestamps, uids, generated names.

use rand::Rng;

/// Now as the API writes `metav1.Time`: RFC 3339, whole seconds, UTC.
pub fn now() -> String {
    timestamp(k8s_openapi::jiff::Timestamp::now())
}

/// `at` seconds from now, as [`now`] writes it.
pub fn now_plus(seconds: i64) -> String {
    let at = k8s_openapi::jiff::Timestamp::now()
        .checked_add(k8s_openapi::jiff::SignedDuration::from_secs(seconds))
        .unwrap_or_else(|_| k8s_openapi::jiff::Timestamp::now());
    timestamp(at)
}

fn timestamp(at: k8s_openapi::jiff::Timestamp) -> String {
    at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// A random RFC 4122 version 4 UUID, as the real server gives `metadata.uid`.
pub fn uid() -> String {
    let mut bytes: [u8; 16] = rand::rng().random();
    bytes[6] = (bytes[6] & 0x0f) | 0x40;
    bytes[8] = (bytes[8] & 0x3f) | 0x80;
    let hex = hex::encode(bytes);
    format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    )
}

/// The real server's alphabet for generated names (no vowels, no look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
/// The longest prefix kept from `generateName` (names are at most 63 for most kinds).
const MAX_GENERATE_PREFIX: usize = 58;

/// A name from `generateName`: the prefix (cut to 58) and 5 random characters.
pub fn generate_name(prefix: &str) -> String {
    let mut rng = rand::rng();
    let mut name: String = prefix.chars().take(MAX_GENERATE_PREFIX).collect();
    for _ in 0..5 {
        name.push(ALPHANUMS[rng.random_range(0..ALPHANUMS.len())] as char);
    }
    name
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn assigned_metadata_has_the_real_shapes() {
        let now = now();
        assert_eq!(now.len(), 20, "{now}");
        assert!(now.ends_with('Z'));
        assert!(now_plus(30) > now);
        let uid = uid();
        assert_eq!(uid.len(), 36);
        assert_eq!(&uid[14..15], "4");
        let name = generate_name("demo-worker-");
        assert_eq!(name.len(), "demo-worker-".len() + 5);
        assert!(name.starts_with("demo-worker-"));
    }
}
