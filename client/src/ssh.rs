//! Servers started for you over ssh, as GNU parallel's `--sshlogin` starts its jobs:
//! `pool-client up hosts.txt`, `pool-client down hosts.txt`, and `launch = "ssh"` in a
//! job file.
//!
//! Everything goes through the system's `ssh` program, run as a process with an
//! argument list built here (no local shell), so the user's ssh configuration, keys and
//! agent apply as they do for `ssh host` by hand. For each host:
//!
//! 1. `ssh -G` says which machine the destination names (after the configuration's
//!    `HostName`): the clients connect to that name at the servers' port.
//! 2. `ssh host sh -s` runs [`start_script`], read from ssh's standard input: it checks
//!    that `~/.cache/pool/PROGRAM --version` says what the local program says, and if
//!    so starts it in a session (and process group) of its own with `setsid`, its
//!    output in `~/.cache/pool/server-PORT.log`, so it outlives the ssh session; it
//!    prints the server's process id once the log shows it listening.
//! 3. If the program is missing or of another version, `ssh host sh -c '...'` copies it
//!    there from its standard input (written to a temporary name, then renamed, so a
//!    server running the old one is not disturbed), and step 2 runs again.
//!
//! The servers require a token drawn for the run. It travels inside the script, on
//! ssh's standard input, and reaches the server in its environment (`POOL_TOKEN`): it
//! is on no command line, so `ps` on neither machine shows it. The servers' process ids
//! are kept ([`UpState`] for `up`, [`LaunchedServers`] for one run), and
//! [`stop_script`] stops exactly those: SIGTERM to the process group, SIGKILL after
//! 10 s, once it has checked that the process id still belongs to the program it
//! started.
//!
//! A host that fails is reported with what ssh (or the remote script) wrote on standard
//! error, and the other hosts go on. ssh runs with `BatchMode=yes` (keys or an agent,
//! never a password prompt: several hosts are reached at once, without a terminal) and
//! `ConnectTimeout=10`; every ssh command has a time limit.
//!
//! The hosts must be Unix machines with `sh`, `setsid` (util-linux) and `/proc`: Linux.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};
use pool_common::jobfile;
use pool_common::sshhosts::{read_hosts_file, SshHost};
use serde::{Deserialize, Serialize};

/// The folder, under the home of the user ssh logs in as, that holds the copied server
/// program and the servers' logs.
pub const REMOTE_DIR: &str = ".cache/pool";

/// The exit status with which [`start_script`] says the program must be copied first.
const NEEDS_COPY: i32 = 10;

/// Time for `ssh -G`, `--version`, a start or a stop (which waits 10 s at most on the
/// host): ssh's 10 s to connect, plus the script.
const SSH_LIMIT: Duration = Duration::from_secs(60);

/// Time for copying the program to a host.
const COPY_LIMIT: Duration = Duration::from_secs(600);

/// How the system's `ssh` is run.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ssh {
    /// An ssh configuration file given as `-F FILE` (in it: users, ports, identities,
    /// known hosts, jump hosts); without it, ssh reads `~/.ssh/config` as usual.
    pub config: Option<PathBuf>,
}

impl Ssh {
    /// `ssh` with the options every call shares, for `host`.
    fn command(&self, host: &SshHost) -> Command {
        let mut command = Command::new("ssh");
        if let Some(config) = &self.config {
            command.arg("-F").arg(config);
        }
        command.args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10"]);
        if let Some(port) = host.port {
            command.arg("-p").arg(port.to_string());
        }
        command
    }

    /// Runs `remote`, a command line for the remote user's shell, on `host`, with
    /// `input` on its standard input. `Err` is ssh's own message when ssh failed
    /// (exit status 255: not connected, not authenticated...).
    fn run(
        &self,
        host: &SshHost,
        remote: &str,
        input: Box<dyn Read + Send>,
        limit: Duration,
    ) -> Result<Output, String> {
        let mut command = self.command(host);
        command.arg("--").arg(&host.login).arg(remote);
        let output = run_bounded(command, Some(input), limit)?;
        if output.status.code() == Some(255) {
            return Err(message(&output, "ssh failed"));
        }
        Ok(output)
    }

