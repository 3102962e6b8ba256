//! Password users: loaded from `login.users` and `login.users_file`, checked with argon2id on
//! blocking threads (at most one per core at a time). An unknown user is checked against a
//! dummy hash of the same parameters, so both cost the same.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

use argon2::password_hash::SaltString;
use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use serde_json::{Map, Value};
use tokio::sync::Semaphore;

use crate::auth::issue::RESERVED_CLAIMS;
use crate::config::{Diagnostic, Diagnostics, KeyPath, RawLogin, RawUser, Source};

/// Longest username and password accepted (400 beyond), before any hashing.
pub const MAX_USERNAME: usize = 256;
pub const MAX_PASSWORD: usize = 1024;

struct User {
    hash: String,
    claims: Map<String, Value>,
}

/// The users who may log in with a password.
pub struct Passwords {
    users: HashMap<String, User>,
    /// Verified when the username is unknown, so that costs what a wrong password costs.
    dummy_hash: String,
    hashing: Arc<Semaphore>,
}

/// Hashes a password as `authgate hash-password` does: argon2id, default parameters
/// (m=19456 KiB, t=2, p=1), random 16-byte salt.
pub fn hash_password(password: &str) -> Result<String, String> {
    hash_with(&Argon2::default(), password.as_bytes())
}

/// An argon2 PHC string for `password` with a random 16-byte salt.
fn hash_with(argon: &Argon2<'_>, password: &[u8]) -> Result<String, String> {
    let mut salt = [0u8; 16];
    aws_lc_rs::rand::fill(&mut salt)
        .map_err(|_| "the system random number generator failed".to_string())?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// A dummy hash with the same parameters as the first real one, so both paths cost the same.
/// Failing to make one fails the config: without it unknown users would answer faster.
/// Made once per set of parameters for the life of the process: a reload does not pay for
/// another (25-120 ms of argon2 and its memory).
fn dummy_hash(users: &HashMap<String, User>) -> Result<String, String> {
    static MADE: OnceLock<Mutex<HashMap<String, String>>> = OnceLock::new();
    let params = users
        .values()
        .next()
        .and_then(|u| PasswordHash::new(&u.hash).ok())
        .and_then(|h| argon2::Params::try_from(&h).ok())
        .unwrap_or_default();
    let id = format!(
        "{}/{}/{}",
        params.m_cost(),
        params.t_cost(),
        params.p_cost()
    );
    // Loading a config is rare and off the request path; a poisoned lock still holds hashes.
    let mut made = MADE
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    if let Some(hash) = made.get(&id) {
        return Ok(hash.clone());
    }
    let argon = Argon2::new(argon2::Algorithm::Argon2id, argon2::Version::V0x13, params);
    let hash = hash_with(&argon, b"no user has this password")
        .map_err(|e| format!("cannot prepare the login route: {e}"))?;
    made.insert(id, hash.clone());
    Ok(hash)
}

/// Where one user's fields are, in whichever file listed them.
struct Place<'a> {
    source: &'a Source,
    path: KeyPath,
}

impl Place<'_> {
    fn problem(&self, field: &str, message: impl std::fmt::Display) -> Diagnostic {
        self.source.diagnostic(&self.path.key(field), message)
    }
}

fn check_user(user: &RawUser, place: &Place) -> Result<User, Diagnostic> {
    let name = user.username.as_str();
    if name.is_empty() || name.len() > MAX_USERNAME || name.chars().any(char::is_control) {
        return Err(place.problem(
            "username",
            format!("username must be 1 to {MAX_USERNAME} bytes without control characters"),
        ));
    }
    match PasswordHash::new(&user.password_hash.0) {
        Ok(h) if h.algorithm.as_str() == "argon2id" => {}
        _ => {
            return Err(place.problem(
                "password_hash",
                "not an argon2id PHC string (create one with `authgate hash-password`)",
            ));
        }
    }
    if let Some(reserved) = user
        .claims
        .keys()
        .find(|k| RESERVED_CLAIMS.contains(&k.as_str()))
    {
        return Err(place.problem(
            "claims",
            format!("claim `{reserved}` is set by authgate and cannot be given"),
        ));
    }
    Ok(User {
        hash: user.password_hash.0.clone(),
        claims: user.claims.clone(),
    })
}

