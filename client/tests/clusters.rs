//! The clusters people already have. Slurm: `examples/slurm/pool.sbatch` submitted with
//! `sbatch` to a one-node Slurm cluster on this machine (`scripts/slurm-lab.sh`), whose
//! job starts a server with `srun`, runs the client with `servers = "slurm"` and stops
//! the server; its result must be exact. Kubernetes: the manifests in
//! `deploy/kubernetes/` agree with each other and with the example job file, and the
//! server accepts the arguments the StatefulSet gives it.
//!
//! The Slurm test needs root and Debian's slurm-wlm and munge packages; without them it
//! prints `<test> skipped: needs ...` on standard error, naming what to install, and
//! returns. Where they are there, a lab that fails to come up fails the test.

mod support;

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use pool_common::jobfile;
use serde_json::Value;
use support::{client_exe, dead_address, job_file, reference_result, temp_dir, ServerProcess};

/// The repository's root.
fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Whether `program` is an executable file in a folder of `PATH`.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            let file = dir.join(program);
            std::fs::metadata(&file).is_ok_and(|m| {
                use std::os::unix::fs::PermissionsExt as _;
                m.is_file() && m.permissions().mode() & 0o111 != 0
            })
        })
    })
}

/// What this machine lacks to run a Slurm lab, if anything: root, or a program of the
/// slurm-wlm or munge package.
fn slurm_lab_missing() -> Option<String> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Some(format!(
            "needs root to run Slurm's daemons (running as uid {uid}), and Debian's \
             slurm-wlm and munge packages (apt-get install slurm-wlm munge)"
        ));
    }
    let programs = [
        ("munged", "munge"),
        ("mungekey", "munge"),
        ("slurmctld", "slurm-wlm"),
        ("slurmd", "slurm-wlm"),
        ("sbatch", "slurm-wlm"),
        ("squeue", "slurm-wlm"),
        ("scontrol", "slurm-wlm"),
    ];
    let missing: Vec<&str> = programs
        .iter()
        .filter(|(program, _)| !on_path(program))
        .map(|(program, _)| *program)
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "needs {} on PATH, from Debian's slurm-wlm and munge packages \
             (apt-get install slurm-wlm munge)",
            missing.join(", ")
        )
    })
}

/// A one-node Slurm cluster on this machine, made by `scripts/slurm-lab.sh up` in a
/// folder of its own and taken down (its jobs cancelled, its daemons stopped, the
/// folder removed) when dropped, also when the test fails.
struct SlurmLab {
    dir: PathBuf,
}

impl SlurmLab {
    /// The lab in `dir` (which must not hold one), or `None` after printing
    /// `{test} skipped: ...` where this machine cannot have one.
    fn up_or_skip(test: &str, dir: &Path) -> Option<SlurmLab> {
        if let Some(why) = slurm_lab_missing() {
            let _ = writeln!(std::io::stderr(), "{test} skipped: {why}");
            return None;
        }
        let output = Self::script(&["up", &dir.to_string_lossy()]);
        assert!(
            output.status.success(),
            "scripts/slurm-lab.sh up failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        let _ = writeln!(
            std::io::stderr(),
            "{test}: {}",
            String::from_utf8_lossy(&output.stdout)
                .lines()
                .next()
                .unwrap_or("")
        );
        Some(SlurmLab {
            dir: dir.to_path_buf(),
        })
    }

    /// Runs `scripts/slurm-lab.sh` with `args` to its end.
    fn script(args: &[&str]) -> Output {
        Command::new(repository().join("scripts/slurm-lab.sh"))
            .args(args)
            .output()
            .expect("run scripts/slurm-lab.sh")
    }

    /// A Slurm command (`sbatch`, `squeue`, ...) that talks to this lab.
    fn command(&self, program: &str) -> Command {
        let mut command = Command::new(program);
        command.env("SLURM_CONF", self.dir.join("slurm.conf"));
        command
    }

    /// Runs a Slurm command with `args`, which must succeed, and returns its output.
    fn run(&self, program: &str, args: &[&str]) -> String {
        let output = self.command(program).args(args).output().expect(program);
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }
}

