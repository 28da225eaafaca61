//! Alibaba Cloud OpenAPI request signing: the RPC signature (version 1.0,
//! HMAC-SHA1) and the V3 signature (ACS3-HMAC-SHA256).
//!
//! Both the client and the fake ECS endpoint's verifier use these functions,
//! and both are pinned to Alibaba Cloud's documented worked examples in the
//! tests below, so a change that breaks one breaks the other loudly.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use sha2::{Digest, Sha256};

/// The V3 algorithm name, as it appears in the string to sign and in
/// the `Authorization` header.
pub const V3_ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// Hex SHA-256 of an empty body.
pub const EMPTY_BODY_SHA256: &str =
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// RFC 3986 unreserved characters stay; everything else is `%XX`.
const UNRESERVED: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    /// HMAC accepts keys of any length, so this means a broken crypto crate.
    #[error("the HMAC key was refused")]
    HmacKey(#[source] hmac::digest::InvalidLength),
}

/// Which signature a request carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SignatureVersion {
    /// ACS3-HMAC-SHA256 in the `Authorization` header (the current algorithm).
    #[default]
    V3,
    /// SignatureVersion 1.0, HMAC-SHA1, as the `Signature` query parameter.
    Rpc,
}

/// Percent-encodes `value` the way both algorithms need (RFC 3986, upper-case
/// hex over UTF-8; space is `%20`, `*` is `%2A`, `~` stays).
pub fn percent_encode(value: &str) -> String {
    utf8_percent_encode(value, UNRESERVED).to_string()
}

/// The canonical query: parameters sorted by name, names and values
/// percent-encoded, joined as `k=v` with `&`.
pub fn canonical_query(params: &BTreeMap<String, String>) -> String {
    // Sorting by the encoded name equals sorting by the raw name for the
    // ASCII parameter names OpenAPI uses, and is what the service does.
    let mut pairs: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    pairs.sort();
    pairs
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// The RPC string to sign: `METHOD&%2F&` + the canonical query, encoded again.
/// `params` must not contain `Signature`.
pub fn rpc_string_to_sign(method: &str, params: &BTreeMap<String, String>) -> String {
    format!(
        "{}&{}&{}",
        method.to_ascii_uppercase(),
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// The RPC signature: Base64(HMAC-SHA1(secret + "&", string to sign)).
pub fn rpc_signature(
    secret: &str,
    method: &str,
    params: &BTreeMap<String, String>,
) -> Result<String, SignError> {
    let key = format!("{secret}&");
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key.as_bytes()).map_err(SignError::HmacKey)?;
    mac.update(rpc_string_to_sign(method, params).as_bytes());
    Ok(BASE64.encode(mac.finalize().into_bytes()))
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// What the V3 signature covers.
#[derive(Debug, Clone, Copy)]
pub struct V3Input<'a> {
    /// HTTP method, e.g. `POST`.
    pub method: &'a str,
    /// URL path; `/` for every ECS call.
    pub path: &'a str,
    /// Decoded query parameters.
    pub query: &'a BTreeMap<String, String>,
    /// Header name (any case) to value, for every signed header.
    pub signed_headers: &'a BTreeMap<String, String>,
    /// Hex SHA-256 of the body, as sent in `x-acs-content-sha256`.
    pub body_sha256: &'a str,
}

impl V3Input<'_> {
    /// The `;`-joined lower-case names of the signed headers, sorted.
    pub fn signed_header_names(&self) -> String {
        let mut names: Vec<String> = self
            .signed_headers
            .keys()
            .map(|k| k.to_ascii_lowercase())
            .collect();
        names.sort();
        names.join(";")
    }

    /// The canonical request.
    pub fn canonical_request(&self) -> String {
        let mut headers: Vec<(String, &str)> = self
            .signed_headers
            .iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v.trim()))
            .collect();
        headers.sort();
        let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
        format!(
            "{}\n{}\n{}\n{}\n{}\n{}",
            self.method.to_ascii_uppercase(),
            self.path,
            canonical_query(self.query),
            canonical_headers,
            self.signed_header_names(),
            self.body_sha256
        )
    }

    /// `ACS3-HMAC-SHA256\n` + hex SHA-256 of the canonical request.
    pub fn string_to_sign(&self) -> String {
        format!(
            "{V3_ALGORITHM}\n{}",
            sha256_hex(self.canonical_request().as_bytes())
        )
    }

    /// Hex HMAC-SHA256(secret, string to sign).
    pub fn signature(&self, secret: &str) -> Result<String, SignError> {
        let mut mac =
            Hmac::<Sha256>::new_from_slice(secret.as_bytes()).map_err(SignError::HmacKey)?;
        mac.update(self.string_to_sign().as_bytes());
        Ok(hex::encode(mac.finalize().into_bytes()))
    }

    /// The whole `Authorization` header value.
    pub fn authorization(&self, access_key_id: &str, secret: &str) -> Result<String, SignError> {
        Ok(format!(
            "{V3_ALGORITHM} Credential={access_key_id},SignedHeaders={},Signature={}",
            self.signed_header_names(),
            self.signature(secret)?
        ))
    }
}

