//! External servers declared on the command line: `--peer NAME='COMMAND {port}'` (a WebSocket
//! echo server) and `--raw-peer NAME='COMMAND {port}'` (a raw TCP echo, no framing).
//!
//! The command is split into words the way a POSIX shell would (quotes and backslashes; no
//! variables, globs, pipes or redirections: for those, write `sh -c '...'`) and started
//! directly, without a shell, with every `{port}` replaced by a free port on 127.0.0.1.

use std::path::{Path, PathBuf};

/// The placeholder replaced by the port the server must listen on.
pub const PORT: &str = "{port}";

/// A server declared with `--peer` or `--raw-peer`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalPeer {
    /// Name of its rows.
    pub name: String,
    /// The command's words, `{port}` still in place.
    pub words: Vec<String>,
    /// Raw TCP echo (driven by `peerload raw`) instead of WebSocket.
    pub raw: bool,
    /// Ready when it prints a line containing this (stdout or stderr), instead of when a TCP
    /// connection to its port succeeds.
    pub ready_line: Option<String>,
}

/// The name of percore's own rows.
const RESERVED: &str = "percore";

impl ExternalPeer {
    /// Parse `NAME=COMMAND` (the value of `--peer` / `--raw-peer`).
    pub fn parse(spec: &str, raw: bool) -> Result<ExternalPeer, String> {
        let flag = if raw { "--raw-peer" } else { "--peer" };
        let (name, command) = spec
            .split_once('=')
            .ok_or_else(|| format!("{flag} {spec:?}: expected NAME='COMMAND {PORT}'"))?;
        let name = name.trim();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-+".contains(c))
        {
            return Err(format!(
                "{flag} {spec:?}: the name must be letters, digits, '.', '_', '-' or '+'"
            ));
        }
        if name == RESERVED {
            return Err(format!(
                "{flag} {name}: the name of percore's own rows; pick another"
            ));
        }
        let words: Vec<String> = shlex::split(command)
            .ok_or_else(|| format!("{flag} {name}: unbalanced quotes in {command:?}"))?
            .iter()
            .map(|w| expand_home(w))
            .collect();
        if words.is_empty() {
            return Err(format!("{flag} {name}: empty command"));
        }
        if !words.iter().any(|w| w.contains(PORT)) {
            return Err(format!(
                "{flag} {name}: the command must contain {PORT} (replaced by the port to listen \
                 on, e.g. '{} {PORT}')",
                words[0]
            ));
        }
        if words[0].contains(PORT) {
            return Err(format!(
                "{flag} {name}: {PORT} cannot be the program itself"
            ));
        }
        resolve_program(&words[0]).map_err(|e| format!("{flag} {name}: {e}"))?;
        Ok(ExternalPeer {
            name: name.to_string(),
            words,
            raw,
            ready_line: None,
        })
    }

    /// The command for `port`: program and arguments.
    pub fn render(&self, port: u16) -> (PathBuf, Vec<String>) {
        let p = port.to_string();
        let mut words = self.words.iter().map(|w| w.replace(PORT, &p));
        let program = words.next().unwrap_or_default();
        let program = resolve_program(&program).unwrap_or_else(|_| PathBuf::from(program));
        (program, words.collect())
    }
}

/// Parse `NAME=TEXT` (the value of `--ready-line`).
pub fn parse_ready_line(spec: &str) -> Result<(String, String), String> {
    match spec.split_once('=') {
        Some((n, t)) if !n.trim().is_empty() && !t.is_empty() => {
            Ok((n.trim().to_string(), t.to_string()))
        }
        _ => Err(format!("--ready-line {spec:?}: expected NAME=TEXT")),
    }
}

/// `word` with a leading `~/` replaced by $HOME/ (the command is quoted on the command line,
/// so the shell left the tilde alone).
pub fn expand_home(word: &str) -> String {
    match (word.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => Path::new(&home).join(rest).to_string_lossy().into_owned(),
        _ => word.to_string(),
    }
}

