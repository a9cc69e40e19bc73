//! Servers started over ssh (`pool-client up`, `pool-client down`, `launch = "ssh"`),
//! against real `sshd`s: one in each server namespace of a lab (see
//! `pool_client::netlab`), listening on its address with a host key the test makes, and
//! a user key it makes too. pool-client runs in the lab's client namespace and reaches
//! them with the system's `ssh`, configured by an ssh config file given to it with
//! `--ssh-config` / `ssh_config`, as a user would.
//!
//! The hosts share this machine's files, so each sshd gives its sessions a home of its
//! own (`SetEnv HOME=...`): each host's `~/.cache/pool` starts empty, as on another
//! machine.
//!
//! Where sshd or ssh is missing, or the machine cannot have network namespaces, each
//! test prints `<test> skipped: ...` naming the package to install, and returns.

mod support;

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use pool_client::netlab::{LabConfig, NetLab};
use serde_json::Value;
use support::netns::{client_command, lab_or_skip};
use support::{client_exe, job_file, reference_result, stderr, stdout, temp_dir, TestDir};

const SSHD: &str = "/usr/sbin/sshd";

/// A lab whose server hosts run sshd (those `with_sshd` says), with the keys and the
/// ssh config to reach them. The sshds are killed when dropped, then the lab goes
/// (killing whatever still runs in its namespaces).
struct SshLab {
    sshds: Vec<Child>,
    dir: TestDir,
    lab: NetLab,
}

impl Drop for SshLab {
    fn drop(&mut self) {
        for sshd in &mut self.sshds {
            let _ = sshd.kill();
            let _ = sshd.wait();
        }
    }
}

