//! `kind = "command"` over real sockets: the user's program in every mode on 1 to 3
//! servers, the server's opt-in and allowlist, a failing program reported once, files
//! shipped once per server and cleaned up, names that try to leave the work folder,
//! and no process left behind when a client goes away or a server stops.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use pool_client::report::Mode;
use pool_common::jobfile::{self, JobFile};
use pool_common::jobs::command::CommandOutput;
use pool_common::jobs::PartResult;
use pool_server::commands::{AllowedPrograms, CommandPolicy};
use pool_server::{ServerConfig, ServerHandle};
use support::{addresses, options, pool_only, run_client, stderr, ServerProcess};

/// Writes `job.toml` (and the files in `files`) into `dir` and parses it.
fn write_job(dir: &Path, text: &str, files: &[(&str, &str)]) -> JobFile {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
    }
    std::fs::write(dir.join("job.toml"), text).unwrap();
    jobfile::read(&dir.join("job.toml")).expect("a valid job file")
}

/// Starts `count` in-process servers with one worker each that run `allowed`.
async fn command_servers(count: usize, allowed: AllowedPrograms) -> Vec<ServerHandle> {
    let mut servers = Vec::new();
    for _ in 0..count {
        let config = ServerConfig {
            workers: 1,
            commands: CommandPolicy {
                allowed: allowed.clone(),
                ..CommandPolicy::default()
            },
            ..ServerConfig::default()
        };
        servers.push(pool_server::start("127.0.0.1:0", config).await.unwrap());
    }
    servers
}

async fn shut_down(servers: Vec<ServerHandle>) {
    for server in servers {
        server.shutdown().await;
    }
}