/// The executable a program word names: a path (with a '/') as is, else looked up in PATH.
pub fn resolve_program(word: &str) -> Result<PathBuf, String> {
    let executable = |p: &Path| {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(p)
            .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            .unwrap_or(false)
    };
    if word.contains('/') {
        let p = PathBuf::from(word);
        return if executable(&p) {
            Ok(p)
        } else if p.exists() {
            Err(format!("{word} is not an executable file"))
        } else {
            Err(format!("{word}: no such file"))
        };
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join(word))
        .find(|p| executable(p))
        .ok_or_else(|| format!("{word}: not found in PATH"))
}

/// A port on 127.0.0.1 that was free a moment ago (bound to port 0, read, released). Another
/// process may take it before the server binds it: the caller retries on another port when
/// the server exits before it is ready.
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_peer_is_a_name_and_a_command_with_the_port_placeholder() {
        let p = ExternalPeer::parse("uwebsockets=/bin/sh {port} echo none", false).unwrap();
        assert_eq!(p.name, "uwebsockets");
        assert_eq!(p.words, ["/bin/sh", "{port}", "echo", "none"]);
        assert!(!p.raw);
        let (prog, args) = p.render(4242);
        assert_eq!(prog, PathBuf::from("/bin/sh"));
        assert_eq!(args, ["4242", "echo", "none"]);
    }

    #[test]
    fn words_are_split_like_a_shell_and_every_placeholder_is_replaced() {
        let p = ExternalPeer::parse(
            r#"other=sh -c 'exec server --addr 127.0.0.1:{port}' "a b" c\ d --x={port}"#,
            true,
        )
        .unwrap();
        assert!(p.raw);
        let (prog, args) = p.render(9);
        assert!(prog.ends_with("sh"), "{prog:?}");
        assert_eq!(
            args,
            [
                "-c",
                "exec server --addr 127.0.0.1:9",
                "a b",
                "c d",
                "--x=9"
            ]
        );
    }

    #[test]
    fn a_leading_tilde_is_the_home_directory() {
        let home = std::env::var("HOME").unwrap();
        assert_eq!(expand_home("~/x/y"), format!("{home}/x/y"));
        assert_eq!(expand_home("a~/x"), "a~/x");
        assert_eq!(expand_home("~user/x"), "~user/x");
    }

    #[test]
    fn bad_declarations_say_what_is_wrong() {
        let e = |s: &str| ExternalPeer::parse(s, false).unwrap_err();
        assert!(e("no-equals-sign").contains("NAME='COMMAND {port}'"));
        assert!(e("=/bin/sh {port}").contains("name"));
        assert!(e("a b=/bin/sh {port}").contains("name"));
        assert!(e("percore=/bin/sh {port}").contains("percore's own rows"));
        assert!(e("x=/bin/sh 9001").contains("must contain {port}"));
        assert!(e("x=").contains("empty"));
        assert!(e("x='/bin/sh {port}").contains("unbalanced"));
        assert!(e("x=/nonexistent/uws_echo {port}").contains("no such file"));
        let plain = std::env::temp_dir().join(format!("percore-peer-test-{}", std::process::id()));
        std::fs::write(&plain, "not a program").unwrap();
        let not_exec = e(&format!("x={} {{port}}", plain.display()));
        let _ = std::fs::remove_file(&plain);
        assert!(not_exec.contains("not an executable"), "{not_exec}");
        assert!(e("x=no-such-program-here {port}").contains("not found in PATH"));
        assert!(e("x={port} a").contains("cannot be the program"));
    }

    #[test]
    fn ready_lines_are_name_and_text() {
        assert_eq!(
            parse_ready_line("uws=listening on").unwrap(),
            ("uws".to_string(), "listening on".to_string())
        );
        assert!(parse_ready_line("uws=").is_err());
        assert!(parse_ready_line("uws").is_err());
    }

    #[test]
    fn free_ports_are_nonzero() {
        assert_ne!(free_port().unwrap(), 0);
    }
}