/// Runs a program to its end and fails the test if it fails.
fn run(command: &mut Command) -> Output {
    let output = command.output().expect("run a setup command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

/// Whether `program` runs (`-V` or `--version`, whichever it takes, or none).
fn have(program: &str) -> bool {
    Path::new(program).is_file()
        || std::env::var_os("PATH").is_some_and(|paths| {
            std::env::split_paths(&paths).any(|dir| dir.join(program).is_file())
        })
}

impl SshLab {
    /// A lab with one server host per entry of `with_sshd`, sshd running on those
    /// marked true; `None` (after saying why on standard error) where this machine
    /// cannot have one.
    fn new(test: &str, with_sshd: &[bool]) -> Option<SshLab> {
        for (program, package) in [
            (SSHD, "openssh-server"),
            ("ssh", "openssh-client"),
            ("ssh-keygen", "openssh-client"),
        ] {
            if !have(program) {
                // Past the test harness's capture, so a skip shows in a plain cargo test.
                let _ = writeln!(
                    std::io::stderr(),
                    "{test} skipped: needs {program}: apt-get install {package}"
                );
                return None;
            }
        }
        let config = LabConfig {
            servers: with_sshd.len(),
            ..LabConfig::default()
        };
        let lab = lab_or_skip(test, &config)?;
        let dir = temp_dir(test);
        for key in ["host_key", "user_key"] {
            run(Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", key, "-f"])
                .arg(dir.join(key)));
        }
        std::fs::copy(dir.join("user_key.pub"), dir.join("authorized_keys")).unwrap();
        let addresses: Vec<String> = lab
            .servers()
            .iter()
            .map(|h| h.address.to_string())
            .collect();
        let host_key = std::fs::read_to_string(dir.join("host_key.pub")).unwrap();
        std::fs::write(
            dir.join("known_hosts"),
            format!("{} {host_key}", addresses.join(",")),
        )
        .unwrap();
        let d = dir.display().to_string();
        std::fs::write(
            dir.join("ssh_config"),
            format!(
                "Host *\n  User root\n  IdentityFile {d}/user_key\n  IdentitiesOnly yes\n  \
                 UserKnownHostsFile {d}/known_hosts\n  GlobalKnownHostsFile /dev/null\n  \
                 StrictHostKeyChecking yes\n  LogLevel ERROR\n"
            ),
        )
        .unwrap();
        // sshd's privilege separation needs this folder, which the Debian service makes.
        std::fs::create_dir_all("/run/sshd").unwrap();
        let mut lab = SshLab {
            sshds: Vec::new(),
            dir,
            lab,
        };
        for (i, _) in with_sshd.iter().enumerate().filter(|(_, on)| **on) {
            let home = lab.home(i);
            std::fs::create_dir_all(&home).unwrap();
            let config = lab.dir.join(format!("sshd_config-{i}"));
            std::fs::write(
                &config,
                format!(
                    "ListenAddress {}:22\nHostKey {d}/host_key\nAuthorizedKeysFile {d}/authorized_keys\n\
                     PidFile none\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n\
                     KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n\
                     SetEnv HOME={}\n",
                    addresses[i],
                    home.display()
                ),
            )
            .unwrap();
            let log = std::fs::File::create(lab.dir.join(format!("sshd-{i}.log"))).unwrap();
            let sshd = lab
                .lab
                .command(&lab.lab.servers()[i], SSHD)
                .arg("-D")
                .arg("-e")
                .arg("-f")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("start sshd in its namespace");
            lab.sshds.push(sshd);
            lab.wait_for_sshd(&addresses[i]);
        }
        Some(lab)
    }

    /// The home sshd gives sessions on server host `index`.
    fn home(&self, index: usize) -> PathBuf {
        self.dir.join(format!("home-{index}"))
    }

    /// The ssh config file that reaches the lab's sshds.
    fn ssh_config(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// Returns once `ssh address true` works from the client namespace (at most 100
    /// tries, 100 ms apart).
    fn wait_for_sshd(&self, address: &str) {
        let mut last = None;
        for _ in 0..100 {
            let output = self
                .lab
                .command(self.lab.client(), "ssh")
                .arg("-F")
                .arg(self.ssh_config())
                .args(["-o", "BatchMode=yes", address, "true"])
                .output()
                .expect("run ssh");
            if output.status.success() {
                return;
            }
            last = Some(output);
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("sshd on {address} never answered: {last:?}");
    }

    /// Runs pool-client with `args` in the client namespace.
    fn client(&self, args: &[&str]) -> Output {
        client_command(&self.lab, args)
            .output()
            .expect("run pool-client in the client namespace")
    }

    /// Writes `text` as `name` in the test's folder; its path as text.
    fn write(&self, name: &str, text: &str) -> String {
        let path = self.dir.join(name);
        std::fs::write(&path, text).unwrap();
        path.to_string_lossy().into_owned()
    }
}

/// What a watch of the machine's processes saw: every command line (what `ps` would
/// have shown), and the `POOL_TOKEN` in the environment of each process running a
/// program from a `.cache/pool` under the test's folder (the servers).
#[derive(Default)]
struct Seen {
    command_lines: BTreeSet<String>,
    tokens: BTreeSet<String>,
}

impl Seen {
    /// The command lines that show one of the servers' tokens.
    fn showing_a_token(&self) -> Vec<&String> {
        self.command_lines
            .iter()
            .filter(|line| self.tokens.iter().any(|t| line.contains(t.as_str())))
            .collect()
    }
}

/// Watches every process from /proc until `stop` (at most 50,000 rounds, 2 ms apart).
fn watch_processes(stop: Arc<AtomicBool>, dir: PathBuf) -> std::thread::JoinHandle<Seen> {
    std::thread::spawn(move || {
        let dir = dir.to_string_lossy().into_owned();
        let mut seen = Seen::default();
        for _ in 0..50_000 {
            if stop.load(Ordering::Relaxed) {
                break;
            }
            for (pid, line) in processes() {
                if line.contains(&dir) && line.contains("/.cache/pool/") {
                    seen.tokens.extend(token_of(pid));
                }
                seen.command_lines.insert(line);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        seen
    })
}

/// The `POOL_TOKEN` in process `pid`'s environment, if it has one.
fn token_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ.split(|&b| b == 0).find_map(|var| {
        var.strip_prefix(b"POOL_TOKEN=")
            .map(|token| String::from_utf8_lossy(token).into_owned())
    })
}

/// The processes running now: their ids and command lines, arguments joined by spaces.
fn processes() -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bytes = std::fs::read(e.path().join("cmdline")).ok()?;
            Some((pid, String::from_utf8_lossy(&bytes).replace('\0', " ")))
        })
        .collect()
}

/// Whether process `pid` runs (a zombie, ended but not yet collected, does not).
fn runs(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .trim_start()
            .starts_with('Z')
    })
}