/// The parts of a V3 `Authorization` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V3Authorization {
    /// The AccessKey ID from `Credential=`.
    pub access_key_id: String,
    /// The lower-case signed header names.
    pub signed_headers: Vec<String>,
    /// The hex signature.
    pub signature: String,
}

/// Parses `ACS3-HMAC-SHA256 Credential=..,SignedHeaders=..,Signature=..`.
pub fn parse_v3_authorization(header: &str) -> Option<V3Authorization> {
    let rest = header.strip_prefix(V3_ALGORITHM)?.trim_start();
    let mut id = None;
    let mut names = None;
    let mut signature = None;
    for part in rest.split(',') {
        let (k, v) = part.trim().split_once('=')?;
        match k {
            "Credential" => id = Some(v.to_owned()),
            "SignedHeaders" => {
                names = Some(
                    v.split(';')
                        .map(str::to_ascii_lowercase)
                        .collect::<Vec<_>>(),
                )
            }
            "Signature" => signature = Some(v.to_owned()),
            _ => return None,
        }
    }
    Some(V3Authorization {
        access_key_id: id?,
        signed_headers: names?,
        signature: signature?,
    })
}

/// Constant-time comparison for signatures, so the fake (and anything
/// built on it) does not leak how much of a guess matched.
pub fn signatures_equal(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn documented_rpc_params() -> BTreeMap<String, String> {
        map(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
        ])
    }

    #[test]
    fn rpc_documented_example_string_to_sign() {
        assert_eq!(
            rpc_string_to_sign("GET", &documented_rpc_params()),
            "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML%26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf%26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z%26Version%3D2014-05-26"
        );
    }

    #[test]
    fn rpc_documented_example_signature() {
        assert_eq!(
            rpc_signature("testsecret", "GET", &documented_rpc_params()).unwrap(),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        // One changed character anywhere changes the signature.
        let mut tampered = documented_rpc_params();
        tampered.insert("Action".into(), "DescribeRegionz".into());
        assert_ne!(
            rpc_signature("testsecret", "GET", &tampered).unwrap(),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
        assert_ne!(
            rpc_signature("testsecreT", "GET", &documented_rpc_params()).unwrap(),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
        );
    }

    fn documented_v3() -> (BTreeMap<String, String>, BTreeMap<String, String>) {
        let query = map(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]);
        let headers = map(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", EMPTY_BODY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
        ]);
        (query, headers)
    }

    #[test]
    fn v3_documented_example() {
        let (query, headers) = documented_v3();
        let input = V3Input {
            method: "POST",
            path: "/",
            query: &query,
            signed_headers: &headers,
            body_sha256: EMPTY_BODY_SHA256,
        };
        assert_eq!(
            input.signed_header_names(),
            "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
        );
        assert_eq!(
            sha256_hex(input.canonical_request().as_bytes()),
            "7ea06492da5221eba5297e897ce16e55f964061054b7695beedaac1145b1e259"
        );
        assert_eq!(
            input.signature("YourAccessKeySecret").unwrap(),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
        let auth = input
            .authorization("YourAccessKeyId", "YourAccessKeySecret")
            .unwrap();
        let parsed = parse_v3_authorization(&auth).unwrap();
        assert_eq!(parsed.access_key_id, "YourAccessKeyId");
        assert_eq!(parsed.signed_headers.len(), 6);
        assert_eq!(
            parsed.signature,
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn v3_header_names_are_case_insensitive_and_values_trimmed() {
        let (query, headers) = documented_v3();
        let shouty: BTreeMap<String, String> = headers
            .iter()
            .map(|(k, v)| (k.to_ascii_uppercase(), format!("  {v} ")))
            .collect();
        let input = V3Input {
            method: "post",
            path: "/",
            query: &query,
            signed_headers: &shouty,
            body_sha256: EMPTY_BODY_SHA256,
        };
        assert_eq!(
            input.signature("YourAccessKeySecret").unwrap(),
            "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        );
    }

    #[test]
    fn percent_encoding_follows_rfc3986() {
        assert_eq!(percent_encode("a b*c~d-e_f.g"), "a%20b%2Ac~d-e_f.g");
        assert_eq!(percent_encode("[\"d-1\"]"), "%5B%22d-1%22%5D");
        assert_eq!(percent_encode("数据"), "%E6%95%B0%E6%8D%AE");
        assert_eq!(percent_encode("a/b+c=d&e"), "a%2Fb%2Bc%3Dd%26e");
    }

    #[test]
    fn authorization_parsing_refuses_other_schemes() {
        assert!(parse_v3_authorization("AWS4-HMAC-SHA256 Credential=x").is_none());
        assert!(
            parse_v3_authorization("ACS3-HMAC-SHA256 Credential=x,SignedHeaders=host").is_none()
        );
    }

    #[test]
    fn signature_comparison() {
        assert!(signatures_equal("abc", "abc"));
        assert!(!signatures_equal("abc", "abd"));
        assert!(!signatures_equal("abc", "abcd"));
    }
}
