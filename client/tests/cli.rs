//! The pool-client binary as a user runs it: every example, bad input, JSON output,
//! local servers, and a protocol version mismatch.

mod support;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};

use bytes::{BufMut, BytesMut};
use pool_common::codec::{encode_frame, read_frame_blocking, Frame};
use pool_common::protocol::{Hello, MAGIC, PROTOCOL_VERSION};
use support::{addresses, examples_dir, run_client, start_servers, stderr, stdout, write_npy};

fn example(name: &str) -> String {
    examples_dir().join(name).display().to_string()
}

/// Runs an example job file as it is, pointed at test servers if it names fixed ones,
/// and returns its table.
async fn run_example(name: &str, servers: Option<&str>) -> String {
    let path = example(name);
    let mut args = vec![path.as_str()];
    if let Some(servers) = servers {
        args.extend(["--servers", servers]);
    }
    let output = tokio::task::spawn_blocking({
        let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        move || run_client(&args.iter().map(String::as_str).collect::<Vec<_>>())
    })
    .await
    .unwrap();
    let table = stdout(&output);
    assert!(
        output.status.success(),
        "{name}: {}\n{table}",
        stderr(&output)
    );
    for mode in ["sequential", "threaded", "multi-process", "pool ("] {
        let line = table
            .lines()
            .find(|l| l.starts_with(mode))
            .unwrap_or_else(|| panic!("{name}: no {mode} row in\n{table}"));
        // A command job's threaded mode would be its multi-process mode again.
        let skipped = mode == "threaded" && name == "command.toml" && line.contains(" not run: ");
        assert!(line.ends_with(" ok") || skipped, "{name}: {line}");
    }
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_example_job_file_runs() {
    let servers = start_servers(3, 1).await;
    let list = addresses(&servers).join(",");
    let mut seen = Vec::new();
    for entry in std::fs::read_dir(examples_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if !name.ends_with(".toml") {
            continue;
        }
        // Job files that name fixed servers (7001-7003) get the test's servers instead;
        // the others start their own (`local = N`).
        let text = std::fs::read_to_string(examples_dir().join(&name)).unwrap();
        let names_servers = text.lines().any(|l| l.starts_with("servers"));
        let table = run_example(&name, names_servers.then_some(list.as_str())).await;
        // The results the examples' comments promise.
        let promised = match name.as_str() {
            "primes.toml" => Some("result: 50847534\n"),
            "mandelbrot.toml" => Some("result: 356241142\nwritten: "),
            "command.toml" => Some("result: 10753712\n"),
            "matmul.toml" => Some("result: 1152261360916922348\n"),
            "paper.toml" => Some("\none part alone: "),
            _ => None,
        };
        if let Some(promised) = promised {
            assert!(table.contains(promised), "{name}: {table}");
        }
        seen.push(name);
    }
    seen.sort();
    assert_eq!(
        seen,
        [
            "command.toml",
            "loop.toml",
            "mandelbrot.toml",
            "matmul.toml",
            "matrix-csv.toml",
            "matrix-float.toml",
            "matrix-spreadsheet.toml",
            "matrix-sum.toml",
            "paper.toml",
            "primes.toml",
            "quickstart.toml",
            "sum-of-squares.toml"
        ]
    );
}

#[test]
fn a_malformed_csv_names_row_and_column_and_exits_2() {
    let dir = support::temp_dir("csv");
    std::fs::write(dir.join("bad.csv"), "1,2,3\n4,five,6\n").unwrap();
    std::fs::write(
        dir.join("job.toml"),
        "local = 1\nparts = 2\n[job]\nkind = \"matrix-sum\"\ncsv = \"bad.csv\"\n",
    )
    .unwrap();
    let output = run_client(&[dir.join("job.toml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("bad.csv: row 2, column 2: \"five\" is not a 64-bit integer"),
        "{}",
        stderr(&output)
    );

    std::fs::remove_file(dir.join("bad.csv")).unwrap();
    let output = run_client(&[dir.join("job.toml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("job.toml: csv: cannot read") && message.contains("bad.csv"),
        "{message}"
    );
}

#[test]
fn an_npy_file_of_another_dtype_is_named_and_exits_2() {
    let dir = support::temp_dir("npy");
    write_npy(&dir.join("m.npy"), "<f4", "(2, 2)", &[0; 16]);
    std::fs::write(
        dir.join("job.toml"),
        "local = 1\nparts = 2\n[job]\nkind = \"matrix-sum\"\nnpy = \"m.npy\"\n",
    )
    .unwrap();
    let output = run_client(&[dir.join("job.toml").to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    let message = stderr(&output);
    assert!(
        message.contains("m.npy: dtype \"<f4\"; pool reads 2-D '<i8' (int64) and '<f8' (float64)"),
        "{message}"
    );
}

#[test]
fn a_float_sum_prints_digits_that_read_back_in_the_table_and_in_json() {
    let job = example("matrix-spreadsheet.toml");
    let table = run_client(&[&job]);
    assert!(table.status.success(), "{}", stderr(&table));
    // Python's math.fsum of the file's numbers; adding them left to right gives
    // 79726.44999999997.
    assert!(
        stdout(&table).ends_with("result: 79726.45\n"),
        "{}",
        stdout(&table)
    );
    let output = run_client(&[&job, "--format", "json", "--modes", "sequential,pool"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(json["result"], "79726.45");
    for mode in json["modes"].as_array().unwrap() {
        assert_eq!(mode["result"], "79726.45");
    }
}

#[test]
fn a_bad_job_file_names_the_line_and_exits_2() {
    let dir = support::temp_dir("job");
    let path = dir.join("job.toml");
    std::fs::write(
        &path,
        "local = 1\nparts = 2\n[job]\nkind = \"loop\"\niterations = -5\n",
    )
    .unwrap();
    let output = run_client(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("job.toml:5:14:"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_bad_picture_is_refused_before_the_run_and_exits_2() {
    let dir = support::temp_dir("mandelbrot");
    let path = dir.join("job.toml");
    let job = |keys: &str| {
        format!("local = 1\nparts = 2\n[job]\nkind = \"mandelbrot\"\nmax_iter = 50\n{keys}\n")
    };
    std::fs::write(&path, job("width = 0\nheight = 10")).unwrap();
    let output = run_client(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("job.toml:6:9: an image dimension must be at least 1"),
        "{}",
        stderr(&output)
    );
    // An output folder that does not exist is found before any server starts.
    std::fs::write(
        &path,
        job("width = 8\nheight = 8\noutput = \"missing/set.png\""),
    )
    .unwrap();
    let output = run_client(&[path.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("job.toml: output: cannot write")
            && stderr(&output).contains("missing/set.png"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn json_holds_the_same_result_as_the_table_and_local_servers_are_gone_after() {
    let job = example("matrix-csv.toml");
    let table = stdout(&run_client(&[&job]));
    let output = run_client(&[&job, "--format", "json", "--local", "3"]);
    assert!(output.status.success(), "{}", stderr(&output));
    let json: serde_json::Value =
        serde_json::from_str(&stdout(&output)).expect("one JSON document");
    let result = json["result"].as_str().unwrap();
    assert!(table.contains(&format!("result: {result}\n")), "{table}");
    let modes = json["modes"].as_array().unwrap();
    // Every mode, shared memory included (a matrix has data to share).
    assert_eq!(modes.len(), 5);
    for mode in modes {
        assert_eq!(mode["result"], result);
        assert!(mode["elapsed_s"].as_f64().unwrap() > 0.0);
        assert_eq!(mode["parts"], 3);
    }
    // The three local servers of the JSON run were stopped: nothing listens there now.
    let servers = json["pool"]["servers"].as_array().unwrap();
    assert_eq!(servers.len(), 3);
    for server in servers {
        let address = server["address"].as_str().unwrap();
        assert!(
            TcpStream::connect(address).is_err(),
            "{address} still accepts connections"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_of_another_protocol_version_is_told_so() {
    let servers = start_servers(1, 1).await;
    let address = servers[0].local_addr();
    let answer = tokio::task::spawn_blocking(move || {
        let mut socket = TcpStream::connect(address).unwrap();
        let mut frame = BytesMut::new();
        encode_frame(
            &Frame::Hello(Hello {
                client: "future".into(),
            }),
            &mut frame,
        )
        .unwrap();
        // Rewrite the version that follows the length, tag and magic.
        frame[9..11].copy_from_slice(&(PROTOCOL_VERSION + 1).to_le_bytes());
        socket.write_all(&frame).unwrap();
        read_frame_blocking(&mut socket).unwrap()
    })
    .await
    .unwrap();
    let Some(Frame::Refused(reason)) = answer else {
        panic!("expected a refusal, got {answer:?}")
    };
    assert!(
        reason.contains(&format!("version {PROTOCOL_VERSION}")),
        "{reason}"
    );
    assert!(
        reason.contains(&format!("version {}", PROTOCOL_VERSION + 1)),
        "{reason}"
    );
}

#[test]
fn a_server_of_another_protocol_version_is_named() {
    // A fake server that answers every handshake with a Welcome of the next version.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for socket in listener.incoming() {
            let Ok(mut socket) = socket else { return };
            let mut hello = [0u8; 64];
            let _ = socket.read(&mut hello);
            let mut body = BytesMut::new();
            body.put_u8(b'W');
            body.put_slice(&MAGIC);
            body.put_u16_le(PROTOCOL_VERSION + 1);
            let mut frame = BytesMut::new();
            frame.put_u32(body.len() as u32);
            frame.put_slice(&body);
            let _ = socket.write_all(&frame);
        }
    });
    let output = run_client(&[
        &example("loop.toml"),
        "--servers",
        &address,
        "--modes",
        "pool",
    ]);
    assert_eq!(output.status.code(), Some(1));
    let message = stderr(&output);
    assert!(message.contains(&address), "{message}");
    assert!(
        message.contains(&format!("protocol version {}", PROTOCOL_VERSION + 1)),
        "{message}"
    );
}

#[test]
fn processes_names_the_multi_process_mode_and_log_needs_the_pool() {
    let dir = support::temp_dir("modes");
    let job = dir.join("job.toml");
    std::fs::write(
        &job,
        "parts = 2\n[job]\nkind = \"loop\"\niterations = 1000\n",
    )
    .unwrap();
    let job = job.to_str().unwrap();
    let output = run_client(&[
        job,
        "--modes",
        "sequential,processes",
        "--format",
        "markdown",
    ]);
    assert!(output.status.success(), "{}", stderr(&output));
    let markdown = stdout(&output);
    assert!(markdown.contains("\n| multi-process | "), "{markdown}");
    assert!(markdown.contains("\n| --- | ---: |"), "{markdown}");

    let log = dir.join("parts.tsv");
    let output = run_client(&[job, "--modes", "sequential", "--log", log.to_str().unwrap()]);
    assert_eq!(output.status.code(), Some(2));
    assert!(
        stderr(&output).contains("--log logs the parts of the pool mode; add pool to --modes"),
        "{}",
        stderr(&output)
    );
    assert!(!log.exists(), "nothing written before the run");
}