    /// The host name ssh connects to for `host`, once its configuration has applied
    /// (`ssh -G`, which connects to nothing).
    fn hostname(&self, host: &SshHost) -> Result<String, String> {
        let mut command = self.command(host);
        command.arg("-G").arg("--").arg(&host.login);
        let output = run_bounded(command, None, SSH_LIMIT)?;
        if !output.status.success() {
            return Err(message(&output, "ssh -G failed"));
        }
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .find_map(|line| line.strip_prefix("hostname "))
            .map(|name| name.trim().to_string())
            .ok_or_else(|| "ssh -G printed no hostname line".to_string())
    }
}

/// What a failed command said on standard error (its last lines), else `otherwise` and
/// its exit status.
fn message(output: &Output, otherwise: &str) -> String {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    match lines.len() {
        0 => format!("{otherwise} ({})", output.status),
        n => lines[n.saturating_sub(8)..].join(" / "),
    }
}

/// Runs `command` to its end with `input` on its standard input (or none), collecting
/// its output; kills it if it is still running after `limit`.
fn run_bounded(
    mut command: Command,
    input: Option<Box<dyn Read + Send>>,
    limit: Duration,
) -> Result<Output, String> {
    let program = command.get_program().to_string_lossy().into_owned();
    let mut child = command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if let (Some(mut input), Some(mut stdin)) = (input, child.stdin.take()) {
        // A remote side that exits early closes the pipe; its status says why.
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut input, &mut stdin);
        });
    }
    let read_all = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped")));
    let deadline = Instant::now() + limit;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "{program} did not finish within {} s",
                    limit.as_secs()
                ));
            }
            Err(e) => return Err(format!("waiting for {program}: {e}")),
        }
    };
    Ok(Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// `text` quoted for `sh`: in single quotes, each `'` written `'\''`.
fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// The program copied to the hosts and run there as the server.
#[derive(Debug, Clone)]
pub struct ServerProgram {
    /// Where it is on this machine.
    pub path: PathBuf,
    /// Its file name, also its name in [`REMOTE_DIR`] on the hosts.
    pub name: String,
    /// What its `--version` prints (`pool-server 0.1.0`): a host whose copy prints
    /// anything else gets this one.
    pub version: String,
    /// It is `pool-client`, whose `serve` is the server.
    serve: bool,
}

impl ServerProgram {
    /// `explicit` (a job file's `server_binary`, `up --server-binary`), or else
    /// `pool-server` beside `client_exe`, or else `client_exe` itself (run as
    /// `pool-client serve`). Fails if it is none of pool's programs.
    pub fn find(explicit: Option<&Path>, client_exe: &Path) -> anyhow::Result<ServerProgram> {
        let path = match explicit {
            Some(path) => path.to_path_buf(),
            None => {
                let beside = client_exe.with_file_name("pool-server");
                if beside.is_file() {
                    beside
                } else {
                    client_exe.to_path_buf()
                }
            }
        };
        let mut command = Command::new(&path);
        command.arg("--version");
        let output = run_bounded(command, None, SSH_LIMIT).map_err(|e| anyhow!(e))?;
        let version = String::from_utf8_lossy(&output.stdout).trim().to_string();
        let serve = match version.split_whitespace().next() {
            Some("pool-server") => false,
            Some("pool-client") => true,
            _ => bail!(
                "{}: not pool-server or pool-client (its --version printed {version:?})",
                path.display()
            ),
        };
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| {
                n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
            })
            .with_context(|| {
                format!(
                    "{}: name the server program with letters, digits, `.`, `_` and `-` only",
                    path.display()
                )
            })?
            .to_string();
        Ok(ServerProgram {
            path,
            name,
            version,
            serve,
        })
    }
}

/// A server started over ssh: what clients and `down` need.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Running {
    /// The hosts file's entry (`alice@lab2:2222`).
    pub host: String,
    /// Where clients reach it, `host:port`.
    pub address: String,
    /// Its process id on the host, which also leads its process group.
    pub pid: u32,
    /// Its program's file name in [`REMOTE_DIR`], to check the process id is still it.
    pub program: String,
}