/// Adds up the integers in [lo, hi): the sum over [0, range) is range*(range-1)/2.
const SUM_SCRIPT: &str = "echo $(( ($2 - 1) * $2 / 2 - ($1 - 1) * $1 / 2 ))\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_job_gives_the_same_sum_in_every_mode_on_1_2_and_3_servers() {
    let dir = support::temp_dir("sum");
    for (server_count, parts) in [(1, 1), (2, 5), (3, 7)] {
        let job = write_job(
            &dir,
            &format!(
                "parts = {parts}\n[job]\nkind = \"command\"\n\
                 command = [\"sh\", \"sum.sh\", \"{{lo}}\", \"{{hi}}\"]\n\
                 range = 1_000_000\nfiles = [\"sum.sh\"]\n"
            ),
            &[("sum.sh", SUM_SCRIPT)],
        );
        let servers = command_servers(server_count, AllowedPrograms::Any).await;
        let report = pool_client::run(&job, &options(addresses(&servers)))
            .await
            .unwrap();
        let modes: Vec<Mode> = report.runs.iter().map(|run| run.mode).collect();
        assert_eq!(modes, [Mode::Sequential, Mode::MultiProcess, Mode::Pool]);
        assert_eq!(report.not_run[0].0, Mode::Threaded);
        for run in &report.runs {
            assert_eq!(
                run.result,
                PartResult::Command(CommandOutput::Sum(499_999_500_000)),
                "{:?}",
                run.mode
            );
        }
        assert!(report.all_match());
        shut_down(servers).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lines_come_back_in_part_order_and_are_written_to_the_output_file() {
    let dir = support::temp_dir("lines");
    let job = write_job(
        &dir,
        "parts = 4\n[job]\nkind = \"command\"\n\
         command = [\"printf\", \"part %s of %s: [%s, %s)\", \"{part}\", \"{parts}\", \"{lo}\", \"{hi}\"]\n\
         range = 10\ncombine = \"lines\"\noutput = \"out.txt\"\n",
        &[],
    );
    let servers = command_servers(2, AllowedPrograms::Any).await;
    let report = pool_client::run(&job, &options(addresses(&servers)))
        .await
        .unwrap();
    assert!(report.all_match());
    let expected =
        "part 0 of 4: [0, 2)\npart 1 of 4: [2, 5)\npart 2 of 4: [5, 7)\npart 3 of 4: [7, 10)\n";
    assert_eq!(
        std::fs::read_to_string(dir.join("out.txt")).unwrap(),
        expected
    );
    assert_eq!(report.saved, [dir.join("out.txt")]);
    shut_down(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_allow_commands_refuses_naming_the_flag() {
    let dir = support::temp_dir("refused");
    let job = write_job(
        &dir,
        "parts = 2\nmax_attempts = 1\n[job]\nkind = \"command\"\ncommand = [\"true\"]\nrange = 2\n",
        &[],
    );
    let servers = command_servers(1, AllowedPrograms::None).await;
    let error = pool_client::run(&job, &pool_only(addresses(&servers)))
        .await
        .unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("NotPermitted"), "{message}");
    assert!(
        message.contains("start pool-server with --allow-commands"),
        "{message}"
    );
    shut_down(servers).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_allowlist_runs_only_the_programs_it_names() {
    let dir = support::temp_dir("allowlist");
    let servers = command_servers(1, AllowedPrograms::parse("sh,./run.sh")).await;
    for (command, allowed) in [
        ("[\"sh\", \"-c\", \"echo 1\"]", true),
        ("[\"./run.sh\"]", true),
        ("[\"echo\", \"1\"]", false),
        ("[\"/bin/sh\", \"-c\", \"echo 1\"]", false),
    ] {
        let job = write_job(
            &dir,
            &format!(
                "parts = 1\nmax_attempts = 1\n[job]\nkind = \"command\"\ncommand = {command}\n\
                 range = 1\nfiles = [\"run.sh\"]\n"
            ),
            &[("run.sh", "#!/bin/sh\necho 1\n")],
        );
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.join("run.sh"), std::fs::Permissions::from_mode(0o755))
                .unwrap();
        }
        let outcome = pool_client::run(&job, &pool_only(addresses(&servers))).await;
        match (outcome, allowed) {
            (Ok(report), true) => assert_eq!(
                report.runs[0].result,
                PartResult::Command(CommandOutput::Sum(1))
            ),
            (Err(error), false) => {
                let message = format!("{error:#}");
                assert!(
                    message.contains("runs only sh, ./run.sh (its --allow-commands list)"),
                    "{message}"
                );
            }
            (outcome, _) => panic!("{command}: {:?}", outcome.map(|r| r.table())),
        }
    }
    shut_down(servers).await;
}

#[test]
fn a_failing_command_is_reported_once_with_its_status_and_stderr() {
    let dir = support::temp_dir("failing");
    let runs = dir.join("runs.txt");
    // Two servers and three attempts: a server failure would be retried, the
    // program's own failure must not be.
    let first = ServerProcess::start(&["--workers", "1", "--allow-commands"]);
    let second = ServerProcess::start(&["--workers", "1", "--allow-commands"]);
    let script = format!(
        "echo ran >> {}; echo 'cannot open data.csv' >&2; exit 3",
        runs.display()
    );
    write_job(
        &dir,
        &format!(
            "servers = [\"{}\", \"{}\"]\nparts = 1\nmax_attempts = 3\n[job]\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"{}\"]\nrange = 1\n",
            first.address,
            second.address,
            script.replace('"', "\\\"")
        ),
        &[],
    );
    let output = run_client(&[dir.join("job.toml").to_str().unwrap(), "--modes", "pool"]);
    let message = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "{message}");
    assert!(
        message.contains("the job's program failed on 127.0.0.1:"),
        "{message}"
    );
    assert!(message.contains("part 0: `sh -c"), "{message}");
    assert!(message.contains("exited with status 3"), "{message}");
    assert!(message.contains("    cannot open data.csv"), "{message}");
    assert_eq!(
        std::fs::read_to_string(&runs).unwrap(),
        "ran\n",
        "run once, not retried"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_go_to_each_server_once_and_their_work_folder_is_removed() {
    let dir = support::temp_dir("files");
    let data = "x".repeat(100_000);
    let job = write_job(
        &dir,
        "parts = 6\n[job]\nkind = \"command\"\ncommand = [\"sh\", \"lib/show.sh\"]\nrange = 6\n\
         files = [\"lib/show.sh\", \"data.txt\"]\ncombine = \"lines\"\n",
        &[
            ("lib/show.sh", "wc -c < data.txt; pwd\n"),
            ("data.txt", &data),
        ],
    );
    let servers = command_servers(2, AllowedPrograms::Any).await;
    let report = pool_client::run(&job, &pool_only(addresses(&servers)))
        .await
        .unwrap();
    let PartResult::Command(output) = &report.runs[0].result else {
        panic!("{:?}", report.runs[0].result)
    };
    let text = String::from_utf8(output.text()).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12, "{text}");
    let mut work_dirs: Vec<&str> = lines.chunks(2).map(|pair| pair[1]).collect();
    for pair in lines.chunks(2) {
        assert_eq!(pair[0].trim(), "100000");
        assert!(pair[1].contains("pool-job-"), "{}", pair[1]);
    }
    work_dirs.sort();
    work_dirs.dedup();
    assert_eq!(
        work_dirs.len(),
        2,
        "one work folder per server: {work_dirs:?}"
    );

    // The files crossed once per server (their bytes plus framing), not once per part.
    let pool = report.pool.as_ref().unwrap();
    let file_bytes = (data.len() + "wc -c < data.txt; pwd\n".len()) as u64;
    for server in &pool.servers {
        let shared = server.shared.expect("shared inputs were shipped");
        assert!(
            (file_bytes..file_bytes + 200).contains(&shared.bytes),
            "{}: {} bytes",
            server.address,
            shared.bytes
        );
    }
    assert!(pool.parts.iter().all(|p| p.bytes_sent < 1000));
    let log = report.part_log();
    assert_eq!(
        log.lines().filter(|l| l.contains("\tshare\t")).count(),
        2,
        "{log}"
    );

    // The work folders go when the connection closes and its last part is done.
    shut_down(servers).await;
    for work_dir in work_dirs {
        assert!(!Path::new(work_dir).exists(), "{work_dir} is still there");
    }
}

#[test]
fn file_names_that_leave_the_work_folder_are_refused_at_their_line() {
    let dir = support::temp_dir("escape");
    for name in ["../secret.txt", "/etc/passwd", "a/../../b"] {
        let text = format!(
            "local = 1\nparts = 1\n[job]\nkind = \"command\"\ncommand = [\"cat\", \"x\"]\nrange = 1\nfiles = [\"{name}\"]\n"
        );
        std::fs::write(dir.join("job.toml"), &text).unwrap();
        let output = run_client(&[dir.join("job.toml").to_str().unwrap()]);
        let message = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{name}: {message}");
        assert!(message.contains("job.toml:7:"), "{name}: {message}");
        assert!(
            message.contains("leaves the job's work folder"),
            "{name}: {message}"
        );
    }
}

#[test]
fn allow_commands_beyond_loopback_needs_a_token() {
    let output = run_client(&[
        "serve",
        "--bind",
        "0.0.0.0",
        "--port",
        "0",
        "--allow-commands",
    ]);
    let message = stderr(&output);
    assert!(!output.status.success(), "{message}");
    assert!(
        message.contains("without --token would let anyone"),
        "{message}"
    );
}

/// PIDs of the processes whose command line mentions `marker`.
fn processes_with(marker: &str) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(marker))
        })
        .collect()
}

