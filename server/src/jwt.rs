//! etcd's JWT token provider (`auth/jwt.go`), for `--auth-token jwt,...`.
//!
//! A token is a JWS whose claims are etcd's: `username`, `revision` (the auth revision it was
//! issued at) and `exp` (issue time + `ttl`). Any member verifies one with the public key alone
//! — no state is shared, so unlike simple tokens nothing goes through raft but the login
//! itself. A member given only `pub-key` verifies tokens and refuses to issue them, as etcd's
//! verify-only provider does.
//!
//! Verification checks the signature with the configured method only (a token signed with
//! another algorithm, `none` included, is refused) and the expiry with no leeway. The claims
//! become a [`Credential::User`] whose revision is the signed one, so a token issued before
//! an auth change is refused with etcd's `revision of auth store is old`.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use strata_engine::Credential;

use crate::config::JwtOptions;

/// etcd's claims, field names as etcd writes them.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    username: String,
    revision: u64,
    exp: u64,
}

/// Issues and verifies signed tokens.
pub struct JwtProvider {
    algorithm: Algorithm,
    signing: Option<EncodingKey>,
    verifying: DecodingKey,
    ttl_secs: u64,
}

impl std::fmt::Debug for JwtProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtProvider")
            .field("algorithm", &self.algorithm)
            .field("can_sign", &self.signing.is_some())
            .finish()
    }
}

fn read(option: &str, path: &std::path::Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("--auth-token: {option} {}: {e}", path.display()))
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Ok(match name {
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        other => return Err(format!("--auth-token: unsupported sign-method {other:?}")),
    })
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

impl JwtProvider {
    /// Reads the keys named by the options; an unreadable or mismatched key is a one-line
    /// error naming the option and the file.
    pub fn load(opts: &JwtOptions) -> Result<JwtProvider, String> {
        let algorithm = algorithm(&opts.sign_method)?;
        let bad = |option: &str, path: &std::path::Path, e: jsonwebtoken::errors::Error| {
            format!(
                "--auth-token: {option} {}: not a {} key: {e}",
                path.display(),
                opts.sign_method
            )
        };
        let (signing, verifying) = if opts.sign_method.starts_with("HS") {
            let path = opts
                .priv_key
                .as_ref()
                .ok_or("--auth-token: priv-key is required")?;
            let secret = read("priv-key", path)?;
            (
                Some(EncodingKey::from_secret(&secret)),
                DecodingKey::from_secret(&secret),
            )
        } else {
            let path = opts
                .pub_key
                .as_ref()
                .ok_or("--auth-token: pub-key is required")?;
            let pem = read("pub-key", path)?;
            let verifying = match &opts.sign_method[..2] {
                "RS" | "PS" => DecodingKey::from_rsa_pem(&pem),
                "ES" => DecodingKey::from_ec_pem(&pem),
                _ => DecodingKey::from_ed_pem(&pem),
            }
            .map_err(|e| bad("pub-key", path, e))?;
            let signing = match &opts.priv_key {
                None => None,
                Some(path) => {
                    let pem = read("priv-key", path)?;
                    let key = match &opts.sign_method[..2] {
                        "RS" | "PS" => EncodingKey::from_rsa_pem(&pem),
                        "ES" => EncodingKey::from_ec_pem(&pem),
                        _ => EncodingKey::from_ed_pem(&pem),
                    }
                    .map_err(|e| bad("priv-key", path, e))?;
                    Some(key)
                }
            };
            (signing, verifying)
        };
        let provider = JwtProvider {
            algorithm,
            signing,
            verifying,
            ttl_secs: opts.ttl.as_secs().max(1),
        };
        // A private key that does not belong to the public key would issue tokens no member
        // accepts: find out now.
        if provider.signing.is_some() {
            let probe = provider
                .assign("probe", 1)
                .map_err(|e| format!("--auth-token: {e}"))?;
            if provider.verify(&probe).is_none() {
                return Err("--auth-token: priv-key does not match pub-key".into());
            }
        }
        Ok(provider)
    }

    /// A token for `username` at auth revision `revision` (etcd's `assign`).
    pub fn assign(&self, username: &str, revision: u64) -> Result<String, String> {
        let key = self
            .signing
            .as_ref()
            .ok_or("auth: token signing attempted with verify-only key")?;
        let claims = Claims {
            username: username.to_string(),
            revision,
            exp: now_secs() + self.ttl_secs,
        };
        jsonwebtoken::encode(&Header::new(self.algorithm), &claims, key)
            .map_err(|e| format!("auth: cannot sign token: {e}"))
    }

    /// The user a valid, unexpired token names (etcd's `info`); `None` for anything else.
    pub fn verify(&self, token: &str) -> Option<Credential> {
        let mut validation = Validation::new(self.algorithm);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<Claims>(token, &self.verifying, &validation).ok()?;
        Some(Credential::User {
            username: data.claims.username,
            revision: Some(data.claims.revision),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn hs256(dir: &std::path::Path, secret: &[u8], ttl: Duration) -> JwtProvider {
        let path = dir.join("secret");
        std::fs::write(&path, secret).unwrap();
        JwtProvider::load(&JwtOptions {
            sign_method: "HS256".into(),
            pub_key: None,
            priv_key: Some(path),
            ttl,
        })
        .expect("load")
    }

    #[test]
    fn a_token_carries_etcds_claims_and_verifies_anywhere_with_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let one = hs256(dir.path(), b"s3cret", Duration::from_secs(300));
        let two = hs256(dir.path(), b"s3cret", Duration::from_secs(300));
        let token = one.assign("alice", 7).unwrap();
        assert_eq!(
            two.verify(&token),
            Some(Credential::User {
                username: "alice".into(),
                revision: Some(7)
            })
        );
        let other = hs256(dir.path(), b"another", Duration::from_secs(300));
        assert_eq!(other.verify(&token), None, "another key refuses it");
    }

    #[test]
    fn tampered_expired_and_unsigned_tokens_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = hs256(dir.path(), b"k", Duration::from_secs(300));
        let token = p.assign("alice", 1).unwrap();
        let mut parts: Vec<String> = token.split('.').map(str::to_string).collect();
        use base64::Engine as _;
        let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let forged = format!(
            r#"{{"username":"root","revision":1,"exp":{}}}"#,
            now_secs() + 300
        );
        parts[1] = b64.encode(forged);
        assert_eq!(p.verify(&parts.join(".")), None, "a changed payload");
        let none_header = b64.encode(r#"{"alg":"none","typ":"JWT"}"#);
        assert_eq!(
            p.verify(&format!("{none_header}.{}.", parts[1])),
            None,
            "alg none"
        );
        let expired = Claims {
            username: "alice".into(),
            revision: 1,
            exp: now_secs() - 1,
        };
        let old = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &expired,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert_eq!(p.verify(&old), None, "expired");
    }

    #[test]
    fn bad_keys_are_one_line_errors_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pub.pem");
        std::fs::write(&path, "not a key").unwrap();
        let e = JwtProvider::load(&JwtOptions {
            sign_method: "RS256".into(),
            pub_key: Some(path.clone()),
            priv_key: None,
            ttl: Duration::from_secs(300),
        })
        .unwrap_err();
        assert!(e.contains("pub-key") && e.contains("pub.pem"), "{e}");
        let e = JwtProvider::load(&JwtOptions {
            sign_method: "RS256".into(),
            pub_key: Some(dir.path().join("missing.pem")),
            priv_key: None,
            ttl: Duration::from_secs(300),
        })
        .unwrap_err();
        assert!(e.contains("missing.pem"), "{e}");
    }
}