/// A server just started, and whether its program had to be copied first.
#[derive(Debug, Clone)]
pub struct Started {
    /// The server.
    pub running: Running,
    /// Why the program was copied (what the host had instead), if it was.
    pub copied: Option<String>,
}

/// How to start servers over ssh.
#[derive(Debug, Clone)]
pub struct Launcher {
    /// How ssh is run.
    pub ssh: Ssh,
    /// What runs as the server.
    pub program: ServerProgram,
    /// The port the servers listen on.
    pub port: u16,
}

impl Launcher {
    /// Starts a server on each host at once, every one requiring `token`; one result
    /// per host, in order.
    pub fn start_all(&self, hosts: &[SshHost], token: &str) -> Vec<Result<Started, String>> {
        std::thread::scope(|scope| {
            let starts: Vec<_> = hosts
                .iter()
                .map(|host| scope.spawn(move || self.start(host, token)))
                .collect();
            starts
                .into_iter()
                .map(|start| {
                    start
                        .join()
                        .unwrap_or_else(|_| Err("starting it panicked".into()))
                })
                .collect()
        })
    }

    /// Starts a server on `host`, copying the program there first if it must.
    fn start(&self, host: &SshHost, token: &str) -> Result<Started, String> {
        let name = self.ssh.hostname(host)?;
        let address = if name.contains(':') {
            format!("[{name}]:{}", self.port)
        } else {
            format!("{name}:{}", self.port)
        };
        let script = start_script(&self.program, self.port, host.workers, token);
        let run_script = || {
            self.ssh.run(
                host,
                "sh -s",
                Box::new(std::io::Cursor::new(script.clone().into_bytes())),
                SSH_LIMIT,
            )
        };
        let said = |output: &Output| String::from_utf8_lossy(&output.stdout).trim().to_string();
        let mut output = run_script()?;
        let mut copied = None;
        if output.status.code() == Some(NEEDS_COPY) {
            self.copy(host)?;
            copied = Some(said(&output));
            output = run_script()?;
        }
        match output.status.code() {
            Some(0) => {
                let said = said(&output);
                let pid = said
                    .strip_prefix("pid ")
                    .and_then(|pid| pid.parse().ok())
                    .ok_or_else(|| format!("the start script printed {said:?}"))?;
                Ok(Started {
                    running: Running {
                        host: host.entry.clone(),
                        address,
                        pid,
                        program: self.program.name.clone(),
                    },
                    copied,
                })
            }
            Some(NEEDS_COPY) => Err(format!(
                "the copied {} does not run there: {}",
                self.program.name,
                said(&output)
            )),
            _ => Err(message(&output, "the start script failed")),
        }
    }

    /// Copies the program to `host`'s [`REMOTE_DIR`] through ssh's standard input.
    fn copy(&self, host: &SshHost) -> Result<(), String> {
        let name = &self.program.name;
        let remote = format!(
            "sh -c 'umask 077 && d=\"$HOME/{REMOTE_DIR}\" && mkdir -p \"$d\" && t=\"$d/.{name}.$$\" \
             && {{ cat > \"$t\" && chmod 700 \"$t\" && mv -f \"$t\" \"$d/{name}\" || {{ rm -f \"$t\"; exit 1; }}; }}'"
        );
        let file = File::open(&self.program.path)
            .map_err(|e| format!("cannot read {}: {e}", self.program.path.display()))?;
        let output = self.ssh.run(host, &remote, Box::new(file), COPY_LIMIT)?;
        if !output.status.success() {
            return Err(format!(
                "copying {name} failed: {}",
                message(&output, "the copy failed")
            ));
        }
        Ok(())
    }
}