impl Passwords {
    /// Compiles `login.users` and `login.users_file`; returns the users file's path too (it is
    /// watched for reloads).
    pub fn compile(
        raw: &RawLogin,
        diags: &mut Diagnostics,
    ) -> (Option<Passwords>, Option<std::path::PathBuf>) {
        let at = KeyPath::root().key("login");
        let mut users = HashMap::new();
        let src = diags.source();
        for (i, user) in raw.users.iter().enumerate() {
            let place = Place {
                source: src,
                path: at.key("users").index(i),
            };
            add_user(&mut users, user, &place, diags);
        }
        let mut users_file = None;
        if let Some(file) = &raw.users_file {
            let file_path = src.resolve(file.as_str());
            match Source::read(&file_path) {
                Err(e) => diags.at(&at.key("users_file"), e),
                Ok(users_src) => match users_src.parse_as::<Vec<RawUser>>() {
                    Err(diagnostic) => diags.push(diagnostic),
                    Ok(list) => {
                        for (i, user) in list.iter().enumerate() {
                            let place = Place {
                                source: &users_src,
                                path: KeyPath::root().index(i),
                            };
                            add_user(&mut users, user, &place, diags);
                        }
                    }
                },
            }
            users_file = Some(file_path);
        }
        let dummy_hash = match dummy_hash(&users) {
            Ok(h) => h,
            Err(e) => {
                diags.at(&at, e);
                return (None, users_file);
            }
        };
        let permits = std::thread::available_parallelism().map_or(2, |n| n.get());
        let passwords = Passwords {
            users,
            dummy_hash,
            hashing: Arc::new(Semaphore::new(permits)),
        };
        (Some(passwords), users_file)
    }

    /// Whether `password` is `username`'s. Runs argon2 on a blocking thread, at most one per
    /// core at a time; an unknown user costs the same as a wrong password.
    pub async fn check(&self, username: &str, password: String) -> bool {
        let (hash, known) = match self.users.get(username) {
            Some(u) => (u.hash.clone(), true),
            None => (self.dummy_hash.clone(), false),
        };
        let Ok(_permit) = self.hashing.clone().acquire_owned().await else {
            return false;
        };
        let matched = tokio::task::spawn_blocking(move || {
            PasswordHash::new(&hash)
                .map(|h| {
                    Argon2::default()
                        .verify_password(password.as_bytes(), &h)
                        .is_ok()
                })
                .unwrap_or(false)
        })
        .await
        .unwrap_or(false);
        matched && known
    }

    /// The claims a user's tokens carry.
    pub fn claims(&self, username: &str) -> Map<String, Value> {
        self.users
            .get(username)
            .map(|u| u.claims.clone())
            .unwrap_or_default()
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

fn add_user(
    users: &mut HashMap<String, User>,
    user: &RawUser,
    place: &Place,
    diags: &mut Diagnostics,
) {
    match check_user(user, place) {
        Err(d) => diags.push(d),
        Ok(u) => {
            let name = user.username.as_str().to_owned();
            if users.insert(name.clone(), u).is_some() {
                diags.push(place.problem("username", format!("user `{name}` is defined twice")));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_are_argon2id() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        assert!(
            Argon2::default()
                .verify_password(b"correct horse", &parsed)
                .is_ok()
        );
        assert!(
            Argon2::default()
                .verify_password(b"wrong", &parsed)
                .is_err()
        );
    }

    #[test]
    fn the_dummy_hash_is_made_once_per_parameters() {
        let users = HashMap::new();
        let first = dummy_hash(&users).unwrap();
        // A fresh hash has a fresh random salt: equal strings mean no second argon2 run.
        assert_eq!(dummy_hash(&users).unwrap(), first);
    }
}