impl Drop for SlurmLab {
    fn drop(&mut self) {
        let output = Self::script(&["down", &self.dir.to_string_lossy()]);
        if !output.status.success() {
            let _ = writeln!(
                std::io::stderr(),
                "scripts/slurm-lab.sh down {} failed: {}",
                self.dir.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
}

/// A port nothing on 127.0.0.1 listens on (free a moment ago).
fn free_port() -> String {
    let address = dead_address();
    address.rsplit_once(':').unwrap().1.to_string()
}

/// `pool-client status` of the server at `address`, with `token` (or none): its JSON
/// object, `reachable` false if it did not answer within 2 s.
fn status_with(address: &str, token: Option<&str>) -> Value {
    let mut command = Command::new(client_exe());
    command
        .args(["status", "--servers", address, "--format", "json"])
        .args(["--timeout", "2"])
        .env_remove("POOL_TOKEN")
        .env("RUST_LOG", "warn");
    if let Some(token) = token {
        command.env("POOL_TOKEN", token);
    }
    let output = command.output().expect("run pool-client status");
    let status: Value = serde_json::from_slice(&output.stdout).expect("status prints JSON");
    status[0].clone()
}

/// The token check of a server at `address`, asked without a token: `Some(true)` if it
/// refused for want of one, `Some(false)` if it served a client without one, `None` if
/// it did not answer (not listening yet, or any more).
fn refuses_without_token(address: &str) -> Option<bool> {
    let server = status_with(address, None);
    if server["reachable"] == true {
        return Some(false);
    }
    let error = server["error"].as_str().unwrap_or_default();
    error.contains("requires a token").then_some(true)
}

#[test]
fn pool_sbatch_runs_the_example_job_on_servers_started_with_srun() {
    let test = "pool_sbatch_runs_the_example_job_on_servers_started_with_srun";
    // A short folder: Slurm's sockets go under it, and a socket's path is short.
    let dir = temp_dir("slurm");
    let Some(lab) = SlurmLab::up_or_skip(test, &dir.join("lab")) else {
        return;
    };
    let work = dir.join("work");
    std::fs::create_dir(&work).unwrap();
    let port = free_port();
    let example = repository().join("examples/slurm/loop.toml");
    let script = repository().join("examples/slurm/pool.sbatch");
    // The example as a user submits it, on the lab's one node; the client reports in
    // JSON to a file beside the job's output.
    let submitted = lab
        .command("sbatch")
        .current_dir(&work)
        .env("POOL_CLIENT", client_exe())
        .env("POOL_PORT", &port)
        .env("POOL_SERVER_OPTIONS", "--bind 127.0.0.1 --workers 2")
        .env_remove("POOL_TOKEN")
        .args(["--parsable", "--nodes=1"])
        .arg(&script)
        .arg(&example)
        .args(["--modes", "pool", "--format", "json", "--output"])
        .arg(work.join("report.json"))
        .arg("-q")
        .output()
        .expect("run sbatch");
    assert!(
        submitted.status.success(),
        "sbatch failed: {}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let job = String::from_utf8_lossy(&submitted.stdout)
        .trim()
        .split(';')
        .next()
        .unwrap()
        .to_string();

    // Wait for the job to leave the queue, at most 1200 polls and 10 minutes. While it
    // runs, its server must refuse a client without the run's token.
    let server = format!("127.0.0.1:{port}");
    let started = Instant::now();
    let mut token_checked = false;
    let mut polls = 0;
    loop {
        let state = lab.run("squeue", &["--noheader", "--format=%T %r", "--jobs", &job]);
        if state.trim().is_empty() {
            break;
        }
        if state.starts_with("RUNNING") && !token_checked {
            match refuses_without_token(&server) {
                Some(true) => token_checked = true,
                Some(false) => {
                    panic!("the job's server at {server} served a client without the token")
                }
                None => {}
            }
        }
        polls += 1;
        assert!(
            polls < 1200 && started.elapsed() < Duration::from_secs(600),
            "job {job} still in the queue ({}) after {polls} polls",
            state.trim()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let out = std::fs::read_to_string(work.join(format!("pool-{job}.out")))
        .expect("the job's output file");
    let record = lab.run("scontrol", &["show", "job", "--oneliner", &job]);
    assert!(
        record.contains("JobState=COMPLETED") && record.contains("ExitCode=0:0"),
        "{record}\n{out}"
    );
    assert!(
        token_checked,
        "the server never answered while the job ran:\n{out}"
    );
    // The script waited for the server (status listed it), and stopped it at its end.
    assert!(
        out.contains(&format!("localhost:{port}")) && out.contains(" up "),
        "{out}"
    );
    assert!(out.trim_end().ends_with("servers stopped"), "{out}");
    let logs: Vec<PathBuf> = std::fs::read_dir(&work)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with(&format!("pool-{job}-server-"))
        })
        .collect();
    assert_eq!(logs.len(), 1, "{logs:?}");
    let log = std::fs::read_to_string(&logs[0]).unwrap();
    // Stopped by SIGTERM through Slurm, so it shut down in order, not killed.
    assert!(
        log.contains("signal=\"SIGTERM\"") && log.contains("server stopped"),
        "{log}"
    );

    // The exact result, from the node's one server.
    let report: Value = serde_json::from_str(
        &std::fs::read_to_string(work.join("report.json")).expect("the client's report"),
    )
    .unwrap();
    let text = std::fs::read_to_string(&example).unwrap();
    let local: String = text
        .lines()
        .filter(|l| !l.starts_with("servers") && !l.starts_with("port"))
        .map(|l| format!("{l}\n"))
        .collect();
    let expected = reference_result(&job_file(&local)).to_string();
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(
        report["modes"][0]["result"],
        expected.as_str(),
        "{report:#}"
    );
    assert_eq!(
        report["settings"]["servers"],
        serde_json::json!([format!("localhost:{port}")]),
        "{report:#}"
    );
}

/// The manifest file's documents, split at its `---` lines.
fn manifest_documents(text: &str) -> Vec<&str> {
    text.split("\n---\n").collect()
}

/// The value of the first line `key: value` in `document` (any indentation, a `- `
/// list marker allowed), without quotes; the manifests keep one setting per line, so
/// this finds what a YAML parser would.
fn yaml_value<'a>(document: &'a str, key: &str) -> Option<&'a str> {
    document.lines().find_map(|line| {
        let line = line.trim_start().trim_start_matches("- ");
        let value = line.strip_prefix(key)?.strip_prefix(':')?.trim();
        Some(value.trim_matches('"'))
    })
}

/// The document of `documents` whose `kind` is `kind`.
fn manifest<'a>(documents: &[&'a str], kind: &str) -> &'a str {
    documents
        .iter()
        .find(|d| yaml_value(d, "kind") == Some(kind))
        .unwrap_or_else(|| panic!("deploy/kubernetes/pool.yaml has no {kind}"))
}