/// The script `sh -s` runs on a host to start a server: the program's version is
/// checked (exit [`NEEDS_COPY`] with what was found if it differs), then the server
/// starts in a session of its own with the token in its environment, and the script
/// prints `pid N` once the server's log shows it listening (within 10 s), or fails with
/// the log.
pub fn start_script(
    program: &ServerProgram,
    port: u16,
    workers: Option<u32>,
    token: &str,
) -> String {
    let serve = if program.serve { " serve" } else { "" };
    let workers = workers.map_or(String::new(), |n| format!(" --workers {n}"));
    format!(
        r#"d="$HOME/{REMOTE_DIR}"; bin="$d/{name}"
if [ ! -x "$bin" ]; then echo "$bin was missing"; exit {NEEDS_COPY}; fi
found=$("$bin" --version 2>&1)
if [ "$found" != {version} ]; then echo "$bin --version says: $found"; exit {NEEDS_COPY}; fi
POOL_TOKEN={token}; export POOL_TOKEN
cd "$d" || exit 1
log="$d/server-{port}.log"
# A log left by an earlier server on this port must not pass for this one's.
rm -f "$log" || exit 1
setsid "$bin"{serve} --port {port}{workers} </dev/null >"$log" 2>&1 &
pid=$!
i=0
while [ $i -lt 200 ]; do
  if grep -q ' listening on ' "$log"; then echo "pid $pid"; exit 0; fi
  if ! kill -0 $pid 2>/dev/null; then echo "$bin{serve} --port {port} exited at start:" >&2; cat "$log" >&2; exit 3; fi
  sleep 0.05; i=$((i+1))
done
echo "$bin{serve} did not start listening within 10 s:" >&2; cat "$log" >&2
kill -TERM -$pid 2>/dev/null || kill -TERM $pid
exit 3
"#,
        name = program.name,
        version = sh_quote(&program.version),
        token = sh_quote(token),
    )
}

/// The script `sh -s` runs on a host to stop `server`: it prints what it did, or fails
/// if the process id now belongs to another program.
pub fn stop_script(server: &Running) -> String {
    format!(
        r#"pid={pid}
alive() {{ [ -e /proc/$pid ] && ! grep -q ') Z' /proc/$pid/stat 2>/dev/null; }}
if ! alive; then echo "was not running"; exit 0; fi
case "$(tr '\000' ' ' < /proc/$pid/cmdline)" in
  *"/{REMOTE_DIR}/{program}"*) ;;
  *) echo "process $pid is not the server up started (that one ended, and its number was reused)" >&2; exit 4;;
esac
kill -TERM -$pid 2>/dev/null || kill -TERM $pid
i=0
while alive && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done
if alive; then kill -KILL -$pid 2>/dev/null || kill -KILL $pid; echo "killed (SIGKILL) after 10 s"; else echo "stopped"; fi
"#,
        pid = server.pid,
        program = server.program,
    )
}

/// Stops each of `servers` at once; one result per server, in order: what happened
/// (`stopped`), or why it could not be stopped.
pub fn stop_all(ssh: &Ssh, servers: &[Running]) -> Vec<Result<String, String>> {
    std::thread::scope(|scope| {
        let stops: Vec<_> = servers
            .iter()
            .map(|server| scope.spawn(move || stop(ssh, server)))
            .collect();
        stops
            .into_iter()
            .map(|stop| {
                stop.join()
                    .unwrap_or_else(|_| Err("stopping it panicked".into()))
            })
            .collect()
    })
}

fn stop(ssh: &Ssh, server: &Running) -> Result<String, String> {
    let host = SshHost::parse(&server.host)?;
    let script = stop_script(server);
    let output = ssh.run(
        &host,
        "sh -s",
        Box::new(std::io::Cursor::new(script.into_bytes())),
        SSH_LIMIT,
    )?;
    if !output.status.success() {
        return Err(message(&output, "the stop script failed"));
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
}

/// What `pool-client up hosts.txt` started, kept beside the hosts file (see
/// [`state_path`]) for `pool-client down` and for job files with that `ssh_hosts`.
/// It holds the servers' token, so it is written with mode 0600.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpState {
    /// The token every server of the file requires.
    pub token: String,
    /// How ssh was run (for `down`).
    pub ssh: Ssh,
    /// The servers, one per host.
    #[serde(default, rename = "server")]
    pub servers: Vec<Running>,
}

