//! Browser sessions: a random id in an HttpOnly, Secure, SameSite cookie; everything else —
//! the access token, the CSRF token, the citizens being looked up — stays on the server.
//!
//! A session ends when unused for `session_idle_secs`, at `session_max_secs`, when its access
//! token expires, or at sign-out. Signing in gives the session a new id (no fixation).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use samblik_gateway::auth::Caller;
use samblik_proto::Cpr;
use samblik_proto::v1::{LookupRequest, Purpose};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

/// Lookups a session remembers (the CPR numbers behind `/panel/opslag/{id}`); older ones are
/// forgotten and their pages say so.
const MAX_LOOKUPS: usize = 32;

/// A fresh 256-bit random token, URL-safe.
pub(crate) fn random_token() -> String {
    use ring::rand::SecureRandom;
    let mut bytes = [0u8; 32];
    // The system's random source failing is not survivable for anything that needs secrets.
    #[allow(clippy::expect_used)]
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random number generator failed");
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Equality that takes as long whatever the first difference: for CSRF tokens and OIDC state.
pub(crate) fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// The signed-in user of a session. Its `Debug` never shows the access token.
#[derive(Clone)]
pub(crate) struct SignedIn {
    /// The access token every call on the user's behalf carries, as on the gRPC API.
    pub token: String,
    pub caller: Arc<Caller>,
    pub expires: SystemTime,
}

impl std::fmt::Debug for SignedIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignedIn")
            .field("caller", &self.caller)
            .field("expires", &self.expires)
            .finish_non_exhaustive()
    }
}

/// A lookup the user asked for: the CPR stays here, the address bar shows only its id.
#[derive(Clone)]
pub(crate) struct Lookup {
    pub cpr: Cpr,
    pub purpose: Purpose,
    pub break_glass: Option<String>,
    /// Set once its answer has been streamed: a page reload does not look the citizen up again
    /// unasked (each lookup is an audited access).
    pub started: bool,
    /// A deep link from a site that is not a configured fagsystem waits for a click.
    pub needs_confirmation: bool,
}

impl Lookup {
    /// What the answer page asks the pipeline for.
    pub fn request(&self) -> LookupRequest {
        LookupRequest {
            cpr: self.cpr.as_str().to_owned(),
            purpose: self.purpose as i32,
            sources: Vec::new(),
            break_glass_reason: self.break_glass.clone().unwrap_or_default(),
        }
    }
}

impl std::fmt::Debug for Lookup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookup")
            .field("purpose", &self.purpose)
            .field("break_glass", &self.break_glass.is_some())
            .field("started", &self.started)
            .finish_non_exhaustive()
    }
}

/// An OpenID Connect sign-in under way.
#[derive(Debug, Clone)]
pub(crate) struct OidcPending {
    pub state: String,
    pub verifier: String,
}

#[derive(Debug)]
pub(crate) struct Session {
    created: Instant,
    pub csrf: String,
    pub user: Option<SignedIn>,
    pub oidc: Option<OidcPending>,
    /// A deep link that arrived before sign-in, opened right after it.
    pub after_sign_in: Option<Lookup>,
    lookups: VecDeque<(String, Lookup)>,
    /// A one-time message for the next page ("the request was sent").
    pub notice: Option<String>,
}

impl Session {
    fn new() -> Self {
        Session {
            created: Instant::now(),
            csrf: random_token(),
            user: None,
            oidc: None,
            after_sign_in: None,
            lookups: VecDeque::new(),
            notice: None,
        }
    }

    /// The signed-in user, unless their token has expired.
    pub fn user(&self) -> Option<&SignedIn> {
        self.user.as_ref().filter(|u| u.expires > SystemTime::now())
    }

    /// Remembers `lookup` and returns its id.
    pub fn add_lookup(&mut self, lookup: Lookup) -> String {
        let id = random_token();
        if self.lookups.len() >= MAX_LOOKUPS {
            self.lookups.pop_front();
        }
        self.lookups.push_back((id.clone(), lookup));
        id
    }

    pub fn lookup(&self, id: &str) -> Option<&Lookup> {
        self.lookups.iter().find(|(i, _)| i == id).map(|(_, l)| l)
    }

    pub fn lookup_mut(&mut self, id: &str) -> Option<&mut Lookup> {
        self.lookups
            .iter_mut()
            .find(|(i, _)| i == id)
            .map(|(_, l)| l)
    }
}

/// The session of one request: its id and its state.
#[derive(Debug, Clone)]
pub(crate) struct Current {
    pub id: String,
    state: Arc<Mutex<Session>>,
}

