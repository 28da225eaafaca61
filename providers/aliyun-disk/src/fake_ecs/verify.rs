//! Request authentication as ECS does it: which signature the request
//! carries, whether it matches, and the replay checks (nonce, timestamp).

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, SystemTime};

use crate::sign::{self, V3Input};

/// How far a request's timestamp may be from the server's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// An authentication failure, with the service's code and HTTP status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthError {
    /// HTTP status.
    pub status: u16,
    /// Error code.
    pub code: &'static str,
    /// Message.
    pub message: String,
}

fn fail(status: u16, code: &'static str, message: impl Into<String>) -> AuthError {
    AuthError {
        status,
        code,
        message: message.into(),
    }
}

/// A key the fake accepts.
#[derive(Debug, Clone)]
pub struct AcceptedKey {
    /// The secret.
    pub secret: String,
    /// The STS token that must accompany it, if it is a temporary key.
    pub security_token: Option<String>,
}

/// The authenticated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authenticated {
    /// The action asked for.
    pub action: String,
    /// The API version asked for.
    pub version: String,
    /// The key that signed it.
    pub access_key_id: String,
    /// The action's own parameters (common and signature parameters removed).
    pub params: BTreeMap<String, String>,
}

/// The pieces of an HTTP request the verifier looks at.
#[derive(Debug, Clone)]
pub struct RawRequest<'a> {
    /// Method.
    pub method: &'a str,
    /// Path.
    pub path: &'a str,
    /// Decoded query (and form body) parameters.
    pub params: &'a BTreeMap<String, String>,
    /// Lower-case header names to values.
    pub headers: &'a BTreeMap<String, String>,
    /// The body.
    pub body: &'a [u8],
}

const RPC_COMMON: &[&str] = &[
    "Action",
    "Version",
    "Format",
    "AccessKeyId",
    "SignatureMethod",
    "SignatureVersion",
    "SignatureNonce",
    "SignatureType",
    "Timestamp",
    "Signature",
    "SecurityToken",
];

fn parse_time(raw: &str) -> Option<SystemTime> {
    humantime::parse_rfc3339(raw).ok()
}

/// Checks requests like the service: signature first, then the
/// timestamp window, then nonce reuse.
#[derive(Debug, Default)]
pub struct Verifier {
    /// Accepted keys by ID.
    pub keys: BTreeMap<String, AcceptedKey>,
    seen_nonces: HashSet<String>,
}

impl Verifier {
    /// A verifier accepting `keys`.
    pub fn new(keys: BTreeMap<String, AcceptedKey>) -> Self {
        Self {
            keys,
            seen_nonces: HashSet::new(),
        }
    }

    fn key(&self, id: &str) -> Result<&AcceptedKey, AuthError> {
        self.keys.get(id).ok_or_else(|| {
            fail(
                404,
                "InvalidAccessKeyId.NotFound",
                "Specified access key is not found.",
            )
        })
    }

    fn check_token(key: &AcceptedKey, sent: Option<&String>) -> Result<(), AuthError> {
        match (&key.security_token, sent) {
            (None, None) => Ok(()),
            (Some(want), Some(got)) if sign::signatures_equal(want, got) => Ok(()),
            (Some(_), None) => Err(fail(
                400,
                "InvalidSecurityToken.Malformed",
                "A temporary AccessKey needs its SecurityToken.",
            )),
            _ => Err(fail(
                400,
                "InvalidSecurityToken.MismatchWithAccessKey",
                "The security token does not match the AccessKey.",
            )),
        }
    }

    fn check_time_and_nonce(
        &mut self,
        timestamp: &str,
        nonce: &str,
        now: SystemTime,
    ) -> Result<(), AuthError> {
        let sent = parse_time(timestamp).ok_or_else(|| {
            fail(
                400,
                "InvalidTimeStamp.Format",
                format!("Specified time stamp {timestamp:?} is malformed."),
            )
        })?;
        let skew = match now.duration_since(sent) {
            Ok(d) => d,
            Err(e) => e.duration(),
        };
        if skew > MAX_CLOCK_SKEW {
            return Err(fail(
                400,
                "InvalidTimeStamp.Expired",
                "Specified time stamp or date value is expired.",
            ));
        }
        if nonce.is_empty() {
            return Err(fail(
                400,
                "MissingSignatureNonce",
                "SignatureNonce is mandatory.",
            ));
        }
        if !self.seen_nonces.insert(nonce.to_owned()) {
            return Err(fail(
                400,
                "SignatureNonceUsed",
                "Specified signature nonce was used already.",
            ));
        }
        Ok(())
    }