/// Where `up` keeps what it started from `hosts_file`: beside it, its name followed by
/// `.pool-up` (`hosts.txt.pool-up`).
pub fn state_path(hosts_file: &Path) -> PathBuf {
    let mut name = hosts_file.file_name().unwrap_or_default().to_os_string();
    name.push(".pool-up");
    hosts_file.with_file_name(name)
}

impl UpState {
    /// The state of `hosts_file`'s servers, or `None` if `up` started none (or `down`
    /// stopped them all).
    pub fn load(hosts_file: &Path) -> anyhow::Result<Option<UpState>> {
        let path = state_path(hosts_file);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        toml::from_str(&text)
            .map(Some)
            .with_context(|| format!("{}: not a state file of pool-client up", path.display()))
    }

    /// Writes the state beside `hosts_file` (readable by its owner only), or removes
    /// the file once no server is left. Returns its path.
    pub fn save(&self, hosts_file: &Path) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::OpenOptionsExt as _;
        let path = state_path(hosts_file);
        if self.servers.is_empty() {
            match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(e).with_context(|| format!("cannot remove {}", path.display()))
                }
                _ => return Ok(path),
            }
        }
        let text = format!(
            "# The servers `pool-client up {}` started, and their token: read by\n\
             # `pool-client down` and by job files with this ssh_hosts. Keep it private.\n{}",
            hosts_file.display(),
            toml::to_string(self).context("cannot write the state as TOML")?
        );
        let mut temporary = path.clone().into_os_string();
        temporary.push(".new");
        let temporary = PathBuf::from(temporary);
        let _ = std::fs::remove_file(&temporary);
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&temporary)
            .and_then(|mut file| file.write_all(text.as_bytes()))
            .and_then(|()| std::fs::rename(&temporary, &path))
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// The state `pool-client up hosts_file` left, or an error saying to run it.
    pub fn require(hosts_file: &Path) -> anyhow::Result<UpState> {
        UpState::load(hosts_file)?.with_context(|| {
            format!(
                "no servers were started on the hosts of {0} (no {1}): run `pool-client up {0}` first, \
                 or add launch = \"ssh\" to the job file to start them for the run",
                hosts_file.display(),
                state_path(hosts_file).display()
            )
        })
    }

    /// The servers' addresses.
    pub fn addresses(&self) -> Vec<String> {
        self.servers.iter().map(|s| s.address.clone()).collect()
    }
}

/// The column a report's host names take.
fn host_column(hosts: impl Iterator<Item = usize>) -> usize {
    hosts.max().unwrap_or(0).max(4)
}

