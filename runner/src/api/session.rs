//! Dashboard sessions: `kiln dashboard` asks the API (with its bearer token)
//! for a one-time login link; opening the link exchanges it for a session
//! whose id goes into the cookie. The cookie never holds the API token, and
//! a session only names the token it stands for: every request looks the
//! token up again, so revoking the token ends its sessions.
//!
//! Links and sessions live in the service's memory, stored by the SHA-256
//! of their secret (a memory dump shows no usable value); a restart ends
//! every session and `kiln dashboard` makes a new link.
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::token_hash;

/// How long a login link may wait to be opened.
pub const LINK_TTL: Duration = Duration::from_secs(5 * 60);

/// How long a session lasts (the cookie's `Max-Age`).
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 60 * 60);

/// Most links and sessions kept at once: beyond it the oldest go first, so
/// a token holder minting links in a loop cannot grow the service's memory.
const MAX_ENTRIES: usize = 10_000;

/// Login links waiting to be opened, and sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// By the link code's hash: the token it logs in as, where to go, expiry.
    links: HashMap<String, Link>,
    /// By the session id's hash: the token it stands for, expiry.
    sessions: HashMap<String, Entry>,
}

#[derive(Debug)]
struct Link {
    token_sha256: String,
    next: String,
    expires: Instant,
}

#[derive(Debug)]
struct Entry {
    token_sha256: String,
    expires: Instant,
}

/// A fresh random secret with `prefix`, 256 bits as hex.
fn secret(prefix: &str) -> String {
    format!("{prefix}{}", hex::encode(rand::random::<[u8; 32]>()))
}

/// Drops expired entries, then the soonest to expire while over the cap.
fn prune<T>(map: &mut HashMap<String, T>, expires: impl Fn(&T) -> Instant, now: Instant) {
    map.retain(|_, v| expires(v) > now);
    while map.len() >= MAX_ENTRIES {
        let Some(oldest) = map
            .iter()
            .min_by_key(|(_, v)| expires(v))
            .map(|(k, _)| k.clone())
        else {
            break;
        };
        map.remove(&oldest);
    }
}

impl Inner {
    /// Store a new session for the token with hash `token_sha256`; its id.
    fn new_session(&mut self, token_sha256: &str, now: Instant) -> String {
        let id = secret("ks_");
        prune(&mut self.sessions, |s| s.expires, now);
        self.sessions.insert(
            token_hash(&id),
            Entry {
                token_sha256: token_sha256.to_owned(),
                expires: now + SESSION_TTL,
            },
        );
        id
    }
}

impl Sessions {
    /// A one-time link code logging in as the token with hash
    /// `token_sha256`, leading to `next` (a dashboard path).
    pub fn create_link(&self, token_sha256: &str, next: &str) -> String {
        let code = secret("kl_");
        let now = Instant::now();
        if let Ok(mut inner) = self.inner.lock() {
            prune(&mut inner.links, |l| l.expires, now);
            inner.links.insert(
                token_hash(&code),
                Link {
                    token_sha256: token_sha256.to_owned(),
                    next: next.to_owned(),
                    expires: now + LINK_TTL,
                },
            );
        }
        code
    }

    /// Use a link code: once, before it expires. Returns the new session's
    /// id, the token's hash and where the link leads.
    pub fn redeem(&self, code: &str) -> Option<(String, String, String)> {
        let now = Instant::now();
        let mut inner = self.inner.lock().ok()?;
        let link = inner.links.remove(&token_hash(code))?;
        if link.expires <= now {
            return None;
        }
        let id = inner.new_session(&link.token_sha256, now);
        Some((id, link.token_sha256, link.next))
    }

    /// A session for the token with hash `token_sha256` (the login form).
    pub fn start(&self, token_sha256: &str) -> String {
        match self.inner.lock() {
            Ok(mut inner) => inner.new_session(token_sha256, Instant::now()),
            // An id that was never stored: the session simply does not work.
            Err(_) => secret("ks_"),
        }
    }

    /// The hash of the token session `id` stands for, while it lasts.
    pub fn token_of(&self, id: &str) -> Option<String> {
        let inner = self.inner.lock().ok()?;
        let entry = inner.sessions.get(&token_hash(id))?;
        (entry.expires > Instant::now()).then(|| entry.token_sha256.clone())
    }

    /// End session `id` (log out).
    pub fn end(&self, id: &str) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.sessions.remove(&token_hash(id));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_link_logs_in_once_and_its_session_names_the_token() {
        let s = Sessions::default();
        let code = s.create_link("abc", "/ui/runs/3");
        let (id, token, next) = s.redeem(&code).expect("first use");
        assert_eq!((token.as_str(), next.as_str()), ("abc", "/ui/runs/3"));
        assert!(s.redeem(&code).is_none(), "a second use fails");
        assert_eq!(s.token_of(&id).as_deref(), Some("abc"));
        assert!(s.token_of("ks_guess").is_none());
        s.end(&id);
        assert!(s.token_of(&id).is_none(), "logged out");
    }
}