/// The processes now running a program from a `.cache/pool` under `dir`: servers.
fn running_under(dir: &Path) -> Vec<String> {
    let dir = dir.to_string_lossy();
    processes()
        .into_iter()
        .map(|(_, line)| line)
        .filter(|line| line.contains(&*dir) && line.contains("/.cache/pool/"))
        .collect()
}

/// The token `up` recorded for `hosts`, with the state file's mode.
fn recorded(hosts: &str) -> (toml::Table, u32) {
    use std::os::unix::fs::PermissionsExt as _;
    let path = format!("{hosts}.pool-up");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    (
        toml::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap(),
        mode,
    )
}

/// The servers' process ids in a state file.
fn pids(state: &toml::Table) -> Vec<u32> {
    state["server"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_integer().unwrap() as u32)
        .collect()
}

/// The JSON report of a successful run, checked exact against a local computation of
/// `parts` parts of [`LOOP`].
fn exact_report(output: &Output, parts: usize) -> Value {
    assert!(
        output.status.success(),
        "pool-client failed ({}): {}",
        output.status,
        stderr(output)
    );
    let report: Value = serde_json::from_slice(&output.stdout).expect("JSON");
    let expected = reference_result(&job_file(&format!("parts = {parts}\n{LOOP}"))).to_string();
    assert_eq!(report["ok"], true, "{report:#}");
    for mode in report["modes"].as_array().unwrap() {
        assert_eq!(mode["result"], expected.as_str(), "{}", mode["mode"]);
    }
    report
}

