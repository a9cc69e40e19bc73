//! TLS over real sockets: jobs on a server with a pinned self-signed certificate (the
//! token's challenge running inside TLS), a certificate signed by an authority the
//! client trusts, and the clear refusals when the certificate, or the protocol, is not
//! what the other side expects.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use pool_client::connection::{ConnectOptions, ServerConnection, ServerError};
use pool_client::report::Mode;
use pool_client::tls::ClientTls;
use pool_common::jobs::PartResult;
use pool_common::tls::{Fingerprint, TlsTrust};
use pool_server::tls::ServerTls;
use pool_server::{ServerConfig, ServerHandle};
use support::{client_exe, job_file, options, run_client, stdout, temp_dir};

/// A server on 127.0.0.1 with a certificate made for it, and the line that pins it.
async fn tls_server(token: Option<&str>) -> (ServerHandle, String) {
    let tls = ServerTls::self_signed().unwrap();
    let pin = pool_server::cli::pin_line(&tls.fingerprint());
    let config = ServerConfig {
        workers: 2,
        token: token.map(String::from),
        tls: Some(tls),
        ..ServerConfig::default()
    };
    (
        pool_server::start("127.0.0.1:0", config).await.unwrap(),
        pin,
    )
}

/// Options that speak TLS trusting `trust`, with `token`.
fn over_tls(trust: TlsTrust, token: Option<&str>) -> ConnectOptions {
    ConnectOptions {
        token: token.map(String::from),
        tls: Some(ClientTls::new(&trust).unwrap()),
        ..ConnectOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_run_over_tls_with_a_pinned_certificate_and_the_token_inside() {
    let (server, pin) = tls_server(Some("s3cret")).await;
    let address = server.local_addr().to_string();
    let servers = vec![address.clone()];
    let pool_and_sequential = pool_client::RunOptions {
        modes: vec![Mode::Pool, Mode::Sequential],
        ..options(servers)
    };

    let looped = job_file(&format!(
        "parts = 3\ntoken = \"s3cret\"\ntls = true\n{pin}\n[job]\nkind = \"loop\"\niterations = 1048576\n"
    ));
    let report = pool_client::run(&looped, &pool_and_sequential)
        .await
        .unwrap();
    for run in &report.runs {
        // The design's check value for [0, 2^20).
        assert_eq!(run.result, PartResult::Loop(8731987058694679736));
    }
    // 5.6 MB of matrix: parts ship their data in several frames, all through TLS.
    let shipped = job_file(&format!(
        "parts = 2\ntoken = \"s3cret\"\ntls = true\n{pin}\n[job]\nkind = \"matrix-sum\"\nrows = 700\ncols = 1000\nseed = 11\n"
    ));
    let report = pool_client::run(&shipped, &pool_and_sequential)
        .await
        .unwrap();
    assert!(report.all_match(), "{}", report.table());

    let trust = looped.client.tls.clone().unwrap();
    let Err(wrong) = ServerConnection::connect(&address, &over_tls(trust, Some("guess"))).await
    else {
        panic!("a wrong token was accepted over TLS");
    };
    assert!(wrong.to_string().contains("wrong token"), "{wrong}");
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_pin_is_refused_naming_the_server_and_what_to_do() {
    let (server, pin) = tls_server(None).await;
    let address = server.local_addr().to_string();
    let elsewhere = Fingerprint::of(b"another certificate");
    let Err(error) =
        ServerConnection::connect(&address, &over_tls(TlsTrust::Pinned(vec![elsewhere]), None))
            .await
    else {
        panic!("a server with another certificate was trusted");
    };
    assert!(matches!(error, ServerError::Tls { .. }), "{error:?}");
    let message = error.to_string();
    let presented = pin
        .trim_start_matches("tls_fingerprint = ")
        .trim_matches('"');
    for needed in [
        format!("TLS with server {address} failed"),
        format!("fingerprint is {presented}, not the job file's tls_fingerprint {elsewhere}"),
        "copy the tls_fingerprint line it printed at start".to_string(),
    ] {
        assert!(message.contains(&needed), "{needed:?} not in {message}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_and_tls_peers_say_what_to_change() {
    let (tls_server, pin) = tls_server(None).await;
    let address = tls_server.local_addr().to_string();
    let Err(plain_client) = ServerConnection::connect(&address, &ConnectOptions::default()).await
    else {
        panic!("a plain client was served by a TLS server");
    };
    assert!(
        matches!(&plain_client, ServerError::Refused { reason, .. }
            if reason.contains("takes TLS connections only: set tls = true")),
        "{plain_client}"
    );
    tls_server.shutdown().await;

    let plain_server = support::start_servers(1, 1).await.remove(0);
    let address = plain_server.local_addr().to_string();
    let pinned = TlsTrust::Pinned(vec![
        Fingerprint::parse(pin.split('"').nth(1).unwrap()).unwrap()
    ]);
    let Err(tls_client) = ServerConnection::connect(&address, &over_tls(pinned, None)).await else {
        panic!("a TLS client was served by a plain server");
    };
    let message = tls_client.to_string();
    assert!(matches!(tls_client, ServerError::Tls { .. }), "{message}");
    assert!(
        message.contains(&format!("TLS with server {address} failed"))
            && message.contains("is it a pool-server started with --tls?")
            && message.contains("remove tls = true"),
        "{message}"
    );
    plain_server.shutdown().await;
}

/// An authority, and a certificate it signed for 127.0.0.1, written as PEM files
/// `ca.pem`, `cert.pem` and `key.pem` in `dir`.
fn write_authority_and_server_files(dir: &std::path::Path) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "pool test authority");
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    std::fs::write(dir.join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

#[test]
fn status_reaches_tls_servers_from_the_command_line_and_the_job_file() {
    let dir = temp_dir("tls-status");
    write_authority_and_server_files(&dir);
    let path = |name: &str| dir.join(name).display().to_string();

    // A certificate from files, trusted through the authority that signed it.
    let (_signed, signed_address) = pool_client::servers::spawn_server(
        &client_exe(),
        &[
            "--tls-cert",
            &path("cert.pem"),
            "--tls-key",
            &path("key.pem"),
        ],
    )
    .unwrap();
    let status = |args: &[&str]| {
        let output = run_client(&[&["status", "--format", "json"], args].concat());
        (
            output.status.code(),
            stdout(&output),
            support::stderr(&output),
        )
    };
    let (code, out, err) = status(&["--servers", &signed_address, "--tls-ca", &path("ca.pem")]);
    assert_eq!(code, Some(0), "{out}{err}");

    // A certificate made at start-up, pinned with the line the server printed.
    let mut pinned = Command::new(client_exe())
        .args([
            "serve",
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--exit-with-stdin",
        ])
        .args(["--tls", "self-signed"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(pinned.stdout.take().unwrap()).lines();
    let listening = lines.next().unwrap().unwrap();
    let pin = lines.next().unwrap().unwrap();
    let pinned_address = pool_server::cli::parse_listening_line(&listening)
        .unwrap()
        .to_string();
    assert!(pin.starts_with("tls_fingerprint = \""), "{pin}");
    std::fs::write(
        dir.join("job.toml"),
        format!(
            "parts = 1\nservers = [\"{pinned_address}\"]\ntls = true\n{pin}\n[job]\nkind = \"loop\"\niterations = 10\n"
        ),
    )
    .unwrap();
    let (code, out, err) = status(&[&path("job.toml")]);
    assert_eq!(code, Some(0), "{out}{err}");

    // The pinned server's certificate is signed by no authority the client trusts.
    let (code, out, _) = status(&["--servers", &pinned_address, "--tls-ca", &path("ca.pem")]);
    assert_eq!(code, Some(1), "{out}");
    assert!(
        out.contains("its certificate is not signed by the trusted authority (tls_ca)"),
        "{out}"
    );
    drop(pinned.stdin.take());
    pinned.wait().unwrap();

    // Bad files are named.
    let output = run_client(&[
        "serve",
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--tls-cert",
        &path("missing.pem"),
        "--tls-key",
        &path("key.pem"),
    ]);
    let err = support::stderr(&output);
    assert!(!output.status.success());
    assert!(
        err.contains("--tls-cert: cannot read") && err.contains("missing.pem"),
        "{err}"
    );
}