#[test]
fn kubernetes_manifests_agree_with_the_job_file_and_the_server_takes_their_arguments() {
    let deploy = repository().join("deploy/kubernetes");
    let text = std::fs::read_to_string(deploy.join("pool.yaml")).unwrap();
    let documents = manifest_documents(&text);
    let service = manifest(&documents, "Service");
    let set = manifest(&documents, "StatefulSet");

    // A headless Service whose name, namespace and port the job file's dns: entry
    // names, selecting the StatefulSet's pods.
    let name = yaml_value(service, "name").unwrap();
    let namespace = yaml_value(service, "namespace").unwrap();
    let port = yaml_value(service, "port").unwrap();
    assert_eq!(yaml_value(service, "clusterIP"), Some("None"));
    assert_eq!(yaml_value(set, "serviceName"), Some(name));
    assert_eq!(yaml_value(set, "namespace"), Some(namespace));
    let selector = service.split("selector:").nth(1).unwrap();
    let label = yaml_value(selector, "app").unwrap();
    let template = set.split("template:").nth(1).unwrap();
    assert_eq!(yaml_value(template, "app"), Some(label));
    assert_eq!(yaml_value(set, "containerPort"), Some(port));
    let job = jobfile::parse(
        &std::fs::read_to_string(deploy.join("job.toml")).unwrap(),
        &deploy.join("job.toml"),
    )
    .expect("deploy/kubernetes/job.toml parses");
    assert_eq!(
        job.servers,
        [format!("dns:{name}.{namespace}.svc.cluster.local:{port}")]
    );

    // The token from a Secret, the probes on the port.
    assert!(set.contains("name: POOL_TOKEN\n"), "{set}");
    assert!(set.contains("secretKeyRef:"), "{set}");
    for probe in ["readinessProbe:", "livenessProbe:"] {
        let after = set.split(probe).nth(1).expect(probe);
        assert_eq!(yaml_value(after, "port"), Some("pool"), "{probe}");
    }

    // The server takes the StatefulSet's arguments: the same ones, on 127.0.0.1 and a
    // port the OS chooses instead of every address and the Service's port.
    let args: Vec<String> = serde_json::from_str(yaml_value(set, "args").unwrap_or("[]"))
        .expect("the container's args, one JSON-style list on one line");
    let mut local: Vec<&str> = vec!["serve"];
    let mut rest = args.iter().map(String::as_str);
    let mut replaced = 0;
    while let Some(arg) = rest.next() {
        local.push(arg);
        let value = rest.next().unwrap_or_default();
        match arg {
            "--bind" => {
                assert_eq!(value, "0.0.0.0");
                local.push("127.0.0.1");
                replaced += 1;
            }
            "--port" => {
                assert_eq!(value, port);
                local.push("0");
                replaced += 1;
            }
            _ => local.push(value),
        }
    }
    assert_eq!(replaced, 2, "--bind and --port in {args:?}");
    local.push("--exit-with-stdin");
    let token = "a-secret-of-the-test";
    let server = ServerProcess::start_with(&local, &[("POOL_TOKEN", token)]);
    let answer = status_with(&server.address, Some(token));
    assert_eq!(answer["reachable"], true, "{answer:#}");
    assert_eq!(refuses_without_token(&server.address), Some(true));

    // The image runs pool-server, and ships the job file where pool.yaml says.
    let containerfile = std::fs::read_to_string(deploy.join("Containerfile")).unwrap();
    assert!(
        containerfile.contains("ENTRYPOINT [\"pool-server\"]"),
        "{containerfile}"
    );
    assert!(
        containerfile.contains("COPY deploy/kubernetes/job.toml /etc/pool/job.toml"),
        "{containerfile}"
    );
}