/// The servers that computed the pool's parts.
fn servers_used(report: &Value) -> BTreeSet<String> {
    report["pool"]["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["server"].as_str().unwrap().to_string())
        .collect()
}

const LOOP: &str = "[job]\nkind = \"loop\"\niterations = 40_000_000\n";

#[test]
fn up_then_a_job_then_down() {
    let test = "up_then_a_job_then_down";
    let Some(lab) = SshLab::new(test, &[true, true]) else {
        return;
    };
    let [a, b] = [0, 1].map(|i| lab.lab.servers()[i].address.to_string());
    let hosts = lab.write(
        "hosts.txt",
        &format!("# the lab\n{a}\n2/root@{b}:22  # two workers\n"),
    );
    // Host b has a program of another version where the server goes: it is replaced.
    let old = lab.home(1).join(".cache/pool/pool-client");
    std::fs::create_dir_all(old.parent().unwrap()).unwrap();
    std::fs::write(&old, "#!/bin/sh\necho pool-client 0.0.0\n").unwrap();
    run(Command::new("chmod").arg("755").arg(&old));

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_processes(Arc::clone(&stop), lab.dir.to_path_buf());
    let config = lab.ssh_config().to_string_lossy().into_owned();
    let exe = client_exe().to_string_lossy().into_owned();
    let up = [
        "up",
        &hosts,
        "--ssh-config",
        &config,
        "--server-binary",
        &exe,
    ];
    let output = lab.client(&up);
    let said = stdout(&output);
    assert!(output.status.success(), "{said}{}", stderr(&output));
    let lines: Vec<&str> = said.lines().collect();
    assert!(
        lines[1].starts_with(&format!("{a}  "))
            && lines[1].contains(&format!("started  {a}:7000 pid "))
            && lines[1].contains("copied pool-client")
            && lines[1].contains("/.cache/pool/pool-client was missing"),
        "{said}"
    );
    assert!(
        lines[2].contains(&format!("started  {b}:7000 pid "))
            && lines[2].contains("--version says: pool-client 0.0.0"),
        "{said}"
    );
    // Each host got the very program, in its own ~/.cache/pool.
    let program = std::fs::read(client_exe()).unwrap();
    for i in 0..2 {
        let copy = lab.home(i).join(".cache/pool/pool-client");
        assert!(
            std::fs::read(&copy).unwrap() == program,
            "{}",
            copy.display()
        );
    }
    let (state, mode) = recorded(&hosts);
    assert_eq!(mode, 0o600);
    let token = state["token"].as_str().unwrap().to_string();
    let servers = pids(&state);
    assert_eq!(servers.len(), 2);
    for (i, pid) in servers.iter().enumerate() {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        let workers = if i == 1 { " --workers 2" } else { "" };
        assert_eq!(
            cmdline.trim_end(),
            format!(
                "{}/.cache/pool/pool-client serve --port 7000{workers}",
                lab.home(i).display()
            )
        );
        // The token reached the server in its environment, which only its user reads.
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let wanted = format!("POOL_TOKEN={token}");
        assert!(environ
            .split(|&b| b == 0)
            .any(|var| var == wanted.as_bytes()));
    }

    // A job on them, and status, with the recorded token.
    let text = format!("parts = 4\nseed = 1\nssh_hosts = \"hosts.txt\"\n{LOOP}");
    let job = lab.write("job.toml", &text);
    let output = lab.client(&[&job, "--modes", "sequential,pool", "--format", "json", "-q"]);
    let report = exact_report(&output, 4);
    assert_eq!(
        servers_used(&report),
        BTreeSet::from([format!("{a}:7000"), format!("{b}:7000")])
    );
    let output = lab.client(&["status", &job, "--format", "json"]);
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert!(output.status.success(), "{status:#}");
    assert_eq!(status.as_array().unwrap().len(), 2);
    assert_eq!(status[1]["workers"], 2, "{status:#}");

    // A second up starts nothing: both are running.
    let output = lab.client(&up);
    assert!(output.status.success());
    assert_eq!(stdout(&output).matches("from an earlier up").count(), 2);
    assert_eq!(pids(&recorded(&hosts).0), servers);

    let output = lab.client(&["down", &hosts]);
    let said = stdout(&output);
    assert!(output.status.success(), "{said}{}", stderr(&output));
    assert_eq!(said.matches("  stopped  ").count(), 2, "{said}");
    assert!(!said.contains("was not running"), "{said}");
    assert!(!Path::new(&format!("{hosts}.pool-up")).exists());
    for pid in &servers {
        assert!(
            !runs(*pid),
            "{pid} runs on: {:?}",
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
        );
    }
    assert_eq!(running_under(&lab.dir), Vec::<String>::new());
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_eq!(seen.tokens, BTreeSet::from([token.clone()]));
    assert!(seen.command_lines.iter().any(|line| line.contains("sh -s")));
    assert_eq!(seen.showing_a_token(), Vec::<&String>::new());

    // Once the hosts have the program, up copies nothing; down stops them again.
    let output = lab.client(&up);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stdout(&output).contains("copied"), "{}", stdout(&output));
    assert_ne!(recorded(&hosts).0["token"].as_str().unwrap(), token);
    assert!(lab.client(&["down", &hosts]).status.success());
    assert_eq!(running_under(&lab.dir), Vec::<String>::new());
    // Nothing left to stop is an error that says so.
    let output = lab.client(&["down", &hosts]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("nothing to stop"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn launch_ssh_starts_and_stops_servers_and_names_a_refused_host() {
    let test = "launch_ssh_starts_and_stops_servers_and_names_a_refused_host";
    // No sshd on the second host: ssh is refused there.
    let Some(lab) = SshLab::new(test, &[true, false]) else {
        return;
    };
    let [a, b] = [0, 1].map(|i| lab.lab.servers()[i].address.to_string());
    let hosts = lab.write("hosts.txt", &format!("{a}\n{b}\n"));
    let refused = format!("{b}: ssh: connect to host {b} port 22: Connection refused");

    // up: the refused host is reported with ssh's message, the other one works.
    let config = lab.ssh_config().to_string_lossy().into_owned();
    let exe = client_exe().to_string_lossy().into_owned();
    let output = lab.client(&[
        "up",
        &hosts,
        "--ssh-config",
        &config,
        "--server-binary",
        &exe,
        "--port",
        "7100",
    ]);
    let said = stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{said}{}", stderr(&output));
    assert!(said.contains(&format!("started  {a}:7100")), "{said}");
    assert!(
        said.contains(&format!(
            "{b}  failed   ssh: connect to host {b} port 22: Connection refused"
        )),
        "{said}"
    );
    assert_eq!(pids(&recorded(&hosts).0).len(), 1);
    assert!(lab.client(&["down", &hosts]).status.success());

    let stop = Arc::new(AtomicBool::new(false));
    let watcher = watch_processes(Arc::clone(&stop), lab.dir.to_path_buf());
    let keys = format!(
        "launch = \"ssh\"\nssh_hosts = \"hosts.txt\"\nssh_config = \"ssh_config\"\n\
         server_binary = \"{exe}\"\nport = 7200\n"
    );
    let text = format!("parts = 3\nseed = 2\n{keys}{LOOP}");
    let job = lab.write("launch.toml", &text);
    let output = lab.client(&[&job, "--modes", "sequential,pool", "--format", "json", "-q"]);
    let report = exact_report(&output, 3);
    assert_eq!(servers_used(&report), BTreeSet::from([format!("{a}:7200")]));
    assert!(
        stderr(&output).contains(&format!("no server on {refused}")),
        "{}",
        stderr(&output)
    );
    assert_eq!(running_under(&lab.dir), Vec::<String>::new());

    // A job that fails once its servers run (they refuse to run programs) stops them
    // too.
    let failing = format!(
        "parts = 2\n{keys}[job]\nkind = \"command\"\ncommand = [\"echo\", \"1\"]\nrange = 2\n"
    );
    let job = lab.write("failing.toml", &failing);
    let output = lab.client(&[&job, "--modes", "pool", "-q"]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("allow-commands"),
        "{}",
        stderr(&output)
    );
    assert_eq!(running_under(&lab.dir), Vec::<String>::new());

    // So does one interrupted with Ctrl-C (SIGINT) while its servers compute.
    let long = format!("parts = 4\n{keys}[job]\nkind = \"loop\"\niterations = 40_000_000_000\n");
    let job = lab.write("long.toml", &long);
    let mut client = client_command(&lab.lab, &[&job, "--modes", "pool", "-q"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let server = format!("{a}:7200");
    let mut computing = false;
    for _ in 0..500 {
        // The test reads the launched server's token where only its user (root) can.
        let token = processes()
            .into_iter()
            .filter(|(_, line)| line.contains("/.cache/pool/") && line.contains("--port 7200"))
            .find_map(|(pid, _)| token_of(pid));
        let output = client_command(
            &lab.lab,
            &["status", "--servers", &server, "--format", "json"],
        )
        .env("POOL_TOKEN", token.unwrap_or_default())
        .output()
        .unwrap();
        let answer: Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
        if answer[0]["parts_in_flight"].as_u64().unwrap_or(0) > 0 {
            computing = true;
            break;
        }
        assert!(client.try_wait().unwrap().is_none(), "the job ended early");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(computing, "the launched server never held a part");
    run(Command::new("kill").args(["-INT", &client.id().to_string()]));
    let output = client.wait_with_output().unwrap();
    assert_eq!(output.status.code(), Some(130), "{}", stderr(&output));
    assert_eq!(running_under(&lab.dir), Vec::<String>::new());

    // The runs' tokens were on no command line.
    stop.store(true, Ordering::Relaxed);
    let seen = watcher.join().unwrap();
    assert_eq!(seen.tokens.len(), 3, "one token for each of the three runs");
    assert_eq!(seen.showing_a_token(), Vec::<&String>::new());
}
