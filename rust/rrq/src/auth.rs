//! Runner authentication: which hellos may open a session.
//!
//! A stream gets jobs only after its hello presents a secret valid for the
//! runner name it claims:
//! - a *spawn token*: a fresh 256-bit secret from the OS CSPRNG per process
//!   the supervisor starts, handed over in `RRQ_RUNNER_TOKEN`, valid while
//!   that process lives and for one connected stream at a time;
//! - an *external token*: the value of the orchestrator's environment
//!   variable named by `rrq.runners.<name>.token_env`, shared by every
//!   external process of that runner (they reconnect with it).
//!
//! Secrets are compared in constant time and never logged or put in an error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::config::{Config, ConfigError};

/// Bytes of randomness in a spawn token (hex-encoded on the wire).
const SPAWN_TOKEN_BYTES: usize = 32;

/// Shortest external token accepted (bytes): 16 bytes = 128 bits if random.
pub const MIN_EXTERNAL_TOKEN_BYTES: usize = 16;

/// Why a hello was refused. The message names the runner, never the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// The hello carries no token.
    #[error(
        "hello for runner {runner:?} carries no process_token (a spawned runner gets one in RRQ_RUNNER_TOKEN; an external one needs rrq.runners.{runner}.token_env)"
    )]
    Missing {
        /// Runner name claimed in the hello.
        runner: String,
    },
    /// The token is not one of this runner's: wrong, forged, of another
    /// runner, or of a process that exited.
    #[error("the process_token is not valid for runner {runner:?}")]
    Invalid {
        /// Runner name claimed in the hello.
        runner: String,
    },
    /// The spawn token is already used by a connected stream.
    #[error(
        "the process_token of runner {runner:?} is already used by a connected stream (one stream per spawned process)"
    )]
    InUse {
        /// Runner name claimed in the hello.
        runner: String,
    },
}

/// A live spawned process's secret.
#[derive(Debug)]
struct SpawnSecret {
    token: String,
    /// A stream authenticated with this token is connected.
    in_use: bool,
}

#[derive(Debug, Default)]
struct State {
    /// Spawn tokens of live processes, by runner name.
    spawned: HashMap<String, Vec<SpawnSecret>>,
}

/// See the module documentation. Shared by the supervisor (which adds and
/// removes spawn tokens) and every listener (which checks hellos).
#[derive(Debug, Default)]
pub struct RunnerAuth {
    /// External token of each runner that has `token_env`.
    external: HashMap<String, Vec<u8>>,
    state: Mutex<State>,
}

/// How an admitted stream proved itself. Dropping it (with its session)
/// frees a spawn token for the process's next stream.
#[derive(Debug)]
pub struct Admission {
    auth: Arc<RunnerAuth>,
    runner: String,
    /// The spawn token, for a spawned process; `None` for an external runner.
    spawn_token: Option<String>,
}

impl Admission {
    /// The spawn token of the process (to kill it), or `None` if external.
    pub fn spawn_token(&self) -> Option<&str> {
        self.spawn_token.as_deref()
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some(token) = &self.spawn_token {
            let mut st = self.auth.lock();
            if let Some(secret) = st
                .spawned
                .get_mut(&self.runner)
                .and_then(|v| v.iter_mut().find(|s| s.token == *token))
            {
                secret.in_use = false;
            }
        }
    }
}

impl RunnerAuth {
    /// External tokens read from the environment through `lookup` (the
    /// process environment in production). A runner whose `token_env` names
    /// an unset or too short variable is a configuration error.
    pub fn from_config(
        cfg: &Config,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut external = HashMap::new();
        for (name, runner) in &cfg.runners {
            let Some(var) = &runner.token_env else {
                continue;
            };
            let invalid = |message: String| ConfigError::Invalid {
                origin: "environment".to_owned(),
                key: format!("rrq.runners.{name}.token_env"),
                message,
            };
            let value = lookup(var)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| invalid(format!("environment variable {var} is not set")))?;
            if value.len() < MIN_EXTERNAL_TOKEN_BYTES {
                return Err(invalid(format!(
                    "the token in {var} must be at least {MIN_EXTERNAL_TOKEN_BYTES} bytes (got {})",
                    value.len()
                )));
            }
            external.insert(name.clone(), value.into_bytes());
        }
        Ok(Self {
            external,
            state: Mutex::default(),
        })
    }

    /// An instance with external tokens given directly (tests, fuzzing).
    pub fn with_external(tokens: impl IntoIterator<Item = (String, String)>) -> Self {
        Self {
            external: tokens
                .into_iter()
                .map(|(r, t)| (r, t.into_bytes()))
                .collect(),
            state: Mutex::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A fresh spawn token for a process of `runner`, valid until
    /// [`RunnerAuth::revoke`].
    pub fn issue(&self, runner: &str) -> std::io::Result<String> {
        let mut bytes = [0u8; SPAWN_TOKEN_BYTES];
        getrandom::fill(&mut bytes).map_err(std::io::Error::other)?;
        let token = hex(&bytes);
        self.insert_spawn_token(runner, token.clone());
        Ok(token)
    }

    /// Makes `token` a live spawn token of `runner`. The supervisor goes
    /// through [`RunnerAuth::issue`]; the fuzzer needs known tokens to replay.
    pub fn insert_spawn_token(&self, runner: &str, token: String) {
        self.lock()
            .spawned
            .entry(runner.to_owned())
            .or_default()
            .push(SpawnSecret {
                token,
                in_use: false,
            });
    }

    /// Forgets the token of a process that exited: it admits nothing more.
    pub fn revoke(&self, runner: &str, token: &str) {
        let mut st = self.lock();
        if let Some(v) = st.spawned.get_mut(runner) {
            v.retain(|s| s.token != token);
            if v.is_empty() {
                st.spawned.remove(runner);
            }
        }
    }

    /// Admits a stream whose hello claims `runner` with `token`, or says why not.
    pub fn admit(self: &Arc<Self>, runner: &str, token: &str) -> Result<Admission, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Missing {
                runner: runner.to_owned(),
            });
        }
        let presented = token.as_bytes();
        {
            let mut st = self.lock();
            if let Some(secrets) = st.spawned.get_mut(runner) {
                // Compare against every secret, so the time does not depend
                // on which one (if any) matches.
                let mut hit = None;
                for (i, s) in secrets.iter().enumerate() {
                    if constant_time_eq(s.token.as_bytes(), presented) {
                        hit = Some(i);
                    }
                }
                if let Some(i) = hit {
                    let secret = &mut secrets[i];
                    if secret.in_use {
                        return Err(AuthError::InUse {
                            runner: runner.to_owned(),
                        });
                    }
                    secret.in_use = true;
                    return Ok(Admission {
                        auth: self.clone(),
                        runner: runner.to_owned(),
                        spawn_token: Some(secret.token.clone()),
                    });
                }
            }
        }
        match self.external.get(runner) {
            Some(secret) if constant_time_eq(secret, presented) => Ok(Admission {
                auth: self.clone(),
                runner: runner.to_owned(),
                spawn_token: None,
            }),
            _ => Err(AuthError::Invalid {
                runner: runner.to_owned(),
            }),
        }
    }
}