/// `pool-client up`: starts a server on each host of `hosts_file` that has none yet
/// from an earlier `up` (all requiring one token, drawn for the first), writes one line
/// per host to `out`, and records what runs in the state file. `Ok(false)` if some host
/// failed; `Err` for a bad hosts file or program, before any host is contacted.
pub fn up(
    hosts_file: &Path,
    ssh: Ssh,
    server_binary: Option<&Path>,
    port: u16,
    client_exe: &Path,
    out: &mut dyn Write,
) -> anyhow::Result<bool> {
    let hosts = read_hosts_file(hosts_file)?;
    let ssh = Ssh {
        config: ssh.config.map(|c| std::path::absolute(&c).unwrap_or(c)),
    };
    let mut state = UpState::load(hosts_file)?.unwrap_or_else(|| UpState {
        token: pool_common::auth::random_token(),
        ssh: ssh.clone(),
        servers: Vec::new(),
    });
    state.ssh = ssh.clone();
    let (already, to_start): (Vec<&SshHost>, Vec<&SshHost>) = hosts
        .iter()
        .partition(|h| state.servers.iter().any(|s| s.host == h.entry));
    let launcher = Launcher {
        ssh,
        program: ServerProgram::find(server_binary, client_exe)?,
        port,
    };
    let to_start: Vec<SshHost> = to_start.into_iter().cloned().collect();
    let results = launcher.start_all(&to_start, &state.token);
    let width = host_column(hosts.iter().map(|h| h.entry.len()));
    let mut all_ok = true;
    writeln!(out, "{:<width$}  {:<8} server", "host", "state")?;
    for host in already {
        let server = state
            .servers
            .iter()
            .find(|s| s.host == host.entry)
            .expect("partitioned");
        writeln!(
            out,
            "{:<width$}  {:<8} {} pid {} (from an earlier up; `pool-client down` first to restart it)",
            host.entry, "running", server.address, server.pid
        )?;
    }
    for (host, result) in to_start.iter().zip(results) {
        match result {
            Ok(started) => {
                let copied = match &started.copied {
                    Some(found) => format!(
                        ", copied {} ({}) to ~/{REMOTE_DIR}: {found}",
                        launcher.program.name, launcher.program.version
                    ),
                    None => String::new(),
                };
                writeln!(
                    out,
                    "{:<width$}  {:<8} {} pid {}{copied}",
                    host.entry, "started", started.running.address, started.running.pid
                )?;
                state.servers.push(started.running);
            }
            Err(e) => {
                all_ok = false;
                writeln!(out, "{:<width$}  {:<8} {e}", host.entry, "failed")?;
            }
        }
    }
    let path = state.save(hosts_file)?;
    if !state.servers.is_empty() {
        writeln!(
            out,
            "{} servers running, recorded with their token in {} (mode 0600); \
             a job file with ssh_hosts = \"{}\" uses them, `pool-client down {}` stops them",
            state.servers.len(),
            path.display(),
            hosts_file.display(),
            hosts_file.display()
        )?;
    }
    Ok(all_ok)
}

/// `pool-client down`: stops the servers `up` started from `hosts_file`, writes one
/// line per host to `out`, and keeps in the state file only those it could not stop.
/// `Ok(false)` if some could not be stopped.
pub fn down(hosts_file: &Path, ssh: Option<Ssh>, out: &mut dyn Write) -> anyhow::Result<bool> {
    let Some(mut state) = UpState::load(hosts_file)? else {
        bail!(
            "nothing to stop: no {} (pool-client up {} writes it)",
            state_path(hosts_file).display(),
            hosts_file.display()
        );
    };
    if let Some(ssh) = ssh {
        state.ssh = ssh;
    }
    let results = stop_all(&state.ssh, &state.servers);
    let width = host_column(state.servers.iter().map(|s| s.host.len()));
    writeln!(out, "{:<width$}  {:<8} server", "host", "state")?;
    let mut left = Vec::new();
    for (server, result) in state.servers.iter().zip(results) {
        match result {
            Ok(what) => {
                // "stopped", or what else happened ("was not running").
                let what = match what.as_str() {
                    "stopped" => String::new(),
                    other => format!(": {other}"),
                };
                writeln!(
                    out,
                    "{:<width$}  {:<8} {} pid {}{what}",
                    server.host, "stopped", server.address, server.pid
                )?
            }
            Err(e) => {
                writeln!(out, "{:<width$}  {:<8} {e}", server.host, "failed")?;
                left.push(server.clone());
            }
        }
    }
    let all_ok = left.is_empty();
    state.servers = left;
    let path = state.save(hosts_file)?;
    if !all_ok {
        writeln!(
            out,
            "{} servers left in {}: run `pool-client down {}` again once their hosts answer",
            state.servers.len(),
            path.display(),
            hosts_file.display()
        )?;
    }
    Ok(all_ok)
}

/// Servers started over ssh for one run (`launch = "ssh"`), stopped when this is
/// dropped: after the job, and also when it fails or is interrupted.
pub struct LaunchedServers {
    ssh: Ssh,
    running: Vec<Running>,
    token: String,
}