/// Waits until `done` holds, checking every 50 ms for at most `limit`; whether it held.
/// The limit only keeps a broken build from hanging: it is far beyond the expected time.
fn eventually(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if done() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    done()
}

/// Starts a pool-client on a job whose program, and a background process it starts,
/// sleep for 1000 s, both carrying `marker` on their command lines; returns once both
/// run.
fn start_sleeping_job(dir: &Path, server: &ServerProcess, marker: &str) -> std::process::Child {
    let script = format!("sh -c 'sleep 1000; true {marker}' & sleep 1000; true {marker}");
    write_job(
        dir,
        &format!(
            "servers = [\"{}\"]\nparts = 1\n[job]\nkind = \"command\"\n\
             command = [\"sh\", \"-c\", \"{script}\"]\nrange = 1\n",
            server.address
        ),
        &[],
    );
    let client = std::process::Command::new(support::client_exe())
        .args([dir.join("job.toml").to_str().unwrap(), "--modes", "pool"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || processes_with(marker).len()
            >= 2),
        "the program never started"
    );
    client
}

#[test]
fn a_client_that_goes_away_leaves_no_process_behind() {
    let dir = support::temp_dir("disconnect");
    let marker = format!("pool-orphan-test-disconnect-{}", std::process::id());
    let server = ServerProcess::start(&["--workers", "1", "--allow-commands"]);
    let mut client = start_sleeping_job(&dir, &server, &marker);
    client.kill().unwrap();
    client.wait().unwrap();
    assert!(
        eventually(Duration::from_secs(30), || processes_with(&marker)
            .is_empty()),
        "left running: {:?}",
        processes_with(&marker)
    );
}

#[test]
fn a_server_that_stops_leaves_no_process_behind() {
    let dir = support::temp_dir("shutdown");
    let marker = format!("pool-orphan-test-shutdown-{}", std::process::id());
    let mut server = ServerProcess::start(&[
        "--workers",
        "1",
        "--allow-commands",
        "--shutdown-grace",
        "1",
    ]);
    let mut client = start_sleeping_job(&dir, &server, &marker);
    server.signal("TERM");
    assert!(
        server.wait_exit(Duration::from_secs(30)).is_some(),
        "the server did not stop"
    );
    assert!(
        eventually(Duration::from_secs(30), || processes_with(&marker)
            .is_empty()),
        "left running: {:?}",
        processes_with(&marker)
    );
    let _ = client.kill();
    let _ = client.wait();
}

#[test]
fn local_servers_remove_their_work_folders_when_the_run_ends() {
    // The command example on servers the client starts (`local = 2`), each writing
    // the job's files into a work folder under TMPDIR: they are stopped gently, so
    // they remove those folders before they exit, as does the client for its own.
    let tmp = support::temp_dir("local-work-folders");
    let output = std::process::Command::new(support::client_exe())
        .arg(support::examples_dir().join("command.toml"))
        .env("TMPDIR", &*tmp)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", support::stderr(&output));
    let left: Vec<_> = std::fs::read_dir(&*tmp)
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}