    /// Authenticates `req` at server time `now`.
    pub fn verify(
        &mut self,
        req: &RawRequest<'_>,
        now: SystemTime,
    ) -> Result<Authenticated, AuthError> {
        match req.headers.get("authorization") {
            Some(auth) if auth.starts_with(sign::V3_ALGORITHM) => self.verify_v3(req, auth, now),
            Some(_) => Err(fail(
                400,
                "InvalidAuthorization",
                "Unsupported Authorization scheme.",
            )),
            None => self.verify_rpc(req, now),
        }
    }

    fn verify_rpc(
        &mut self,
        req: &RawRequest<'_>,
        now: SystemTime,
    ) -> Result<Authenticated, AuthError> {
        let get = |k: &str| req.params.get(k).cloned().unwrap_or_default();
        for required in [
            "AccessKeyId",
            "Signature",
            "SignatureNonce",
            "Timestamp",
            "Action",
            "Version",
        ] {
            if get(required).is_empty() {
                return Err(fail(
                    400,
                    "MissingParameter",
                    format!(
                        "The input parameter \"{required}\" that is mandatory for processing this request is not supplied."
                    ),
                ));
            }
        }
        if get("SignatureMethod") != "HMAC-SHA1" || get("SignatureVersion") != "1.0" {
            return Err(fail(
                400,
                "InvalidParameter.SignatureMethod",
                "Only HMAC-SHA1 with SignatureVersion 1.0 is accepted.",
            ));
        }
        let key = self.key(&get("AccessKeyId"))?.clone();
        let mut signed = req.params.clone();
        let sent_signature = signed.remove("Signature").unwrap_or_default();
        let expected = sign::rpc_signature(&key.secret, req.method, &signed)
            .map_err(|e| fail(500, "InternalError", e.to_string()))?;
        if !sign::signatures_equal(&expected, &sent_signature) {
            return Err(fail(
                403,
                "SignatureDoesNotMatch",
                format!(
                    "Specified signature is not matched with our calculation. server string to sign is:{}",
                    sign::rpc_string_to_sign(req.method, &signed)
                ),
            ));
        }
        Self::check_token(&key, req.params.get("SecurityToken"))?;
        self.check_time_and_nonce(&get("Timestamp"), &get("SignatureNonce"), now)?;
        let params = req
            .params
            .iter()
            .filter(|(k, _)| !RPC_COMMON.contains(&k.as_str()))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Ok(Authenticated {
            action: get("Action"),
            version: get("Version"),
            access_key_id: get("AccessKeyId"),
            params,
        })
    }

    fn verify_v3(
        &mut self,
        req: &RawRequest<'_>,
        auth: &str,
        now: SystemTime,
    ) -> Result<Authenticated, AuthError> {
        let parsed = sign::parse_v3_authorization(auth).ok_or_else(|| {
            fail(
                400,
                "InvalidAuthorization",
                "The Authorization header is malformed.",
            )
        })?;
        let header = |k: &str| req.headers.get(k).cloned().unwrap_or_default();
        for required in [
            "x-acs-action",
            "x-acs-version",
            "x-acs-date",
            "x-acs-signature-nonce",
            "x-acs-content-sha256",
            "host",
        ] {
            if header(required).is_empty() {
                return Err(fail(
                    400,
                    "MissingParameter",
                    format!("The header {required} is mandatory."),
                ));
            }
        }
        for name in req.headers.keys() {
            let must_sign = name == "host" || name.starts_with("x-acs-") || name == "content-type";
            if must_sign && !parsed.signed_headers.contains(name) {
                return Err(fail(
                    400,
                    "InvalidAuthorization",
                    format!("Header {name} must be signed."),
                ));
            }
        }
        let body_hash = sign::sha256_hex(req.body);
        if header("x-acs-content-sha256") != body_hash {
            return Err(fail(
                400,
                "ContentSHA256Mismatch",
                "x-acs-content-sha256 does not match the body.",
            ));
        }
        let key = self.key(&parsed.access_key_id)?.clone();
        let mut signed_headers = BTreeMap::new();
        for name in &parsed.signed_headers {
            let value = req.headers.get(name).ok_or_else(|| {
                fail(
                    400,
                    "InvalidAuthorization",
                    format!("Signed header {name} is missing."),
                )
            })?;
            signed_headers.insert(name.clone(), value.clone());
        }
        let input = V3Input {
            method: req.method,
            path: req.path,
            query: req.params,
            signed_headers: &signed_headers,
            body_sha256: &body_hash,
        };
        let expected = input
            .signature(&key.secret)
            .map_err(|e| fail(500, "InternalError", e.to_string()))?;
        if !sign::signatures_equal(&expected, &parsed.signature) {
            return Err(fail(
                403,
                "SignatureDoesNotMatch",
                format!(
                    "Specified signature is not matched with our calculation. server string to sign is:{}",
                    input.string_to_sign()
                ),
            ));
        }
        Self::check_token(&key, req.headers.get("x-acs-security-token"))?;
        self.check_time_and_nonce(&header("x-acs-date"), &header("x-acs-signature-nonce"), now)?;
        Ok(Authenticated {
            action: header("x-acs-action"),
            version: header("x-acs-version"),
            access_key_id: parsed.access_key_id,
            params: req.params.clone(),
        })
    }
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