impl LaunchedServers {
    /// Starts a server on each of `settings`' hosts, all requiring a token drawn now.
    /// A host that fails is logged as a warning with its message and left out; if none
    /// starts, the error lists each host's.
    pub fn start(
        settings: &jobfile::SshServers,
        client_exe: &Path,
    ) -> anyhow::Result<LaunchedServers> {
        let launcher = Launcher {
            ssh: Ssh {
                config: settings.config.clone(),
            },
            program: ServerProgram::find(settings.server_binary.as_deref(), client_exe)?,
            port: settings.port,
        };
        let token = pool_common::auth::random_token();
        let mut failed = Vec::new();
        let mut servers = LaunchedServers {
            ssh: launcher.ssh.clone(),
            running: Vec::new(),
            token,
        };
        for (host, result) in settings
            .hosts
            .iter()
            .zip(launcher.start_all(&settings.hosts, &servers.token))
        {
            match result {
                Ok(started) => servers.running.push(started.running),
                Err(e) => {
                    tracing::warn!("no server on {}: {e}", host.entry);
                    failed.push(format!("{}: {e}", host.entry));
                }
            }
        }
        if servers.running.is_empty() {
            bail!(
                "no server could be started over ssh:\n  {}",
                failed.join("\n  ")
            );
        }
        Ok(servers)
    }

    /// The servers' addresses, `host:port`.
    pub fn addresses(&self) -> Vec<String> {
        self.running.iter().map(|s| s.address.clone()).collect()
    }

    /// The token the servers require.
    pub fn token(&self) -> &str {
        &self.token
    }
}

impl Drop for LaunchedServers {
    fn drop(&mut self) {
        for (server, result) in self.running.iter().zip(stop_all(&self.ssh, &self.running)) {
            if let Err(e) = result {
                tracing::warn!(
                    "the server on {} (pid {}) was not stopped: {e}",
                    server.host,
                    server.pid
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_file_is_private_and_goes_once_empty() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let hosts = dir.path().join("hosts.txt");
        assert_eq!(state_path(&hosts), dir.path().join("hosts.txt.pool-up"));
        assert_eq!(UpState::load(&hosts).unwrap(), None);
        let mut state = UpState {
            token: "0123".into(),
            ssh: Ssh {
                config: Some("/etc/pool/ssh_config".into()),
            },
            servers: vec![Running {
                host: "alice@lab1:2222".into(),
                address: "lab1:7000".into(),
                pid: 42,
                program: "pool-server".into(),
            }],
        };
        let path = state.save(&hosts).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(UpState::load(&hosts).unwrap(), Some(state.clone()));
        state.servers.clear();
        state.save(&hosts).unwrap();
        assert!(!path.exists());
        let error = UpState::require(&hosts).unwrap_err().to_string();
        assert!(error.contains("run `pool-client up"), "{error}");
    }

    #[test]
    fn the_scripts_run_under_sh() {
        // The start script, against a "host" that is this machine's sh: a program
        // that is not there asks for a copy, without starting anything.
        let program = ServerProgram {
            path: "pool-server".into(),
            name: "pool-server-absent-for-this-test".into(),
            version: "pool-server 0.1.0 'quoted'".into(),
            serve: false,
        };
        let script = start_script(&program, 7000, Some(2), "tok'en");
        assert!(
            script.contains(r"'pool-server 0.1.0 '\''quoted'\'''"),
            "{script}"
        );
        let mut sh = Command::new("sh");
        sh.arg("-s").env("HOME", "/nonexistent");
        let output = run_bounded(
            sh,
            Some(Box::new(std::io::Cursor::new(script.into_bytes()))),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(output.status.code(), Some(NEEDS_COPY), "{output:?}");
        assert_eq!(
            String::from_utf8_lossy(&output.stdout).trim(),
            "/nonexistent/.cache/pool/pool-server-absent-for-this-test was missing"
        );
        // The stop script refuses a process id that is not the server's: this test's.
        let stranger = Running {
            host: "localhost".into(),
            address: "localhost:7000".into(),
            pid: std::process::id(),
            program: "pool-server".into(),
        };
        let mut sh = Command::new("sh");
        sh.arg("-s");
        let output = run_bounded(
            sh,
            Some(Box::new(std::io::Cursor::new(
                stop_script(&stranger).into_bytes(),
            ))),
            Duration::from_secs(10),
        )
        .unwrap();
        assert_eq!(output.status.code(), Some(4), "{output:?}");
        assert!(message(&output, "").contains("is not the server up started"));
    }
}