impl Current {
    /// The session's state. Never held across an `.await`.
    pub fn lock(&self) -> MutexGuard<'_, Session> {
        // A panic while holding the lock leaves a session no worse than before it.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// All sessions of the panel.
#[derive(Debug)]
pub(crate) struct Sessions {
    cache: moka::sync::Cache<String, Arc<Mutex<Session>>>,
    max_age: Duration,
    secure: bool,
}

impl Sessions {
    pub fn new(idle: Duration, max_age: Duration, capacity: u64, secure: bool) -> Self {
        Sessions {
            cache: moka::sync::Cache::builder()
                .max_capacity(capacity)
                .time_to_idle(idle)
                .build(),
            max_age,
            secure,
        }
    }

    /// The cookie's name: `__Host-` binds it to this origin over HTTPS.
    pub fn cookie_name(&self) -> &'static str {
        if self.secure {
            "__Host-samblik"
        } else {
            "samblik"
        }
    }

    /// The session the `Cookie` header names, if it is alive.
    pub fn find(&self, cookie_header: Option<&str>) -> Option<Current> {
        let name = self.cookie_name();
        let id = cookie_header?
            .split(';')
            .filter_map(|c| c.trim().split_once('='))
            .find(|(k, _)| *k == name)
            .map(|(_, v)| v.to_owned())?;
        let state = self.cache.get(&id)?;
        let current = Current { id, state };
        if current.lock().created.elapsed() > self.max_age {
            self.cache.invalidate(&current.id);
            return None;
        }
        Some(current)
    }

    pub fn create(&self) -> Current {
        let id = random_token();
        let state = Arc::new(Mutex::new(Session::new()));
        self.cache.insert(id.clone(), Arc::clone(&state));
        Current { id, state }
    }

    /// Signing in: the session's state moves to a new id and a new CSRF token; the old id is
    /// dead. Returns the new id.
    pub fn rotate(&self, current: &Current) -> Current {
        self.cache.invalidate(&current.id);
        let id = random_token();
        current.lock().csrf = random_token();
        self.cache.insert(id.clone(), Arc::clone(&current.state));
        Current {
            id,
            state: Arc::clone(&current.state),
        }
    }

    pub fn end(&self, current: &Current) {
        self.cache.invalidate(&current.id);
    }

    /// The `Set-Cookie` value that hands `id` to the browser.
    pub fn cookie(&self, id: &str) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}={id}; Path=/; HttpOnly; SameSite=Lax{secure}",
            self.cookie_name()
        )
    }

    /// The `Set-Cookie` value that removes the cookie.
    pub fn expired_cookie(&self) -> String {
        let secure = if self.secure { "; Secure" } else { "" };
        format!(
            "{}=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0{secure}",
            self.cookie_name()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signed_in_user_prints_without_their_token() {
        let user = SignedIn {
            token: "eyJhbGciOiJFUzI1NiJ9.secret-payload.signature".into(),
            caller: Arc::new(Caller {
                id: "cw-1".into(),
                name: "Mette Jensen".into(),
                department: "jobcenter".into(),
                municipality: "0101".into(),
                roles: vec!["caseworker".into()],
                citizen: None,
            }),
            expires: SystemTime::UNIX_EPOCH,
        };
        let printed = format!("{user:?}");
        assert!(printed.contains("Mette Jensen"), "{printed}");
        assert!(!printed.contains("secret-payload"), "{printed}");
    }

    #[test]
    fn secrets_compare_by_content() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "abcd"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn a_session_is_found_by_its_cookie_and_dies_on_rotation() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(600), 10, true);
        let current = sessions.create();
        let header = format!("other=1; __Host-samblik={}", current.id);
        assert!(sessions.find(Some(&header)).is_some());
        assert!(sessions.find(Some("__Host-samblik=made-up")).is_none());
        assert!(sessions.find(None).is_none());
        let csrf = current.lock().csrf.clone();
        let rotated = sessions.rotate(&current);
        assert!(sessions.find(Some(&header)).is_none(), "the old id is dead");
        let found = sessions
            .find(Some(&format!("__Host-samblik={}", rotated.id)))
            .unwrap();
        assert_ne!(found.lock().csrf, csrf, "a new CSRF token with the new id");
        sessions.end(&rotated);
        assert!(
            sessions
                .find(Some(&format!("__Host-samblik={}", rotated.id)))
                .is_none()
        );
    }

    #[test]
    fn a_session_ends_at_its_maximum_age() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::ZERO, 10, false);
        let current = sessions.create();
        assert!(
            sessions
                .find(Some(&format!("samblik={}", current.id)))
                .is_none()
        );
    }

    #[test]
    fn cookies_are_http_only_and_same_site() {
        let sessions = Sessions::new(Duration::from_secs(60), Duration::from_secs(60), 10, true);
        let cookie = sessions.cookie("x");
        assert!(cookie.starts_with("__Host-samblik=x;"));
        for part in ["HttpOnly", "SameSite=Lax", "Secure", "Path=/"] {
            assert!(cookie.contains(part), "{cookie}");
        }
        assert!(
            !Sessions::new(Duration::from_secs(1), Duration::from_secs(1), 1, false)
                .cookie("x")
                .contains("Secure")
        );
    }
}