    fn verifier(id: &str, secret: &str) -> Verifier {
        Verifier::new(
            [(
                id.to_owned(),
                AcceptedKey {
                    secret: secret.into(),
                    security_token: None,
                },
            )]
            .into(),
        )
    }

    fn documented_rpc() -> BTreeMap<String, String> {
        map(&[
            ("AccessKeyId", "testid"),
            ("Action", "DescribeRegions"),
            ("Format", "XML"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureNonce", "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf"),
            ("SignatureVersion", "1.0"),
            ("Timestamp", "2016-02-23T12:46:24Z"),
            ("Version", "2014-05-26"),
            ("Signature", "OLeaidS1JvxuMvnyHOwuJ+uX5qY="),
        ])
    }

    fn at(raw: &str) -> SystemTime {
        humantime::parse_rfc3339(raw).unwrap()
    }

    #[test]
    fn documented_rpc_example_is_accepted_once() {
        let params = documented_rpc();
        let (headers, body) = (BTreeMap::new(), Vec::<u8>::new());
        let req = RawRequest {
            method: "GET",
            path: "/",
            params: &params,
            headers: &headers,
            body: &body,
        };
        let mut v = verifier("testid", "testsecret");
        let ok = v.verify(&req, at("2016-02-23T12:50:00Z")).unwrap();
        assert_eq!(ok.action, "DescribeRegions");
        assert!(ok.params.is_empty());
        // The same nonce again is a replay.
        let err = v.verify(&req, at("2016-02-23T12:50:00Z")).unwrap_err();
        assert_eq!(err.code, "SignatureNonceUsed");
    }

    #[test]
    fn documented_rpc_example_refusals() {
        let params = documented_rpc();
        let (headers, body) = (BTreeMap::new(), Vec::<u8>::new());
        let req = RawRequest {
            method: "GET",
            path: "/",
            params: &params,
            headers: &headers,
            body: &body,
        };
        let err = verifier("testid", "wrongsecret")
            .verify(&req, at("2016-02-23T12:46:24Z"))
            .unwrap_err();
        assert_eq!((err.status, err.code), (403, "SignatureDoesNotMatch"));
        let err = verifier("otherid", "testsecret")
            .verify(&req, at("2016-02-23T12:46:24Z"))
            .unwrap_err();
        assert_eq!(err.code, "InvalidAccessKeyId.NotFound");
        let err = verifier("testid", "testsecret")
            .verify(&req, at("2016-02-23T13:01:25Z"))
            .unwrap_err();
        assert_eq!(err.code, "InvalidTimeStamp.Expired");
        let err = verifier("testid", "testsecret")
            .verify(
                &RawRequest {
                    method: "POST",
                    ..req.clone()
                },
                at("2016-02-23T12:46:24Z"),
            )
            .unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        let mut tampered = params.clone();
        tampered.insert("Format".into(), "JSON".into());
        let err = verifier("testid", "testsecret")
            .verify(
                &RawRequest {
                    params: &tampered,
                    ..req.clone()
                },
                at("2016-02-23T12:46:24Z"),
            )
            .unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
    }

    fn documented_v3_headers() -> BTreeMap<String, String> {
        map(&[
            ("host", "ecs.cn-shanghai.aliyuncs.com"),
            ("x-acs-action", "RunInstances"),
            ("x-acs-content-sha256", sign::EMPTY_BODY_SHA256),
            ("x-acs-date", "2023-10-26T10:22:32Z"),
            ("x-acs-signature-nonce", "3156853299f313e23d1673dc12e1703d"),
            ("x-acs-version", "2014-05-26"),
            (
                "authorization",
                "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0",
            ),
        ])
    }

    #[test]
    fn documented_v3_example_is_accepted_and_refusals_have_codes() {
        let query = map(&[
            (
                "ImageId",
                "win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd",
            ),
            ("RegionId", "cn-shanghai"),
        ]);
        let headers = documented_v3_headers();
        let req = RawRequest {
            method: "POST",
            path: "/",
            params: &query,
            headers: &headers,
            body: b"",
        };
        let now = at("2023-10-26T10:30:00Z");
        let mut v = verifier("YourAccessKeyId", "YourAccessKeySecret");
        let ok = v.verify(&req, now).unwrap();
        assert_eq!(ok.action, "RunInstances");
        assert_eq!(
            ok.params.get("RegionId").map(String::as_str),
            Some("cn-shanghai")
        );
        assert_eq!(v.verify(&req, now).unwrap_err().code, "SignatureNonceUsed");

        let err = verifier("YourAccessKeyId", "nope")
            .verify(&req, now)
            .unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        let mut q2 = query.clone();
        q2.insert("RegionId".into(), "cn-hangzhou".into());
        let err = verifier("YourAccessKeyId", "YourAccessKeySecret")
            .verify(
                &RawRequest {
                    params: &q2,
                    ..req.clone()
                },
                now,
            )
            .unwrap_err();
        assert_eq!(err.code, "SignatureDoesNotMatch");
        let err = verifier("YourAccessKeyId", "YourAccessKeySecret")
            .verify(&req, at("2023-10-26T10:40:00Z"))
            .unwrap_err();
        assert_eq!(err.code, "InvalidTimeStamp.Expired");
        let err = verifier("YourAccessKeyId", "YourAccessKeySecret")
            .verify(
                &RawRequest {
                    body: b"x",
                    ..req.clone()
                },
                now,
            )
            .unwrap_err();
        assert_eq!(err.code, "ContentSHA256Mismatch");
        let mut unsigned = headers.clone();
        unsigned.insert("x-acs-extra".into(), "1".into());
        let err = verifier("YourAccessKeyId", "YourAccessKeySecret")
            .verify(
                &RawRequest {
                    headers: &unsigned,
                    ..req.clone()
                },
                now,
            )
            .unwrap_err();
        assert_eq!(err.code, "InvalidAuthorization");
    }

    #[test]
    fn sts_keys_need_their_token() {
        let mut v = Verifier::new(
            [(
                "STS.k".to_owned(),
                AcceptedKey {
                    secret: "s".into(),
                    security_token: Some("tok".into()),
                },
            )]
            .into(),
        );
        let now = SystemTime::now();
        let mut params = map(&[
            ("AccessKeyId", "STS.k"),
            ("Action", "DescribeDisks"),
            ("Version", "2014-05-26"),
            ("Format", "JSON"),
            ("SignatureMethod", "HMAC-SHA1"),
            ("SignatureVersion", "1.0"),
            ("SignatureNonce", "n1"),
            ("Timestamp", &crate::client::timestamp(now)),
        ]);
        let sig = sign::rpc_signature("s", "POST", &params).unwrap();
        params.insert("Signature".into(), sig);
        let empty = BTreeMap::new();
        let req = RawRequest {
            method: "POST",
            path: "/",
            params: &params,
            headers: &empty,
            body: b"",
        };
        assert_eq!(
            v.verify(&req, now).unwrap_err().code,
            "InvalidSecurityToken.Malformed"
        );
        params.remove("Signature");
        params.insert("SecurityToken".into(), "tok".into());
        params.insert("SignatureNonce".into(), "n2".into());
        let sig = sign::rpc_signature("s", "POST", &params).unwrap();
        params.insert("Signature".into(), sig);
        let req = RawRequest {
            method: "POST",
            path: "/",
            params: &params,
            headers: &empty,
            body: b"",
        };
        assert!(v.verify(&req, now).is_ok());
    }
}
