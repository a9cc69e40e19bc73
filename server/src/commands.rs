//! Whether, and which, of the users' programs a server runs.
//!
//! A `command` part runs a program the client names, on this machine, as the server's
//! user: remote code execution for whoever reaches the port. So a server runs none
//! unless started with `--allow-commands`, which an allowlist can narrow
//! (`--allow-commands=python3,./sim`), and never with it on an address beyond
//! loopback without `--token` ([`start`](crate::start) refuses). A refused part is
//! answered with [`ErrorCode::NotPermitted`] and a message naming the flag.

use pool_common::jobs::Program;
use pool_common::protocol::{ErrorCode, RemoteError};

/// The standard output a command part may keep on a server, unless
/// `--max-output-bytes` says otherwise.
pub const DEFAULT_MAX_OUTPUT_BYTES: u64 = 64 << 20;

/// Which programs the server runs, and how much output it keeps of each.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandPolicy {
    /// The programs allowed.
    pub allowed: AllowedPrograms,
    /// The most standard output a part may ask to keep (`--max-output-bytes`).
    pub max_output_bytes: u64,
}

impl Default for CommandPolicy {
    /// No program runs.
    fn default() -> Self {
        CommandPolicy {
            allowed: AllowedPrograms::None,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }
}

/// The programs a server runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedPrograms {
    /// None: the default.
    None,
    /// Any program (`--allow-commands`).
    Any,
    /// Only these, matched exactly against the command's first word
    /// (`--allow-commands=python3,./sim`).
    Only(Vec<String>),
}

impl AllowedPrograms {
    /// Reads the value of `--allow-commands`: empty for any program, else a
    /// comma-separated allowlist.
    pub fn parse(value: &str) -> AllowedPrograms {
        let names: Vec<String> = value
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty())
            .map(String::from)
            .collect();
        if names.is_empty() {
            AllowedPrograms::Any
        } else {
            AllowedPrograms::Only(names)
        }
    }
}

impl CommandPolicy {
    /// Whether some program may run.
    pub fn runs_programs(&self) -> bool {
        self.allowed != AllowedPrograms::None
    }

    /// Why the server will not run `program`, if it will not.
    pub fn refusal(&self, program: &Program) -> Option<RemoteError> {
        let refuse = |message: String| Some(RemoteError::new(ErrorCode::NotPermitted, message));
        match &self.allowed {
            AllowedPrograms::None => {
                return refuse(
                    "this server does not run commands: start pool-server with \
                     --allow-commands (and --token unless it listens on loopback only)"
                        .into(),
                )
            }
            AllowedPrograms::Only(names) if !names.iter().any(|name| name == program.name) => {
                return refuse(format!(
                    "this server runs only {} (its --allow-commands list), not {:?}",
                    names.join(", "),
                    program.name
                ))
            }
            _ => {}
        }
        if program.max_output_bytes > self.max_output_bytes {
            return Some(RemoteError::new(
                ErrorCode::LimitExceeded,
                format!(
                    "the part may print {} bytes, over this server's limit of {} (lower \
                     max_output_bytes in the job file, or raise pool-server --max-output-bytes)",
                    program.max_output_bytes, self.max_output_bytes
                ),
            ));
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn program(name: &str) -> Program<'_> {
        Program {
            name,
            max_output_bytes: 100,
        }
    }

    #[test]
    fn nothing_runs_by_default() {
        let refusal = CommandPolicy::default().refusal(&program("sh")).unwrap();
        assert_eq!(refusal.code, ErrorCode::NotPermitted);
        assert!(refusal.message.contains("--allow-commands"));
    }

    #[test]
    fn an_allowlist_matches_the_first_word_exactly() {
        let policy = CommandPolicy {
            allowed: AllowedPrograms::parse("python3, ./sim"),
            ..CommandPolicy::default()
        };
        assert!(policy.refusal(&program("python3")).is_none());
        assert!(policy.refusal(&program("./sim")).is_none());
        for other in ["sh", "/usr/bin/python3", "sim", "python"] {
            let refusal = policy.refusal(&program(other)).unwrap();
            assert!(refusal.message.contains("python3, ./sim"), "{refusal}");
        }
        assert_eq!(AllowedPrograms::parse(""), AllowedPrograms::Any);
    }

    #[test]
    fn output_over_the_limit_is_refused_naming_the_flag() {
        let policy = CommandPolicy {
            allowed: AllowedPrograms::Any,
            max_output_bytes: 99,
        };
        let refusal = policy.refusal(&program("sh")).unwrap();
        assert_eq!(refusal.code, ErrorCode::LimitExceeded);
        assert!(refusal.message.contains("--max-output-bytes"));
    }
}