/// Equality whose time depends only on the lengths, not on where the inputs
/// differ (a secret's length is no secret: spawn tokens all have one length).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    // black_box keeps the optimizer from turning the fold into an early exit.
    std::hint::black_box(diff) == 0
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXT: &str = "external-secret-0123456789";

    fn auth() -> Arc<RunnerAuth> {
        Arc::new(RunnerAuth::with_external([(
            "ext".to_owned(),
            EXT.to_owned(),
        )]))
    }

    #[test]
    fn spawn_tokens_are_random_and_long() {
        let a = auth();
        let t1 = a.issue("py").unwrap();
        let t2 = a.issue("py").unwrap();
        assert_eq!(t1.len(), 64);
        assert_ne!(t1, t2);
    }

    #[test]
    fn a_spawn_token_admits_its_runner_once_at_a_time() {
        let a = auth();
        let t = a.issue("py").unwrap();
        let first = a.admit("py", &t).unwrap();
        assert_eq!(first.spawn_token(), Some(t.as_str()));
        assert_eq!(
            a.admit("py", &t).unwrap_err(),
            AuthError::InUse {
                runner: "py".into()
            }
        );
        drop(first);
        // The process's next stream (after a drop) is admitted again.
        let again = a.admit("py", &t).unwrap();
        drop(again);
        a.revoke("py", &t);
        assert_eq!(
            a.admit("py", &t).unwrap_err(),
            AuthError::Invalid {
                runner: "py".into()
            }
        );
    }

    #[test]
    fn tokens_are_scoped_to_their_runner() {
        let a = auth();
        let t = a.issue("py").unwrap();
        assert!(matches!(a.admit("ts", &t), Err(AuthError::Invalid { .. })));
        assert!(matches!(a.admit("py", EXT), Err(AuthError::Invalid { .. })));
        assert!(matches!(a.admit("ext", &t), Err(AuthError::Invalid { .. })));
    }

    #[test]
    fn external_tokens_admit_many_streams() {
        let a = auth();
        let one = a.admit("ext", EXT).unwrap();
        let two = a.admit("ext", EXT).unwrap();
        assert_eq!(one.spawn_token(), None);
        drop((one, two));
        assert!(matches!(
            a.admit("ext", "external-secret-0123456788"),
            Err(AuthError::Invalid { .. })
        ));
        assert!(matches!(a.admit("ext", ""), Err(AuthError::Missing { .. })));
    }

    #[test]
    fn errors_never_contain_the_token() {
        let a = auth();
        let t = a.issue("py").unwrap();
        let _held = a.admit("py", &t).unwrap();
        for err in [
            a.admit("py", &t).unwrap_err(),
            a.admit("py", "forged-token-value").unwrap_err(),
            a.admit("ext", "forged-token-value").unwrap_err(),
        ] {
            let text = err.to_string();
            assert!(
                !text.contains(&t) && !text.contains("forged-token-value"),
                "{text}"
            );
        }
    }

    #[test]
    fn constant_time_eq_compares_bytes() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"ab"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn external_tokens_come_from_the_named_variable() {
        let cfg = Config::from_toml(
            "[rrq.runners.ext]\ntoken_env = \"EXT_TOKEN\"\n[rrq.runners.py]\ncmd = [\"x\"]\n",
            "rrq.toml",
        )
        .unwrap();
        let ok = RunnerAuth::from_config(&cfg, |v| (v == "EXT_TOKEN").then(|| EXT.to_owned()));
        assert!(ok.is_ok());
        let unset = RunnerAuth::from_config(&cfg, |_| None).unwrap_err();
        assert!(
            unset.to_string().contains("rrq.runners.ext.token_env"),
            "{unset}"
        );
        let short = RunnerAuth::from_config(&cfg, |_| Some("short".to_owned())).unwrap_err();
        assert!(short.to_string().contains("at least 16 bytes"), "{short}");
        assert!(!short.to_string().contains("short\""), "{short}");
    }
}
